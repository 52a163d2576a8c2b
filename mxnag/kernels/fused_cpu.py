"""The fused CPU operators: loading the built library into MXNet (lazily, once per
process) and calling its operators on groups of parameters.

The library registers ``mxnag_adanag_update`` and ``mxnag_adan_update`` with MXNet's
extension-library interface. They are invoked directly through MXNet's imperative-invoke
entry point (the one every ``mx.nd`` operator uses), so loading needs only
``mxnet.base`` and ``mxnet.ndarray`` (a kvstore server has no more), not the regeneration
of every operator module that ``mx.library.load`` does.
"""
import ctypes
import os

from . import build as _build
from ._once import Once

ALGORITHMS = {
    # name: (operator, number of state arrays, group-wide attributes, per-tensor attributes)
    'adanag': ('mxnag_adanag_update', 2,
               ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'epsilon'),
               ('wd_into_grad', 'weight_scale', 'grad_coef', 'mean_coef', 'var_scale')),
    'adan': ('mxnag_adan_update', 4,
             ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'beta3', 'epsilon'),
             ('first_step', 'mean_coef', 'diff_coef', 'sq_scale', 'weight_scale', 'weight_divisor')),
}
# The attribute names of an update call, in order (the values: a Python float's repr
# round-trips a double, and strtod reads 'inf' and 'nan').
_KEYS = {name: ['num_weights', 'multi_precision'] + list(shared) + list(per_tensor)
         for name, (_, _, shared, per_tensor) in ALGORITHMS.items()}
OPERATORS = ('mxnag_adanag_update', 'mxnag_adan_update', 'mxnag_copy', 'mxnag_stream',
             'mxnag_probe')


def _build_and_load():
    """(path, operator name -> MXNet op handle) of the built and loaded library."""
    path = _build.build()['path']
    return path, _load(path)


_LIBRARY = Once('fused CPU optimizer kernels', _build_and_load)


def forced_off() -> bool:
    """``MXNAG_FUSED=0`` (or false/off/no) forces the composed NDArray fallback."""
    return os.environ.get('MXNAG_FUSED', '1').strip().lower() in ('0', 'false', 'off', 'no')


def available() -> bool:
    """Whether the fused operators can run in this process: builds and loads the library
    on the first call; on failure warns once and returns False from then on."""
    return not forced_off() and _LIBRARY.get() is not None


def status() -> dict:
    """Whether the fused path is active and, if not, why (for ``python -m mxnag.ops info``)."""
    path = _LIBRARY.value[0] if _LIBRARY.value is not None else None
    if forced_off():
        return {'active': False, 'reason': 'MXNAG_FUSED=%s' % os.environ['MXNAG_FUSED'], 'path': path}
    return {'active': _LIBRARY.value is not None, 'reason': _LIBRARY.reason, 'path': path,
            'tried': _LIBRARY.tried}


def _op_handle(name):
    from mxnet.base import _LIB, c_str, check_call
    handle = ctypes.c_void_p()
    check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
    return handle.value


def _load(path):
    """Register the library's operators with MXNet (unless this process already did, e.g.
    through ``mx.library.load``) and return their handles."""
    from mxnet.base import _LIB, MXNetError, c_str, check_call, mx_uint
    try:
        return {name: _op_handle(name) for name in OPERATORS}
    except MXNetError:
        pass  # not registered yet
    check_call(_LIB.MXLoadLib(c_str(path), mx_uint(0)))
    return {name: _op_handle(name) for name in OPERATORS}


def invoke(name, inputs, keys, values, out):
    """Call operator ``name`` of the library imperatively (asynchronously, like any
    ``mx.nd`` operator); ``out`` is written in place."""
    from mxnet.ndarray._internal import _imperative_invoke
    _imperative_invoke(_LIBRARY.value[1][name], inputs, keys, values, out, False, True)


def update(algorithm, weights, grads, states, masters, shared, per_tensor):
    """One fused step of ``algorithm`` for a group of parameters on one CPU context.

    ``states[k]`` is the tuple of state arrays of weight k; ``masters`` is None or, for
    float16 weights, their float32 master weights; ``shared`` maps the group-wide
    attributes to numbers, ``per_tensor`` the per-tensor ones to sequences.
    """
    operator, _, shared_names, tensor_names = ALGORITHMS[algorithm]
    inputs = []
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        inputs.append(weight)
        inputs.append(grad)
        inputs.extend(state)
        if masters is not None:
            inputs.append(masters[k])
    values = [str(len(weights)), '1' if masters is not None else '0']
    for name in shared_names:
        value = shared[name]
        values.append(repr(-1.0 if value is None else float(value)))  # clip_gradient None: off
    texts = {}  # number -> its text: a group's parameters mostly share their coefficients
    for name in tensor_names:
        column = []
        for value in per_tensor[name]:
            text = texts.get(value) if value else None  # (0.0 == -0.0: zeros not shared)
            if text is None:
                text = texts[value] = repr(float(value))
            column.append(text)
        values.append(','.join(column))
    invoke(operator, inputs, _KEYS[algorithm], values, list(weights))


def probe():
    """(omp_get_max_threads() inside MXNet's engine, threads the operators use,
    omp_get_num_procs()), measured by running ``mxnag_probe`` on the engine."""
    from mxnet import ndarray as nd
    if not available():
        return None
    out = nd.zeros((3,), dtype='int32')
    invoke('mxnag_probe', [nd.zeros((1,))], [], [], [out])
    return tuple(int(v) for v in out.asnumpy())


def copy(src, dst):
    """``dst[:] = src`` with the operators' threads."""
    invoke('mxnag_copy', [src], [], [], [dst])


def stream(source, targets):
    """``t += source`` for every float32 array ``t`` of ``targets`` (1 to 5, the shape of
    ``source``), in one pass with the operators' threads: the memory traffic of an update
    that reads ``source`` and reads and writes ``targets``, without its maths (the
    benchmark's bandwidth floor)."""
    invoke('mxnag_stream', [targets[0], source] + list(targets[1:]), ['targets'],
           [str(len(targets))], [targets[0]])
