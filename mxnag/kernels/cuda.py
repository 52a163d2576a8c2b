"""The fused GPU update: src/fused_cuda.cu compiled at run time by NVRTC through
``mx.rtc.CudaModule`` (present in the mxnet-cu112 build) and launched on the weight's
context, on MXNet's stream for it, ordered by MXNet's engine (``const`` pointers are read
dependencies, the others write dependencies).

A group of parameters is one launch per tensor: ``mx.rtc`` passes NDArrays, not arrays
of pointers, so the CPU operators' one-call-per-group does not carry over.

``kernel_name``/``kernel_signature``/``kernel_arguments`` are plain Python (no MXNet), so
the tests run the same source with the same argument lists through CuPy.
"""
import os

import numpy

from ._once import Once

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'src', 'fused_cuda.cu')
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 8192  # grid-stride loops: enough blocks to fill any current GPU

_DTYPE_SUFFIX = {'float32': 'f32', 'float64': 'f64', 'float16': 'f16mp'}
_SCALAR_TYPE = {'float32': 'float', 'float64': 'double', 'float16': 'float'}
_SCALARS = {
    'adanag': ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'epsilon', 'wd_into_grad',
               'weight_scale', 'grad_coef', 'mean_coef', 'var_scale'),
    'adan': ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'beta3', 'epsilon', 'first_step',
             'mean_coef', 'diff_coef', 'sq_scale', 'weight_scale', 'weight_divisor'),
}
_STATES = {'adanag': ('mean', 'var'), 'adan': ('mean', 'diff_mean', 'sq_mean', 'prev_grad')}


def source() -> str:
    """The CUDA source of every kernel."""
    with open(SOURCE_PATH) as f:
        return f.read()


def kernel_name(algorithm: str, dtype: str) -> str:
    """``mxnag_<algorithm>_<f32|f64|f16mp>``; float16 means float16 weights with float32
    master weights and states."""
    return 'mxnag_%s_%s' % (algorithm, _DTYPE_SUFFIX[dtype])


def kernel_signature(algorithm: str, dtype: str) -> str:
    """The signature ``mx.rtc`` needs (``const`` pointers are inputs, ``__half`` float16)."""
    scalar = _SCALAR_TYPE[dtype]
    grad = '__half' if dtype == 'float16' else scalar
    parts = ['const %s *grad' % grad, '%s *weight' % scalar]
    parts += ['%s *%s' % (scalar, name) for name in _STATES[algorithm]]
    if dtype == 'float16':
        parts.append('__half *weight16')
    for name in _SCALARS[algorithm]:
        parts.append('int %s' % name if name == 'first_step' else '%s %s' % (scalar, name))
    parts.append('int64_t n')
    return ', '.join(parts)


def kernel_arguments(algorithm, grad, weight, states, weight16, size, shared, coefs):
    """The argument list of a kernel, in its order: arrays, then the scalars of
    ``shared`` (group-wide) and ``coefs`` (this tensor's), then the element count.
    ``weight`` is the float32 master weight when ``weight16`` is given. Scalars are NumPy
    scalars of the kernel's parameter types (float32 or float64, int32, int64), as both
    mx.rtc and CuPy pass them by their type."""
    dtype = 'float16' if weight16 is not None else numpy.dtype(weight.dtype).name
    real = numpy.float64 if dtype == 'float64' else numpy.float32
    args = [grad, weight] + list(states)
    if weight16 is not None:
        args.append(weight16)
    for name in _SCALARS[algorithm]:
        value = coefs[name] if name in coefs else shared[name]
        if name == 'clip_gradient':
            args.append(real(-1.0 if value is None else value))
        elif name == 'first_step':
            args.append(numpy.int32(bool(value)))
        else:
            args.append(real(value))
    args.append(numpy.int64(size))
    return args


def launch_shape(size):
    """(grid, block) dims for ``size`` elements."""
    blocks = max(1, min(MAX_BLOCKS, (size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK))
    return (blocks, 1, 1), (THREADS_PER_BLOCK, 1, 1)


def _compile():
    from mxnet import rtc  # the CPU build has no CudaModule: that failure means fall back
    return rtc.CudaModule(source())


# The compiled module, made on first use (NVRTC takes seconds), and its kernels.
_MODULE = Once('fused GPU optimizer kernels', _compile)
_KERNELS = {}


def available() -> bool:
    """Whether ``mx.rtc`` compiled the kernels in this process (tried once; warns once)."""
    return _MODULE.get() is not None


def _kernel(algorithm, dtype):
    key = (algorithm, dtype)
    if key not in _KERNELS:
        _KERNELS[key] = _MODULE.value.get_kernel(kernel_name(algorithm, dtype),
                                                 kernel_signature(algorithm, dtype))
    return _KERNELS[key]


def update(algorithm, weights, grads, states, masters, shared, per_tensor):
    """One fused step of ``algorithm`` for each parameter of a group on GPU contexts;
    same arguments as ``fused_cpu.update``. Never synchronises with the host."""
    names = list(per_tensor)
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        dtype = numpy.dtype(weight.dtype).name
        master = masters[k] if masters is not None else None
        kernel = _kernel(algorithm, dtype)
        coefs = {name: per_tensor[name][k] for name in names}
        if master is not None:
            args = kernel_arguments(algorithm, grad, master, state, weight, weight.size, shared, coefs)
        else:
            args = kernel_arguments(algorithm, grad, weight, state, None, weight.size, shared, coefs)
        grid, block = launch_shape(weight.size)
        kernel.launch(args, weight.context, grid, block)
