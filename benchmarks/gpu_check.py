#!/usr/bin/env python
"""Check (and on a GPU, time) every CUDA entry point of mxnag's fused kernels, with only
numpy (1.x or 2.x) and, on a GPU, CuPy: no MXNet.

    python benchmarks/gpu_check.py [--emulate] [--json out.json] [--steps 12] [--no-timings]

Every entry point (each step rule the optimizers run x float32 / float64 / float16 with
float32 master weights, and float32 / float16 with 8-bit states, x 1, 2, 4 and 8 tensors
per launch) runs several steps for every
mxnag optimizer (adanag, adan, nadamw: their own coefficient sequences, computed by their
own code) against the float64 references of tests/reference.py: odd sizes, more elements
than a launch has threads (grid-stride loops), a learning rate and a step count of its
own for each tensor of a launch (tensors join the group step by step), the step flag
(a skipped step changes nothing, the step count included) and NaN/Inf propagation; the
8-bit entry points every step against the float64 reference of the quantised algorithm
(codes equal except ties).

On a GPU the kernels run through CuPy (the source and argument lists mx.rtc gets), and
each kernel is timed on 10M and 100M float32 elements and on ResNet-50's parameter shapes
against a device-to-device copy of the same bytes and a streaming kernel that reads 4 and
writes 3 arrays (an update's traffic, the floor). ``--emulate`` runs the same checks with
no GPU: the source compiled by the C++ compiler through tests/cuda_host_emulation.cc
(a launch's threads one after another; an 8-bit kernel's, a block at a time at a barrier). Exit 0 only when every case passes; with neither
a GPU nor ``--emulate``, one line saying so and exit 2.

The kernel source and its launch table (mxnag/kernels/cuda.py) and the optimizers'
coefficients (mxnag/optim/*.py) are loaded from the source tree without importing the
mxnag package; where MXNet is not installed, the optimizers are given a minimal stand-in
for ``mxnet.optimizer.Optimizer`` (the base class, its registry and its arguments): their
maths needs no more.
"""
import argparse
import ctypes
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ('float32', 'float64', 'float16')
STEPS = 12
LR = 0.01
WD = 0.01
SIZES = [1, 1037, 7, 300 * 250 + 1, 33, 2, 511, 4097]  # tensor k of a launch: odd sizes
MAX_BLOCKS = 3  # few blocks: most elements reached by the grid-stride loop
# 8-bit cases: tensors of at most this many elements (still 17 blocks of codes for 3
# thread blocks; the emulation runs their threads as threads, which is slow)
CODED_SIZE_LIMIT = 4097


# -- loading mxnag's kernel code and optimizers without MXNet ----------------------------

def _mxnet_stand_in():
    """Modules ``mxnet``, ``mxnet.optimizer`` (a base ``Optimizer`` with MXNet 1.9.1's
    arguments and registry) and ``mxnet.ndarray`` (empty): what mxnag's optimizer modules
    import at their top."""
    mxnet = types.ModuleType('mxnet')
    optimizer = types.ModuleType('mxnet.optimizer')
    ndarray = types.ModuleType('mxnet.ndarray')
    ndarray.NDArray = type('NDArray', (), {})

    class Optimizer:  # the arguments of MXNet 1.9.1's Optimizer.__init__
        opt_registry = {}

        def __init__(self, rescale_grad=1., param_idx2name=None, wd=0., clip_gradient=None,
                     learning_rate=None, lr_scheduler=None, sym=None, begin_num_update=0,
                     multi_precision=False, param_dict=None):
            self.rescale_grad, self.wd, self.clip_gradient = rescale_grad, wd, clip_gradient
            self.lr, self.lr_scheduler = learning_rate, lr_scheduler
            self.begin_num_update, self.num_update = begin_num_update, begin_num_update
            self.multi_precision = multi_precision

        @staticmethod
        def register(klass):
            Optimizer.opt_registry[klass.__name__.lower()] = klass
            return klass

    optimizer.Optimizer = Optimizer
    mxnet.optimizer, mxnet.ndarray = optimizer, ndarray
    return {'mxnet': mxnet, 'mxnet.optimizer': optimizer, 'mxnet.ndarray': ndarray}


def load_mxnag(root=ROOT):
    """``(cuda, optimizers, reference)``: mxnag/kernels/cuda.py, ``{name: class}`` of the
    optimizers of mxnag/optim/, and tests/reference.py, loaded from ``root`` under a
    package name of their own (``mxnag/__init__.py``, which needs MXNet, is not run)."""
    try:
        import mxnet  # noqa: F401  (the real one, where it imports)
    except Exception:  # noqa: BLE001  (absent, or unusable with this numpy)
        for name in [m for m in sys.modules if m == 'mxnet' or m.startswith('mxnet.')]:
            del sys.modules[name]
        sys.modules.update(_mxnet_stand_in())
    package = types.ModuleType('_mxnag_gpu_check_%08x' % (hash(os.path.abspath(root)) & 0xffffffff))
    package.__path__ = [os.path.join(root, 'mxnag')]
    sys.modules[package.__name__] = package
    cuda = importlib.import_module(package.__name__ + '.kernels.cuda')
    # the copies of the optimizer classes register themselves with MXNet's registry (the
    # real one where MXNet imports): put back what was there, so that in a process that
    # also uses mxnag, mx.optimizer.create('adanag') still makes mxnag's own
    registry = sys.modules['mxnet.optimizer'].Optimizer.opt_registry
    saved = dict(registry)
    try:
        optim = importlib.import_module(package.__name__ + '.optim')
    finally:
        registry.clear()
        registry.update(saved)
    spec = importlib.util.spec_from_file_location('_mxnag_reference',
                                                  os.path.join(root, 'tests', 'reference.py'))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    return cuda, optim.optimizers(), reference


# -- where the kernels run ------------------------------------------------------------------

class Emulated:
    """The CUDA source compiled by the C++ compiler through tests/cuda_host_emulation.cc;
    arrays are numpy arrays, launches run on the CPU."""
    name = 'emulate'

    def __init__(self, cuda, rules, workdir, root=ROOT):
        compiler = shutil.which(os.environ.get('CXX') or 'c++') or shutil.which('g++')
        if compiler is None:
            raise RuntimeError('--emulate needs a C++ compiler (c++ or g++, or $CXX)')
        with open(os.path.join(workdir, 'fused_cuda_all.cu'), 'w') as f:
            f.write(cuda.source(*rules))
        with open(os.path.join(workdir, 'kernels.inc'), 'w') as f:
            f.write(''.join('MXNAG_KERNEL(%s)\n' % n for n in cuda.kernel_names(*rules)))
        library = os.path.join(workdir, 'emulated.so')
        subprocess.run([compiler, '-std=c++20', '-O2', '-shared', '-fPIC', '-pthread', '-I', workdir,
                        '-I', os.path.join(root, 'mxnag', 'kernels', 'src'),
                        os.path.join(root, 'tests', 'cuda_host_emulation.cc'), '-o', library],
                       check=True)
        self.lib = ctypes.CDLL(library)
        self.lib.mxnag_emulate_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                                  ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
        self.device = 'CPU emulation (%s)' % os.path.basename(compiler)

    def array(self, values):
        return np.array(values, copy=True, order='C')  # device memory of its own

    def numpy(self, array):
        return np.array(array)

    _C_TYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double,  # scalars
                np.int32: ctypes.c_int, np.int64: ctypes.c_int64}

    def launch(self, name, grid, block, args):
        values = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                values.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                values.append(self._C_TYPES[type(arg)](arg))
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        if self.lib.mxnag_emulate_launch(name.encode(), grid[0], grid[1], block[0], params) != 0:
            raise RuntimeError('no entry point %s' % name)


class Cupy:
    """The CUDA source through CuPy on GPU 0 (the source and argument lists mx.rtc gets)."""
    name = 'cupy'

    def __init__(self, cuda, rules):
        import cupy
        self.cupy = cupy
        self.module = cupy.RawModule(code=cuda.source(*rules))
        props = cupy.cuda.runtime.getDeviceProperties(0)
        self.device = '%s (compute %d.%d)' % (props['name'].decode(), props['major'], props['minor'])

    def array(self, values):
        return self.cupy.asarray(values)

    def numpy(self, array):
        return self.cupy.asnumpy(array)

    def launch(self, name, grid, block, args):
        self.module.get_function(name)(grid, block, tuple(args))


# -- the checks ---------------------------------------------------------------------------

def run_case(backend, cuda, cls, reference, dtype, count, rng, steps=STEPS):
    """``count`` tensors updated ``steps`` times by ``cls``'s rule in launches of up to
    ``count`` (tensor k joins at step k, with learning rate ``LR * (1 + k / 10)``), on
    ``dtype`` weights; returns the largest relative error of a displacement against the
    float64 reference and whether the skipped step and NaN/Inf checks held."""
    opt = cls(learning_rate=LR, wd=WD, clip_gradient=2.0)
    rule = cls.rule
    state_dtype = np.float32 if dtype == 'float16' else np.dtype(dtype).type
    table = np.array([opt._step_factors(t) for t in range(1, steps + 1)], np.float64)
    device_table = backend.array(table)
    shared = opt._shared_coefficients()
    tensors = []
    for k in range(count):
        size = SIZES[k]
        w0 = rng.standard_normal(size).astype(np.float32)
        drift = rng.standard_normal(size)
        grads = [(drift + rng.standard_normal(size)).astype(np.float32) for _ in range(steps)]
        if dtype == 'float16':
            w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
        lr = LR * (1 + k / 10)
        tensors.append({
            'w0': w0, 'grads': grads, 'lr': lr, 'join': k, 'attempted': 0, 'applied': 0,
            'weight': backend.array(w0.astype(state_dtype)),
            'states': [backend.array(np.zeros(size, state_dtype)) for _ in rule.states],
            'weight16': backend.array(w0) if dtype == 'float16' else None,
            'step': backend.array(np.zeros(2, np.float64)),
            'scalars': opt._scalars(lr, WD)})
    flag_on, flag_off = backend.array(np.ones(1, np.float32)), backend.array(np.zeros(1, np.float32))
    skip_step = steps // 2  # every tensor that has joined attempts this step with flag 0
    held = True
    for step in range(steps):
        live = [t for t in tensors if t['join'] <= step]
        flag = flag_off if step == skip_step else flag_on
        before = [backend.numpy(t['weight']).copy() for t in live] if flag is flag_off else None
        start = 0
        for n in cuda.split(len(live)):
            chunk, start = live[start:start + n], start + n
            args = cuda.kernel_arguments(
                rule, [(backend.array(t['grads'][t['applied']].astype(dtype)), t['weight'],
                        t['states'], t['weight16'], t['w0'].size, t['scalars'], t['step'],
                        t['attempted'] % 2) for t in chunk],
                shared, flag, device_table, len(table))
            grid, block = cuda.launch_shape([t['w0'].size for t in chunk])
            grid = (min(grid[0], MAX_BLOCKS), grid[1], 1)
            backend.launch(cuda.kernel_name(rule, dtype, n), grid, block, args)
        for t in live:
            t['attempted'] += 1
            t['applied'] += flag is flag_on
        if before is not None:  # the skipped step left the weights as they were
            held &= all(np.array_equal(b, backend.numpy(t['weight'])) for b, t in zip(before, live))
    worst = 0.0
    for t in tensors:
        grads = t['grads'][:t['applied']]
        ref = reference_for(reference, cls, t['w0'], grads, t['lr'])
        w0 = t['w0'].astype(np.float64)
        got = backend.numpy(t['weight']).astype(np.float64)
        error = np.linalg.norm((got - w0) - (ref - w0)) / max(np.linalg.norm(ref - w0), 1e-30)
        worst = max(worst, float(error))
        # the device's step count: the applied steps, in the slot the next attempt reads
        held &= bool(backend.numpy(t['step'])[t['attempted'] % 2] == t['applied'])
        if t['weight16'] is not None:
            held &= np.array_equal(backend.numpy(t['weight16']),
                                   backend.numpy(t['weight']).astype(np.float16))
    return worst, bool(held)


def run_coded_case(backend, cuda, cls, reference, dtype, count, rng, steps=STEPS):
    """The 8-bit entry point of ``dtype`` (float32, or float16 with float32 master weights)
    for ``count`` tensors, ``steps`` steps as in ``run_case``, each step checked against the
    float64 reference of the quantised algorithm (tests/reference.py: the device's codes
    decoded, the published step, the nearest codes): the weight to float32 rounding, the
    scales, and the codes equal except ties (``reference.codes_agree``: a value within
    float32 rounding of a midpoint may take either code).
    Returns the largest relative error of a step's displacement (over the tensors of
    the step) and whether the codes,
    scales, skipped step and step counts held."""
    opt = cls(learning_rate=LR, wd=WD, clip_gradient=2.0)
    rule = cls.rule
    non_negative = [state in rule.non_negative for state in rule.states]
    table = np.array([opt._step_factors(t) for t in range(1, steps + 1)], np.float64)
    device_table = backend.array(table)
    tensors = []
    for k in range(count):
        size = min(SIZES[k], CODED_SIZE_LIMIT)
        blocks = -(-size // reference.CODE_BLOCK)
        w0 = rng.standard_normal(size).astype(np.float32)
        drift = rng.standard_normal(size)
        grads = [(drift + rng.standard_normal(size)).astype(np.float32) for _ in range(steps)]
        if dtype == 'float16':
            w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
        states = []
        for _ in rule.states:
            states += [backend.array(np.zeros(size, np.uint8)), backend.array(np.zeros(blocks, np.float32))]
        lr = LR * (1 + k / 10)
        tensors.append({'w0': w0, 'grads': grads, 'lr': lr, 'join': k, 'attempted': 0, 'applied': 0,
                        'weight': backend.array(w0.astype(np.float32)), 'states': states,
                        'weight16': backend.array(w0) if dtype == 'float16' else None,
                        'step': backend.array(np.zeros(2, np.float64)), 'scalars': opt._scalars(lr, WD)})
    flag_on, flag_off = backend.array(np.ones(1, np.float32)), backend.array(np.zeros(1, np.float32))
    skip_step = steps // 2
    held, worst = True, 0.0
    for step in range(steps):
        error, moved = 0.0, 0.0  # this step's, over every tensor of the launches
        live = [t for t in tensors if t['join'] <= step]
        flag = flag_off if step == skip_step else flag_on
        before = {id(t): [backend.numpy(a).copy() for a in [t['weight']] + t['states']] for t in live}
        start = 0
        for n in cuda.split(len(live)):
            chunk, start = live[start:start + n], start + n
            args = cuda.kernel_arguments(
                rule, [(backend.array(t['grads'][t['applied']].astype(dtype)), t['weight'],
                        t['states'], t['weight16'], t['w0'].size, t['scalars'], t['step'],
                        t['attempted'] % 2) for t in chunk],
                opt._shared_coefficients(), flag, device_table, len(table))
            grid, block = cuda.launch_shape([t['w0'].size for t in chunk])
            grid = (min(grid[0], MAX_BLOCKS), grid[1], 1)
            backend.launch(cuda.kernel_name(rule, dtype, n, coded=True), grid, block, args)
        for t in live:
            old = before[id(t)]
            now = [backend.numpy(a) for a in [t['weight']] + t['states']]
            t['attempted'] += 1
            if flag is flag_off:  # nothing moved: weight, codes, scales
                held &= all(np.array_equal(a, b) for a, b in zip(old, now))
                continue
            decoded = {name: reference.decode_state(old[1 + 2 * j], old[2 + 2 * j], non_negative[j])
                       for j, name in enumerate(rule.states)}
            w_before = old[0].astype(np.float64)
            w_ref, states_ref = getattr(reference, cls.__name__.lower())(
                w_before, [t['grads'][t['applied']].astype(np.float32)], [t['lr']], wd=WD, clip=2.0,
                start=dict(decoded, t=t['applied']), return_states=True)
            t['applied'] += 1
            moved += float(np.sum((w_ref - w_before) ** 2))
            error += float(np.sum((now[0].astype(np.float64) - w_ref) ** 2))
            for j, name in enumerate(rule.states):
                codes_ref, scales_ref = reference.encode_state(states_ref[name], non_negative[j])
                codes, scales = now[1 + 2 * j], now[2 + 2 * j]
                # (atol: a block of float32 rounding noise, see reference.codes_agree)
                held &= bool(np.allclose(scales, scales_ref, rtol=1e-4, atol=1e-7))
                held &= bool(reference.codes_agree(codes, states_ref[name], non_negative[j]).all())
        if moved > 0:
            worst = max(worst, (error / moved) ** 0.5)
    for t in tensors:
        held &= bool(backend.numpy(t['step'])[t['attempted'] % 2] == t['applied'])
        if t['weight16'] is not None:
            held &= np.array_equal(backend.numpy(t['weight16']),
                                   backend.numpy(t['weight']).astype(np.float16))
    return worst, bool(held)


def reference_for(reference, cls, w0, grads, lr):
    name = cls.__name__.lower()
    return getattr(reference, name)(w0, grads, [lr] * len(grads), wd=WD, clip=2.0)


def nan_case(backend, cuda, cls, dtype):
    """A NaN and an Inf in one gradient: the weight is NaN (not a silently finite value)
    where the gradient is NaN, not finite where it is Inf (unclipped), finite elsewhere."""
    opt = cls(learning_rate=LR)
    rule = cls.rule
    state_dtype = np.float32 if dtype == 'float16' else np.dtype(dtype).type
    size = 1001
    grad = np.full(size, 0.5, np.float32)
    grad[3], grad[700] = np.nan, np.inf
    weight = backend.array(np.ones(size, state_dtype))
    states = [backend.array(np.zeros(size, state_dtype)) for _ in rule.states]
    weight16 = backend.array(np.ones(size, np.float16)) if dtype == 'float16' else None
    table = backend.array(np.array([opt._step_factors(1)], np.float64))
    args = cuda.kernel_arguments(rule, [(backend.array(grad.astype(dtype)), weight, states, weight16,
                                         size, opt._scalars(LR, 0.0),
                                         backend.array(np.zeros(2, np.float64)), 0)],
                                 opt._shared_coefficients(), backend.array(np.ones(1, np.float32)),
                                 table, 1)
    grid, block = cuda.launch_shape([size])
    backend.launch(cuda.kernel_name(rule, dtype, 1), grid, block, args)
    result = backend.numpy(weight)
    finite = np.ones(size, bool)
    finite[[3, 700]] = False
    return bool(np.isnan(result[3]) and not np.isfinite(result[700]) and np.isfinite(result[finite]).all())


def check(backend, cuda, optimizers, reference, steps=STEPS, seed=0):
    """Every case: ``[{'kernel', 'optimizer', 'dtype', 'tensors', 'max_rel_error', 'ok'}]``."""
    rng = np.random.default_rng(seed)
    cases = []
    for name, cls in sorted(optimizers.items()):
        if not cuda.supports(cls.rule):  # a rule without a body in src/rules.h runs composed
            continue
        for dtype in DTYPES:
            bound = 1e-9 if dtype == 'float64' else 2e-3
            for count in cuda.COUNTS[::-1]:
                error, held = run_case(backend, cuda, cls, reference, dtype, count, rng, steps)
                cases.append({'kernel': cuda.kernel_name(cls.rule, dtype, count), 'optimizer': name,
                              'dtype': dtype, 'tensors': count, 'max_rel_error': error,
                              'ok': bool(error < bound and held)})
            cases.append({'kernel': cuda.kernel_name(cls.rule, dtype, 1), 'optimizer': name,
                          'dtype': dtype, 'tensors': 1, 'check': 'NaN/Inf propagate',
                          'max_rel_error': None, 'ok': nan_case(backend, cuda, cls, dtype)})
        for dtype, coded in cuda.KINDS:
            if not coded:
                continue
            for count in cuda.COUNTS[::-1]:
                error, held = run_coded_case(backend, cuda, cls, reference, dtype, count, rng, steps)
                cases.append({'kernel': cuda.kernel_name(cls.rule, dtype, count, coded=True),
                              'optimizer': name, 'dtype': dtype, 'tensors': count,
                              'check': '8-bit states, each step against the quantised reference',
                              'max_rel_error': error, 'ok': bool(error < 1e-3 and held)})
    return cases


# -- timings (GPU) ------------------------------------------------------------------------

STREAM_KERNEL = r'''
extern "C" __global__ void mxnag_stream4x3(const float* __restrict__ g, float* __restrict__ a,
                                           float* __restrict__ b, float* __restrict__ c,
                                           long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    const float x = g[i];
    a[i] += x;
    b[i] += x;
    c[i] += x;
  }
}
'''


def timings(backend, cuda, optimizers, repeats=20):
    """Milliseconds per step of each rule's float32 kernel on 10M, 100M and ResNet-50's
    shapes, against a device copy of the same bytes and the read-4/write-3 floor."""
    cupy = backend.cupy
    stream = cupy.RawModule(code=STREAM_KERNEL).get_function('mxnag_stream4x3')

    def timed(launch):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        launch()
        start.record()
        for _ in range(repeats):
            launch()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / repeats

    rules = {cls.rule.name: cls for cls in optimizers.values()}
    rows = []
    for label, sizes in timing_shapes():
        total = sum(sizes)
        g = cupy.random.standard_normal(total, dtype=cupy.float32)
        a, b, c = (cupy.zeros(total, cupy.float32) for _ in range(3))
        grid, block = cuda.launch_shape([total])
        floor = timed(lambda: stream(grid, block, (g, a, b, c, np.int64(total))))
        copy = timed(lambda: a.__setitem__(Ellipsis, g))
        row = {'shape': label, 'elements': total, 'floor_ms': floor, 'copy_ms': copy,
               'floor_GBps': 7 * 4 * total / floor / 1e6}
        for rule_name, cls in sorted(rules.items()):
            opt = cls(learning_rate=1e-3)
            rule = cls.rule
            table = cupy.asarray(np.array([opt._step_factors(t) for t in range(1, 3)], np.float64))
            flag = cupy.ones(1, cupy.float32)
            offsets = np.cumsum([0] + sizes)
            states = [cupy.zeros(total, cupy.float32) for _ in rule.states]
            weight = cupy.zeros(total, cupy.float32)
            tensors = [(g[o:o + n], weight[o:o + n], [s[o:o + n] for s in states], None, n,
                        opt._scalars(1e-3, 0.0), cupy.zeros(2, cupy.float64), 0)
                       for o, n in zip(offsets[:-1], sizes)]
            launches = []
            start = 0
            for n in cuda.split(len(tensors)):
                chunk, start = tensors[start:start + n], start + n
                args = tuple(cuda.kernel_arguments(rule, chunk, opt._shared_coefficients(), flag,
                                                   table, 2))
                launches.append((backend.module.get_function(cuda.kernel_name(rule, 'float32', n)),
                                 cuda.launch_shape([t[4] for t in chunk]), args))

            def step():
                for kernel, (grid_, block_), args in launches:
                    kernel(grid_, block_, args)
            ms = timed(step)
            moved = (2 + len(rule.states) + 1 + len(rule.states)) * 4 * total
            row[rule_name] = {'ms': ms, 'GBps': moved / ms / 1e6,
                              'x_floor_bandwidth': (moved / ms) / (7 * 4 * total / floor)}
            coded_ms, coded_moved = _coded_timing(backend, cuda, rule, opt, g, weight, sizes,
                                                  offsets, flag, table, timed)
            row[rule_name + ' 8-bit'] = {'ms': coded_ms, 'GBps': coded_moved / coded_ms / 1e6,
                                         'x_32bit_time': coded_ms / ms}
        rows.append(row)
    return rows


def _coded_timing(backend, cuda, rule, opt, g, weight, sizes, offsets, flag, table, timed):
    """(ms, bytes moved) of one step of ``rule``'s 8-bit float32 entry points over tensors
    of ``sizes`` (codes and scales arrays of their own per tensor)."""
    cupy = backend.cupy
    tensors = []
    moved = 0
    for o, n in zip(offsets[:-1], sizes):
        blocks = -(-n // 256)
        states = []
        for _ in rule.states:
            states += [cupy.zeros(n, cupy.uint8), cupy.zeros(blocks, cupy.float32)]
        tensors.append((g[o:o + n], weight[o:o + n], states, None, n, opt._scalars(1e-3, 0.0),
                        cupy.zeros(2, cupy.float64), 0))
        moved += (3 * 4 + 2 * len(rule.states)) * n + 2 * len(rule.states) * 4 * blocks
    launches = []
    start = 0
    for n in cuda.split(len(tensors)):
        chunk, start = tensors[start:start + n], start + n
        args = tuple(cuda.kernel_arguments(rule, chunk, opt._shared_coefficients(), flag, table, 2))
        launches.append((backend.module.get_function(cuda.kernel_name(rule, 'float32', n, coded=True)),
                         cuda.launch_shape([t[4] for t in chunk]), args))

    def step():
        for kernel, (grid_, block_), args in launches:
            kernel(grid_, block_, args)
    return timed(step), moved


# ResNet-50 v1's 161 parameter sizes (GluonCV/Gluon model zoo, classes=1000), by layer.
def _resnet50_sizes():
    sizes = [64 * 3 * 7 * 7, 64, 64]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            sizes += [planes * inplanes, planes, planes, planes * planes * 9, planes, planes,
                      planes * 4 * planes, planes * 4, planes * 4]
            if b == 0:
                sizes += [planes * 4 * inplanes, planes * 4, planes * 4]
            inplanes = planes * 4
    return sizes + [1000 * 2048, 1000]


RESNET50_SIZES = _resnet50_sizes()


def timing_shapes():
    """What the kernels are timed on: ``[(label, tensor sizes)]``."""
    return [('10M', [10 ** 7]), ('100M', [10 ** 8]), ('ResNet-50', RESNET50_SIZES)]


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python benchmarks/gpu_check.py',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--emulate', action='store_true',
                        help='run the checks on the CPU through the C++ emulation (no GPU needed)')
    parser.add_argument('--json', help='write the cases (and timings) here')
    parser.add_argument('--steps', type=int, default=STEPS)
    parser.add_argument('--no-timings', action='store_true')
    parser.add_argument('--root', default=ROOT, help='the mxnag source tree to check (default: this one)')
    args = parser.parse_args(argv)
    cuda, optimizers, reference = load_mxnag(args.root)
    rules = list({cls.rule.name: cls.rule for cls in optimizers.values()}.values())
    workdir = tempfile.mkdtemp(prefix='mxnag-gpu-check-')
    try:
        if args.emulate:
            backend = Emulated(cuda, rules, workdir, args.root)
        else:
            try:
                import cupy
                if cupy.cuda.runtime.getDeviceCount() < 1:
                    raise RuntimeError('no CUDA device')
            except Exception as err:  # noqa: BLE001  (no CuPy, no driver, no device)
                print('gpu_check: no GPU here (%s: %s); --emulate runs the checks on the CPU'
                      % (type(err).__name__, err))
                return 2
            backend = Cupy(cuda, rules)
        started = time.time()
        cases = check(backend, cuda, optimizers, reference, args.steps)
        result = {'backend': backend.name, 'device': backend.device, 'cases': cases,
                  'timings': [], 'seconds': time.time() - started}
        if backend.name == 'cupy' and not args.no_timings:
            result['timings'] = timings(backend, cuda, optimizers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [c for c in cases if not c['ok']]
    print('%s on %s: %d cases, %d failed' % (backend.name, backend.device, len(cases), len(failed)))
    print('| kernel | optimizer | dtype | tensors | check | max rel error | ok |')
    print('|---|---|---|---:|---|---:|---|')
    for c in cases:
        error = '-' if c['max_rel_error'] is None else '%.2e' % c['max_rel_error']
        print('| %s | %s | %s | %d | %s | %s | %s |' % (c['kernel'], c['optimizer'], c['dtype'],
                                                       c['tensors'], c.get('check', 'vs reference'),
                                                       error, 'yes' if c['ok'] else 'NO'))
    if result['timings']:
        print('\n| shape | elements | floor (read 4, write 3) ms | copy ms | rule | ms | GB/s | x floor bandwidth | x 32-bit time |')
        print('|---|---:|---:|---:|---|---:|---:|---:|---:|')
        for row in result['timings']:
            for rule in sorted(k for k in row if isinstance(row[k], dict)):
                r = row[rule]
                print('| %s | %d | %.3f | %.3f | %s | %.3f | %.0f | %s | %s |' % (
                    row['shape'], row['elements'], row['floor_ms'], row['copy_ms'], rule, r['ms'],
                    r['GBps'], '%.2f' % r['x_floor_bandwidth'] if 'x_floor_bandwidth' in r else '-',
                    '%.2f' % r['x_32bit_time'] if 'x_32bit_time' in r else '-'))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 0 if not failed else 1


if __name__ == '__main__':
    sys.exit(main())
