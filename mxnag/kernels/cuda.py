"""The fused GPU update: the kernels of src/fused_cuda.cu compiled at run time by NVRTC
through ``mx.rtc.CudaModule`` (present in the mxnet-cu112 build) and launched on the
weight's context, on MXNet's stream for it, ordered by MXNet's engine (``const`` pointers
are read dependencies, the others write dependencies).

src/fused_cuda.cu holds the maths (one device function per algorithm); the ``__global__``
entry points are written here (``source``), from the same table as the signatures and
argument lists ``mx.rtc`` gets, so the three cannot disagree. An entry point updates up
to ``COUNTS[0]`` tensors in one launch (``blockIdx.y`` picks the tensor): ``mx.rtc``
passes NDArrays and numbers, not arrays of pointers, so each tensor's arrays,
coefficients and size are parameters of their own. MXNet 1.9.1's ``mx.rtc`` synchronises
its stream after every launch (src/common/rtc.cc), on the engine's GPU worker, not on the
caller's thread: a group of parameters pays that once per launch of up to 8 tensors,
not once per tensor.

``kernel_name``/``kernel_signature``/``kernel_arguments``/``source`` are plain Python (no
MXNet), so the tests run the same source with the same argument lists through CuPy, and
on the CPU through tests/cuda_host_emulation.cc.
"""
import os

import numpy

from ._once import Once
from .fused_cpu import ALGORITHMS

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'src', 'fused_cuda.cu')
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 8192  # grid-stride loops: enough blocks to fill any current GPU
COUNTS = (8, 4, 2, 1)  # tensors per launch that entry points exist for, largest first

_DTYPE_SUFFIX = {'float32': 'f32', 'float64': 'f64', 'float16': 'f16mp'}
_SCALAR_TYPE = {'float32': 'float', 'float64': 'double', 'float16': 'float'}
_C_TYPE = {'__half': 'mxnag_half_bits', 'int64_t': 'long long'}  # mx.rtc's names -> the source's
_STATES = {'adanag': ('mean', 'var'), 'adan': ('mean', 'diff_mean', 'sq_mean', 'prev_grad')}
_SHARED = {name: spec[2] for name, spec in ALGORITHMS.items()}  # scalars of the whole launch
_PER_TENSOR = {name: spec[3] for name, spec in ALGORITHMS.items()}  # scalars of each tensor
_INT_SCALARS = ('first_step',)


def source() -> str:
    """The CUDA source of every kernel: src/fused_cuda.cu and the entry points."""
    with open(SOURCE_PATH) as f:
        text = f.read()
    entries = [_entry_point(algorithm, dtype, count) for algorithm in sorted(ALGORITHMS)
               for dtype in sorted(_DTYPE_SUFFIX) for count in COUNTS]
    return text + '\n// Entry points, written by mxnag/kernels/cuda.py.\n' + '\n'.join(entries)


def kernel_names():
    """The name of every entry point of ``source()``."""
    return [kernel_name(a, d, c) for a in sorted(ALGORITHMS) for d in sorted(_DTYPE_SUFFIX)
            for c in COUNTS]


def kernel_name(algorithm: str, dtype: str, count: int = 1) -> str:
    """``mxnag_<algorithm>_<f32|f64|f16mp>``, with ``_x<count>`` for ``count`` tensors per
    launch; float16 means float16 weights with float32 master weights and states."""
    name = 'mxnag_%s_%s' % (algorithm, _DTYPE_SUFFIX[dtype])
    return name if count == 1 else '%s_x%d' % (name, count)


def _suffix(k, count):
    """What tensor ``k``'s parameter names end with in an entry point for ``count``."""
    return '_%d' % k if count > 1 else ''


def _parameters(algorithm, dtype, count):
    """[(mx.rtc type with '*' for arrays and 'const ' for inputs, name)] of an entry point:
    each tensor's arrays, the shared scalars, each tensor's scalars, each tensor's size."""
    scalar = _SCALAR_TYPE[dtype]
    params = []
    for k in range(count):
        suffix = _suffix(k, count)
        params.append(('const %s *' % ('__half' if dtype == 'float16' else scalar), 'grad' + suffix))
        params.append(('%s *' % scalar, 'weight' + suffix))
        params += [('%s *' % scalar, state + suffix) for state in _STATES[algorithm]]
        if dtype == 'float16':
            params.append(('__half *', 'weight16' + suffix))
    params += [(scalar, name) for name in _SHARED[algorithm]]
    for k in range(count):
        params += [('int' if name in _INT_SCALARS else scalar, name + _suffix(k, count))
                   for name in _PER_TENSOR[algorithm]]
    params += [('int64_t', 'n' + _suffix(k, count)) for k in range(count)]
    return params


def kernel_signature(algorithm: str, dtype: str, count: int = 1) -> str:
    """The signature ``mx.rtc`` needs (``const`` pointers are inputs, ``__half`` float16)."""
    return ', '.join('%s%s' % (kind if kind.endswith('*') else kind + ' ', name)
                     for kind, name in _parameters(algorithm, dtype, count))


def _entry_point(algorithm, dtype, count):
    """The ``extern "C" __global__`` function of ``kernel_name(algorithm, dtype, count)``:
    ``blockIdx.y`` picks the tensor, whose update is the device function of the source."""
    params = _parameters(algorithm, dtype, count)
    declared = []
    for kind, name in params:
        const = kind.startswith('const ')
        words = kind.replace('const ', '').replace('*', '').split()
        c_type = _C_TYPE.get(words[0], words[0])
        declared.append('%s%s %s%s' % ('const ' if const else '', c_type, '*' if '*' in kind else '',
                                       name))
    scalar = _SCALAR_TYPE[dtype]
    grad_type = 'mxnag_half_bits' if dtype == 'float16' else scalar
    half_out = 'true' if dtype == 'float16' else 'false'
    calls = []
    for k in range(count):
        suffix = _suffix(k, count)
        args = [a + suffix for a in ['grad', 'weight'] + list(_STATES[algorithm])]
        args.append('weight16' + suffix if dtype == 'float16' else '0')
        args += list(_SHARED[algorithm]) + [n + suffix for n in _PER_TENSOR[algorithm]] + ['n' + suffix]
        calls.append('mxnag_%s_body<%s, %s, %s>(%s);' % (algorithm, scalar, grad_type, half_out,
                                                         ', '.join(args)))
    if count == 1:
        body = '  ' + calls[0]
    else:
        body = '  switch (blockIdx.y) {\n%s\n  }' % '\n'.join(
            '    case %d: %s break;' % (k, call) for k, call in enumerate(calls))
    return 'extern "C" __global__ void %s(%s) {\n%s\n}\n' % (
        kernel_name(algorithm, dtype, count), ', '.join(declared), body)


def kernel_arguments(algorithm, tensors, shared):
    """The argument list of an entry point for ``tensors``, in its order.

    ``tensors``: one ``(grad, weight, states, weight16, size, coefs)`` per tensor: its
    arrays (``weight`` the float32 master weight when ``weight16`` is given, else
    ``weight16`` None), its number of elements and its scalars (``coefs``, by name);
    ``shared``: the scalars of the whole launch. Scalars are NumPy scalars of the kernel's
    parameter types (float32 or float64, int32, int64), as both mx.rtc and CuPy pass them
    by their type."""
    half = tensors[0][3] is not None
    dtype = 'float16' if half else numpy.dtype(tensors[0][1].dtype).name
    real = numpy.float64 if dtype == 'float64' else numpy.float32
    args = []
    for grad, weight, states, weight16, _, _ in tensors:
        args += [grad, weight] + list(states)
        if half:
            args.append(weight16)
    for name in _SHARED[algorithm]:
        value = shared[name]
        args.append(real(-1.0 if value is None else value) if name == 'clip_gradient' else real(value))
    for _, _, _, _, _, coefs in tensors:
        args += [numpy.int32(bool(coefs[name])) if name in _INT_SCALARS else real(coefs[name])
                 for name in _PER_TENSOR[algorithm]]
    args += [numpy.int64(size) for _, _, _, _, size, _ in tensors]
    return args


def launch_shape(sizes):
    """(grid, block) dims for one launch over tensors of ``sizes`` elements (one row of
    blocks per tensor, enough for the largest)."""
    largest = max(sizes)
    blocks = max(1, min(MAX_BLOCKS, (largest + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK))
    return (blocks, len(sizes), 1), (THREADS_PER_BLOCK, 1, 1)


def split(count):
    """Tensors per launch for a group of ``count`` tensors (largest entry points first)."""
    launches = []
    for size in COUNTS:
        launches += [size] * ((count - sum(launches)) // size)
    return launches


def _compile():
    from mxnet import rtc  # the CPU build has no CudaModule: that failure means fall back
    return rtc.CudaModule(source())


# The compiled module, made on first use (NVRTC takes seconds), and its kernels.
_MODULE = Once('fused GPU optimizer kernels', _compile)
_KERNELS = {}


def available() -> bool:
    """Whether ``mx.rtc`` compiled the kernels in this process (tried once; warns once)."""
    return _MODULE.get() is not None


def _kernel(algorithm, dtype, count):
    key = (algorithm, dtype, count)
    if key not in _KERNELS:
        _KERNELS[key] = _MODULE.value.get_kernel(kernel_name(algorithm, dtype, count),
                                                 kernel_signature(algorithm, dtype, count))
    return _KERNELS[key]


def update(algorithm, weights, grads, states, masters, shared, per_tensor):
    """One fused step of ``algorithm`` for a group of parameters on one GPU context; same
    arguments as ``fused_cpu.update``. Launches up to 8 tensors of one dtype at a time.
    Never synchronises with the host."""
    by_dtype = {}
    for k, weight in enumerate(weights):
        by_dtype.setdefault(numpy.dtype(weight.dtype).name, []).append(k)
    for dtype, members in by_dtype.items():
        start = 0
        for count in split(len(members)):
            chunk, start = members[start:start + count], start + count
            tensors = []
            for k in chunk:
                master = masters[k] if masters is not None else None
                coefs = {name: values[k] for name, values in per_tensor.items()}
                size = weights[k].size
                if master is not None:
                    tensors.append((grads[k], master, states[k], weights[k], size, coefs))
                else:
                    tensors.append((grads[k], weights[k], states[k], None, size, coefs))
            grid, block = launch_shape([tensor[4] for tensor in tensors])
            _kernel(algorithm, dtype, count).launch(kernel_arguments(algorithm, tensors, shared),
                                                    weights[chunk[0]].context, grid, block)
