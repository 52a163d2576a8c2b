"""The fused CPU operators: loading the built library into MXNet (lazily, once per
process) and calling its operators on groups of parameters.

The library registers one operator per step rule, ``mxnag_<rule>_update``, with MXNet's
extension-library interface. They are invoked directly through MXNet's imperative-invoke
entry point (the one every ``mx.nd`` operator uses), so loading needs only
``mxnet.base`` and ``mxnet.ndarray`` (a kvstore server has no more), not the regeneration
of every operator module that ``mx.library.load`` does.
"""
import ctypes
import os

import numpy

from . import build as _build
from ._once import Once

# The attribute names of an update call (the values: a Python float's repr round-trips
# a double, and strtod reads 'inf' and 'nan'); the rule gives the rest of them.
_LAYOUT_KEYS = ['num_weights', 'multi_precision', 'state_bits']


def _forced_off_by_environment():
    return os.environ.get('MXNAG_FUSED', '1').strip().lower() in ('0', 'false', 'off', 'no')


# MXNAG_FUSED=0 (or false/off/no) when mxnag is imported: use the composed backend.
# Read once; kernels.set_fused changes it for the process.
FORCED_OFF = _forced_off_by_environment()


def _build_and_load():
    """(path, operator name -> MXNet op handle) of the built and loaded library."""
    path = _build.build()['path']
    return path, _load(path)


_LIBRARY = Once('fused CPU optimizer kernels', _build_and_load)


def forced_off() -> bool:
    """Whether the composed backend is forced (``MXNAG_FUSED=0``, ``kernels.set_fused``)."""
    return FORCED_OFF


def available() -> bool:
    """Whether the fused operators can run in this process: builds and loads the library
    on the first call; on failure warns once and returns False from then on."""
    return not FORCED_OFF and _LIBRARY.get() is not None


def supports(rule) -> bool:
    """Whether the library has the operator of ``rule`` (``mxnag_<name>_update``)."""
    return _handle('mxnag_%s_update' % rule.name) is not None


def _handle(name):
    """The MXNet handle of operator ``name`` (None if there is none), once looked up."""
    from mxnet.base import MXNetError
    if _LIBRARY.value is None:
        return None
    handles = _LIBRARY.value[1]
    if name not in handles:
        try:
            handles[name] = _op_handle(name)
        except MXNetError:
            handles[name] = None
    return handles[name]


def status() -> dict:
    """Whether the fused path is active and, if not, why (for ``python -m mxnag.kernels.ops info``)."""
    path = _LIBRARY.value[0] if _LIBRARY.value is not None else None
    if FORCED_OFF:
        return {'active': False, 'reason': 'forced off (MXNAG_FUSED=%s or kernels.set_fused)'
                % os.environ.get('MXNAG_FUSED'), 'path': path}
    return {'active': _LIBRARY.value is not None, 'reason': _LIBRARY.reason, 'path': path,
            'tried': _LIBRARY.tried}


def _op_handle(name):
    from mxnet.base import _LIB, c_str, check_call
    handle = ctypes.c_void_p()
    check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
    return handle.value


def _load(path):
    """Register the library's operators with MXNet (unless this process already did, e.g.
    through ``mx.library.load``) and return a cache of operator handles; the operators
    are looked up when first used (``_handle``)."""
    from mxnet.base import _LIB, MXNetError, c_str, check_call, mx_uint
    try:
        _op_handle(_PROBE)
    except MXNetError:  # not registered yet
        check_call(_LIB.MXLoadLib(c_str(path), mx_uint(0)))
    return {_PROBE: _op_handle(_PROBE), _REORDER: _reorder_to_default()}


_PROBE = 'mxnag_probe'  # every build of the library has it
# NDArray::Reorder2DefaultAsync() const (include/mxnet/ndarray.h, declared where MXNet is
# built with oneDNN), by its Itanium C++ ABI name: a non-virtual member function, so its
# one argument is the NDArray* that an NDArrayHandle is.
_REORDER = '_ZNK5mxnet7NDArray20Reorder2DefaultAsyncEv'


def _reorder_to_default():
    """MXNet's ``NDArray::Reorder2DefaultAsync`` as a ctypes function of an NDArrayHandle;
    None where MXNet has no oneDNN (no array has a layout of its own there). Raises where
    MXNet has oneDNN and the function cannot be found: the fused operators could not
    write a weight in a oneDNN layout, so the composed update is used instead."""
    from mxnet.base import _LIB
    try:
        function = getattr(_LIB, _REORDER)
    except AttributeError:
        if _has_onednn(_LIB):
            raise RuntimeError('MXNet is built with oneDNN (MKLDNN) but exports no %s, which '
                               'the fused operators need for weights in oneDNN layouts' % _REORDER)
        return None
    function.argtypes = [ctypes.c_void_p]
    function.restype = None
    return function


def _has_onednn(lib):
    """Whether MXNet was built with oneDNN (MKLDNN), from ``MXLibInfoFeatures`` (the C call
    behind ``mxnet.runtime``, which a kvstore server's half-imported MXNet may lack)."""
    class Feature(ctypes.Structure):
        _fields_ = [('name', ctypes.c_char_p), ('enabled', ctypes.c_bool)]
    features = ctypes.POINTER(Feature)()
    size = ctypes.c_size_t()
    if lib.MXLibInfoFeatures(ctypes.byref(features), ctypes.byref(size)) != 0:
        return True  # cannot tell: assume the layouts exist
    return any(features[k].name == b'MKLDNN' and features[k].enabled for k in range(size.value))


def invoke(name, inputs, keys, values, out):
    """Call operator ``name`` of the library imperatively (asynchronously, like any
    ``mx.nd`` operator); ``out`` is written in place."""
    from mxnet.ndarray._internal import _imperative_invoke
    handle = _handle(name)
    if handle is None:
        raise ValueError('the fused CPU library has no operator %r' % name)
    _imperative_invoke(handle, inputs, keys, values, out, False, True)


def to_default_layout(weights, shapes=None):
    """Leave every float32 weight of ``weights`` that MXNet's oneDNN (MKLDNN) operators
    may have put in a layout of their own in MXNet's default layout, in place, whatever
    that layout is (blocked, grouped or depthwise with one more dimension than the array,
    3-D convolutions').

    Why a weight can be in such a layout, and why this undoes every one of them (apache/
    mxnet 1.9.1 sources): an inference pass through Convolution, Deconvolution or
    FullyConnected (and their quantized forms) calls ``weight.MKLDNNDataReorderAsync(desc)``
    on a default-layout weight, which reorders it on the engine, when it runs, to the
    primitive's weight layout; a grouped convolution's is 5-D (groups first) for a 4-D
    weight. Those calls are the only ones in MXNet that change the layout of an operator's
    input in place, and they touch only weights of 2 or more dimensions, in float32 (or
    bfloat16 and int8, which mxnag does not train). An extension operator cannot write an
    array in such a layout (its dispatcher calls ``data()`` on outputs: "We can't generate
    TBlob for MKLDNN data"). ``NDArray::Reorder2DefaultAsync`` is what MXNet's own training
    passes call on such a weight (``mkldnn_convolution.cc``, ``mkldnn_fully_connected.cc``):
    an engine operation writing the array, whose ``Chunk::Reorder2Default`` reorders from
    the layout's own descriptor (any number of dimensions) to its default format, which
    for a grouped weight (goihw) is the bytes of the array's own (OIHW), and does nothing
    for an array in the default layout. As a write it also raises the array's version, so
    a reorder to a oneDNN layout that an inference pass queued before the update finds
    the version changed and does nothing (``MKLDNNDataReorderAsync`` checks it).
    (An in-place ``Reshape``, used before, reorders to a descriptor of the array's own
    dimensions, which oneDNN refuses for a 5-D grouped layout, and does nothing for 5-D
    arrays.) About 2 us of host time per weight. ``shapes``: the weights' shapes when the
    caller knows them (each look-up is a call into MXNet)."""
    reorder = _LIBRARY.value[1][_REORDER]
    if reorder is None:
        return
    for k, weight in enumerate(weights):
        if len(weight.shape if shapes is None else shapes[k]) >= 2:
            reorder(weight.handle)


def update(rule, weights, grads, states, masters, shared, per_tensor, step_arrays, slots, flag,
           table, shapes=None, cache=None):
    """One fused step of ``rule`` for a group of parameters of one dtype on one CPU context.

    ``states[k]`` is the tuple of state arrays of weight k; ``masters`` is None or, for
    float16 weights, their float32 master weights; ``shared`` maps the rule's group-wide
    scalars to numbers, ``per_tensor`` its per-tensor ones to sequences (a step scalar's
    values are multipliers of the table's factors); ``step_arrays``, ``slots``, ``flag``
    and ``table`` are the step counts (``kernels.StepCounts``). Weights in oneDNN's
    layouts are accepted (``to_default_layout``); gradients are too (MXNet gives an
    extension operator a default-layout copy of such an input). ``cache``: a dict the
    caller keeps for this group while its arrays stay the same objects (the inputs,
    the weights to reorder and the attributes' texts are made once, not every step).
    """
    cache = {} if cache is None else cache
    if 'inputs' not in cache:
        _prepare(cache, rule, weights, grads, states, masters, step_arrays, shapes)
    reorder = _LIBRARY.value[1][_REORDER]
    if reorder is not None:
        for handle in cache['reorder']:
            reorder(handle)
    inputs = cache['inputs'][:]
    inputs[cache['flag_at']:cache['flag_at'] + 2] = [flag, table]
    values = cache['head'] + [repr(-1.0 if shared[name] is None else float(shared[name]))
                              for name in rule.shared]  # clip_gradient None: off
    columns = cache['columns']
    for name in rule.per_tensor:
        column = tuple(per_tensor[name])
        known = columns.get(name)
        if known is None or known[0] != column:
            known = columns[name] = (column, _texts(column, cache['texts']))
        values.append(known[1])
    values.append(cache['step_scalars'])
    values.append(','.join('1' if slot else '0' for slot in slots))
    invoke(cache['op'], inputs, cache['keys'], values, cache['outputs'])


def _prepare(cache, rule, weights, grads, states, masters, step_arrays, shapes):
    """What ``update`` reuses while a group's arrays stay the same: its inputs (the flag
    and table's places left for each step's), the float32 weights that may be in a oneDNN
    layout (their handles), the attributes' names and the texts that do not change."""
    inputs = []
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        inputs += [weight, grad] + list(state)
        if masters is not None:
            inputs.append(masters[k])
    cache['flag_at'] = len(inputs)
    cache['inputs'] = inputs + [None, None] + list(step_arrays)
    reorder = masters is None and weights[0].dtype is numpy.float32  # a group has one dtype
    cache['reorder'] = [w.handle for k, w in enumerate(weights)
                        if reorder and len(w.shape if shapes is None else shapes[k]) >= 2]
    coded = len(states[0]) != len(rule.states)  # 8-bit: codes and scales per state
    cache['head'] = [str(len(weights)), '1' if masters is not None else '0', '8' if coded else '32']
    cache['keys'] = _LAYOUT_KEYS + list(rule.shared + rule.per_tensor) + _STEP_KEYS
    cache['op'] = 'mxnag_%s_update' % rule.name
    cache['outputs'] = list(weights)
    cache['step_scalars'] = ','.join(rule.step_scalars)
    cache['columns'] = {}
    cache['texts'] = {}


def _texts(column, texts):
    """The attribute text of a per-tensor column (a Python float's repr round-trips a
    double); ``texts`` remembers each number's (a group's parameters mostly share them)."""
    out = []
    for value in column:
        text = texts.get(value) if value else None  # (0.0 == -0.0: zeros not shared)
        if text is None:
            text = repr(float(value))
            if len(texts) < 4096:
                texts[value] = text
        out.append(text)
    return ','.join(out)


_STEP_KEYS = ['step_scalars', 'step_slot']


def all_finite(arrays):
    """A float32 NDArray of one element on the first array's context: 1 if every element of
    every array of ``arrays`` (float16/32/64, CPU) is finite, else 0 (operator
    ``mxnag_all_finite``: one threaded pass, no host read)."""
    from mxnet import ndarray as nd
    flag = nd.empty((1,), ctx=arrays[0].context)
    invoke('mxnag_all_finite', list(arrays), ['num_arrays'], [str(len(arrays))], [flag])
    return flag


def probe():
    """(omp_get_max_threads() inside MXNet's engine, threads the operators use,
    omp_get_num_procs()), measured by running ``mxnag_probe`` on the engine."""
    from mxnet import ndarray as nd
    if not available():
        return None
    out = nd.zeros((3,), dtype='int32')
    invoke('mxnag_probe', [nd.zeros((1,))], [], [], [out])
    return tuple(int(v) for v in out.asnumpy())
