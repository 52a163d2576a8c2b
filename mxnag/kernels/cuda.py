"""The fused GPU update: the kernels of src/fused_cuda.cu compiled at run time by NVRTC
through ``mx.rtc.CudaModule`` (present in the mxnet-cu112 build) and launched on the
weight's context, on MXNet's stream for it, ordered by MXNet's engine (``const`` pointers
are read dependencies, the others write dependencies).

src/fused_cuda.cu holds the maths (one device function per step rule); the ``__global__``
entry points are written here (``source``), from the same table as the signatures and
argument lists ``mx.rtc`` gets, so the three cannot disagree. An entry point updates up
to ``COUNTS[0]`` tensors in one launch (``blockIdx.y`` picks the tensor): ``mx.rtc``
passes NDArrays and numbers, not arrays of pointers, so each tensor's arrays,
coefficients and size are parameters of their own. MXNet 1.9.1's ``mx.rtc`` synchronises
its stream after every launch (src/common/rtc.cc), on the engine's GPU worker, not on the
caller's thread: a group of parameters pays that once per launch of up to 8 tensors,
not once per tensor.

Everything an entry point needs to know of an optimizer comes from its step rule
(``StepRule``: name, states, scalars); a rule's module holds the source and the entry
points of that rule and is compiled when a GPU first updates with it.
``kernel_name``/``kernel_signature``/``kernel_arguments``/``source`` are plain Python (no
MXNet), so the tests run the same source with the same argument lists through CuPy, and
on the CPU through tests/cuda_host_emulation.cc.
"""
import functools
import os
import re

import numpy

from ._once import Once, log

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'src', 'fused_cuda.cu')
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 8192  # grid-stride loops: enough blocks to fill any current GPU
COUNTS = (8, 4, 2, 1)  # tensors per launch that entry points exist for, largest first

_DTYPE_SUFFIX = {'float32': 'f32', 'float64': 'f64', 'float16': 'f16mp'}
_SCALAR_TYPE = {'float32': 'float', 'float64': 'double', 'float16': 'float'}
# mx.rtc's names -> the source's
_C_TYPE = {'__half': 'mxnag_half_bits', 'int64_t': 'long long', 'uint8_t': 'unsigned char'}
# The kinds of entry point: (weight dtype, 8-bit states), in their order.
KINDS = tuple((dtype, coded) for dtype in sorted(_DTYPE_SUFFIX) for coded in (False, True)
              if not (coded and dtype == 'float64'))
_HEADERS = ('rules.h', 'state_codes.h')  # pasted into the source where it includes them


def source(*rules) -> str:
    """The CUDA source of the kernels of ``rules``: src/fused_cuda.cu (with src/rules.h
    and src/state_codes.h) and their entry points (none for a rule without a body)."""
    rules = [rule for rule in rules if supports(rule)]
    entries = [_entry_point(rule, dtype, count, coded) for rule in rules
               for dtype, coded in KINDS for count in COUNTS]
    return _kernel_source() + '\n// Entry points, written by mxnag/kernels/cuda.py.\n' + '\n'.join(entries)


@functools.lru_cache(maxsize=1)
def _kernel_source():
    with open(SOURCE_PATH) as f:
        text = f.read()
    for header in _HEADERS:
        with open(os.path.join(os.path.dirname(SOURCE_PATH), header)) as f:
            text = text.replace('#include "%s"\n' % header, f.read())
    return text


def supports(rule) -> bool:
    """Whether src/rules.h has ``rule``'s body (``struct <name>_rule``)."""
    return 'struct %s_rule ' % rule.name in _kernel_source()


def kernel_names(*rules):
    """The name of every entry point of ``source(*rules)``, in its order."""
    return [kernel_name(rule, d, c, coded) for rule in rules if supports(rule)
            for d, coded in KINDS for c in COUNTS]


def kernel_name(rule, dtype: str, count: int = 1, coded: bool = False) -> str:
    """``mxnag_<rule>_<f32|f64|f16mp>``, with ``q8`` for 8-bit states and ``_x<count>`` for
    ``count`` tensors per launch; float16 means float16 weights with float32 master
    weights and states."""
    name = 'mxnag_%s_%s%s' % (rule.name, _DTYPE_SUFFIX[dtype], 'q8' if coded else '')
    return name if count == 1 else '%s_x%d' % (name, count)


def _suffix(k, count):
    """What tensor ``k``'s parameter names end with in an entry point for ``count``."""
    return '_%d' % k if count > 1 else ''


def _parameters(rule, dtype, count, coded=False):
    """[(mx.rtc type with '*' for arrays and 'const ' for inputs, name)] of an entry point:
    each tensor's arrays (8-bit states: codes and scales of each) and step count, the
    shared scalars, the step flag and factor table, each tensor's scalars and step slot,
    each tensor's size."""
    scalar = _SCALAR_TYPE[dtype]
    params = []
    for k in range(count):
        suffix = _suffix(k, count)
        params.append(('const %s *' % ('__half' if dtype == 'float16' else scalar), 'grad' + suffix))
        params.append(('%s *' % scalar, 'weight' + suffix))
        for state in rule.states:
            if coded:
                params += [('uint8_t *', state + '_codes' + suffix),
                           ('float *', state + '_scales' + suffix)]
            else:
                params.append(('%s *' % scalar, state + suffix))
        if dtype == 'float16':
            params.append(('__half *', 'weight16' + suffix))
        params.append(('double *', 'step' + suffix))
    params += [(scalar, name) for name in rule.shared]
    params += [('const float *', 'flag'), ('const double *', 'table'), ('int64_t', 'table_rows')]
    for k in range(count):
        params += [('int' if name in rule.flags else scalar, name + _suffix(k, count))
                   for name in rule.per_tensor]
        params.append(('int', 'step_slot' + _suffix(k, count)))
    params += [('int64_t', 'n' + _suffix(k, count)) for k in range(count)]
    return params


def kernel_signature(rule, dtype: str, count: int = 1, coded: bool = False) -> str:
    """The signature ``mx.rtc`` needs (``const`` pointers are inputs, ``__half`` float16)."""
    return ', '.join('%s%s' % (kind if kind.endswith('*') else kind + ' ', name)
                     for kind, name in _parameters(rule, dtype, count, coded))


def _entry_point(rule, dtype, count, coded=False):
    """The ``extern "C" __global__`` function of ``kernel_name(rule, dtype, count, coded)``:
    ``blockIdx.y`` picks the tensor, whose step count ``mxnag_step_row`` advances and
    whose update (when the step applies) is the rule's body (``<name>_rule``, src/rules.h)
    in the loop of its state format, its ``Coefs`` filled by name, each step scalar its
    multiplier times the factor table's entry at the new count."""
    params = _parameters(rule, dtype, count, coded)
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
    columns = len(rule.step_scalars)
    blocks = []
    for k in range(count):
        suffix = _suffix(k, count)
        lines = ['{', '    const long long row = mxnag_step_row(flag, step%s, step_slot%s, table_rows);'
                 % (suffix, suffix), '    if (row >= 0) {',
                 '      %s_rule::Coefs<%s> c;' % (rule.name, scalar)]
        for name in rule.shared + rule.per_tensor:
            value = name if name in rule.shared else name + suffix
            if name in rule.step_scalars:
                factor = 'table[row * %d + %d]' % (columns, rule.step_scalars.index(name))
                value = '(double)%s * %s' % (value, factor)
            lines.append('      c.%s = (%s)(%s);' % (name, scalar, value))
        half = 'weight16' + suffix if dtype == 'float16' else '0'
        if coded:
            lines += ['      unsigned char* codes[] = {%s};' % ', '.join(
                          '%s_codes%s' % (state, suffix) for state in rule.states),
                      '      float* scales[] = {%s};' % ', '.join(
                          '%s_scales%s' % (state, suffix) for state in rule.states),
                      '      mxnag_update_coded<%s_rule, %s, %s>(c, grad%s, weight%s, codes, scales, %s, n%s);'
                      % (rule.name, grad_type, half_out, suffix, suffix, half, suffix)]
        else:
            lines += ['      %s* states[] = {%s};' % (scalar, ', '.join(state + suffix for state in rule.states)),
                      '      mxnag_update_full<%s_rule, %s, %s, %s>(c, grad%s, weight%s, states, %s, n%s);'
                      % (rule.name, scalar, grad_type, half_out, suffix, suffix, half, suffix)]
        lines += ['    }', '  }']
        blocks.append('\n'.join(lines))
    if count == 1:
        body = '  ' + blocks[0]
    else:
        body = '  switch (blockIdx.y) {\n%s\n  }' % '\n'.join(
            '    case %d: %s break;' % (k, block.replace('\n', '\n  ')) for k, block in enumerate(blocks))
    return 'extern "C" __global__ void %s(%s) {\n%s\n}\n' % (
        kernel_name(rule, dtype, count, coded), ', '.join(declared), body)


def kernel_arguments(rule, tensors, shared, flag, table, table_rows):
    """The argument list of an entry point for ``tensors``, in its order.

    ``tensors``: one ``(grad, weight, states, weight16, size, coefs, step, slot)`` per
    tensor: its arrays (``weight`` the float32 master weight when ``weight16`` is given,
    else ``weight16`` None), its number of elements, its scalars (``coefs``, by name; a
    step scalar's is its multiplier), its step count array and the slot read; ``shared``:
    the scalars of the whole launch; ``flag``, ``table`` and ``table_rows``: the step flag,
    the factor table and its rows. Scalars are NumPy scalars of the kernel's parameter
    types (float32 or float64, int32, int64), as both mx.rtc and CuPy pass them by their
    type."""
    half = tensors[0][3] is not None
    dtype = 'float16' if half else numpy.dtype(tensors[0][1].dtype).name
    real = numpy.float64 if dtype == 'float64' else numpy.float32
    args = []
    for grad, weight, states, weight16, _, _, step, _ in tensors:
        args += [grad, weight] + list(states)
        if half:
            args.append(weight16)
        args.append(step)
    for name in rule.shared:
        value = shared[name]
        args.append(real(-1.0 if value is None else value) if name == 'clip_gradient' else real(value))
    args += [flag, table, numpy.int64(table_rows)]
    for _, _, _, _, _, coefs, _, slot in tensors:
        args += [numpy.int32(bool(coefs[name])) if name in rule.flags else real(coefs[name])
                 for name in rule.per_tensor]
        args.append(numpy.int32(slot))
    args += [numpy.int64(tensor[4]) for tensor in tensors]
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


# The virtual architectures CUDA 11.2's NVRTC (the one in MXNet 1.9.1's cu112 build)
# compiles for, newest first: a GPU newer than the newest (compute_90: H100/H200) gets
# PTX for compute_86, which its driver compiles for it on loading (PTX runs on GPUs of
# its compute capability and newer).
NVRTC_ARCHS = (86, 80, 75, 72, 70, 62, 61, 60, 53, 52)

# What NVRTC says of an architecture it does not know ("invalid value for
# --gpu-architecture (-arch)"), as mx.rtc passes its log on in the MXNetError.
_ARCH_REJECTED = re.compile(r'gpu-architecture|-arch\b|compute_\d\d')


class CompileError(RuntimeError):
    """mx.rtc compiled the source for none of the architectures tried."""


def _device_arch():
    """The compute capability (e.g. 90 for 9.0) of the oldest GPU MXNet sees (the PTX must
    load on every one of them; mx.rtc itself asks device 0 only), or None where it cannot
    be read (then mx.rtc picks device 0's)."""
    import mxnet as mx
    from mxnet import util
    try:
        count = max(1, mx.context.num_gpus())
        return min(util.get_cuda_compute_capability(mx.gpu(i)) for i in range(count))
    except Exception as err:  # noqa: BLE001  (no driver, no GPU: let mx.rtc decide)
        log.debug('compute capability not read (%s: %s)', type(err).__name__, err)
        return None


def _architectures(device):
    """The architectures to ask NVRTC for, in order: the device's own (None: mx.rtc's
    choice, device 0's), then those NVRTC 11.2 knows that are older than it."""
    return [device] + [arch for arch in NVRTC_ARCHS if device is None or arch < device]


def _compile(rule):
    """``mx.rtc.CudaModule`` of ``source(rule)``, compiled for the GPU's architecture, or
    when NVRTC rejects that architecture for the newest older one it accepts. Raises
    CompileError naming the architectures tried when no compile succeeds (the caller's
    Once then warns once and the composed update is used)."""
    from mxnet import rtc  # the CPU build has no CUDA RTC: that failure means fall back
    text = source(rule)
    tried = []
    for arch in _architectures(_device_arch()):
        options = () if arch is None else ('--gpu-architecture=compute_%d' % arch,)
        tried.append("device 0's (mx.rtc's default)" if arch is None else 'compute_%d' % arch)
        try:
            module = rtc.CudaModule(text, options=options)
        except Exception as err:  # noqa: BLE001  (MXNetError with NVRTC's log)
            message = '%s: %s' % (type(err).__name__, err)
            if not _ARCH_REJECTED.search(str(err)):
                break  # not the architecture: the others would fail the same way
            continue
        if len(tried) > 1:
            log.info('fused GPU kernels of %s compiled for %s (NVRTC rejected %s); the driver '
                     'compiles their PTX for the GPU', rule.name, tried[-1], ', '.join(tried[:-1]))
        return module
    raise CompileError('mx.rtc compiled for none of the architectures tried (%s); last error: %s'
                       % (', '.join(tried), message))


# Each rule's compiled module, made on its first GPU update (NVRTC takes seconds), and
# the kernels got from it.
_MODULES = {}
_KERNELS = {}


def available(rule=None) -> bool:
    """Whether ``mx.rtc`` compiled ``rule``'s kernels in this process (tried once per
    rule; warns once); with no rule, whether any compiled."""
    if rule is None:
        return any(module.value is not None for module in _MODULES.values())
    if rule.name not in _MODULES:
        _MODULES[rule.name] = Once('fused GPU kernels of %s' % rule.name, lambda: _compile(rule))
    return _MODULES[rule.name].get() is not None


def _kernel(rule, dtype, count, coded):
    key = (rule.name, dtype, count, coded)
    if key not in _KERNELS:
        _KERNELS[key] = _MODULES[rule.name].value.get_kernel(
            kernel_name(rule, dtype, count, coded), kernel_signature(rule, dtype, count, coded))
    return _KERNELS[key]


def update(rule, weights, grads, states, masters, shared, per_tensor, step_arrays, slots, flag,
           table):
    """One fused step of ``rule`` for a group of parameters on one GPU context; same
    arguments as ``fused_cpu.update`` (a call's states are all float or all 8-bit).
    Launches up to 8 tensors of one dtype at a time. Never synchronises with the host."""
    rows = table.shape[0]
    coded = len(states[0]) != len(rule.states)  # codes and scales per state
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
                    tensors.append((grads[k], master, states[k], weights[k], size, coefs,
                                    step_arrays[k], slots[k]))
                else:
                    tensors.append((grads[k], weights[k], states[k], None, size, coefs,
                                    step_arrays[k], slots[k]))
            grid, block = launch_shape([tensor[4] for tensor in tensors])
            _kernel(rule, dtype, count, coded).launch(
                kernel_arguments(rule, tensors, shared, flag, table, rows),
                weights[chunk[0]].context, grid, block)
