"""How one optimizer step is computed, and on which backend.

An optimizer declares its step as a ``StepRule`` (``mxnag.optim.base``: its states, the
names of its scalars, the readable step) and computes every step-dependent scalar on the
host; ``multi_update`` applies them to a group of parameters on, per part of the group:

* ``fused-cpu``: the single-pass C++ operators of ``src/fused_cpu.cc``, built and cached
  on first use (``build``) and loaded into MXNet (``fused_cpu``); float32 and float64
  weights, float16 weights with float32 master weights; a whole group per call;
* ``cuda``: the same update as a CUDA kernel (``src/fused_cuda.cu``) compiled at run time
  by ``mx.rtc`` for weights on a GPU context;
* ``composed``: the rule's readable step, NDArray operators (``composed``), on any
  context and dtype: the fallback when nothing is compiled (no compiler, a failed build,
  ``MXNAG_FUSED=0``) or a rule has no kernel.

Every backend agrees with the float64 references of the tests to float32 rounding.
Nothing here synchronises with the host, and nothing here knows an optimizer by name.
Only ``mxnet.ndarray`` is imported at module level (a kvstore server unpickling an
optimizer has no more); the library and ``mx.rtc`` are loaded on the first update.
"""
from typing import Callable, List, NamedTuple

import numpy

from . import composed, cuda, fused_cpu

__all__ = ['multi_update', 'update', 'backend_for', 'set_fused', 'StepCounts', 'all_finite']


class StepCounts(NamedTuple):
    """The device side of a group's step counts (see ``optim.base.StepRule``).

    ``arrays[k]``: weight k's float64 step count array of two slots; ``slots[k]``: the
    slot this step reads (it writes the other: the count plus one if the step applies,
    else the count); ``device_inputs(context)``: ``(flag, table)`` on ``context``, a
    float32 array of one element (0: skip the step) and the float64 table whose row
    ``t - 1`` holds the factors of ``rule.step_scalars`` at step ``t``."""
    arrays: List
    slots: List[int]
    device_inputs: Callable


def _fixed_steps(weights, rule):
    """Step counts for a call that gives its scalars whole: every step applies, and the
    step scalars are multiplied by 1."""
    from mxnet import ndarray as nd
    tables = {}

    def device_inputs(context):
        key = (context.device_typeid, context.device_id)
        if key not in tables:
            tables[key] = (nd.ones((1,), ctx=context),
                           nd.ones((1, max(1, len(rule.step_scalars))), ctx=context,
                                   dtype=numpy.float64))
        return tables[key]
    return StepCounts([nd.zeros((2,), ctx=w.context, dtype=numpy.float64) for w in weights],
                      [0] * len(weights), device_inputs)

_FUSED_DTYPES = (numpy.float32, numpy.float64)
# Host memory, as MXNet names it: a kvstore keeps its copies of the weights (which
# update_on_kvstore updates) on cpu_pinned, DataLoader workers share cpu_shared arrays.
_CPU_DEVICE_TYPES = ('cpu', 'cpu_pinned', 'cpu_shared')


def set_fused(enabled: bool) -> None:
    """Use the fused backends (the default) or force the composed one, for this process
    (``MXNAG_FUSED=0`` in the environment sets False when mxnag is imported)."""
    fused_cpu.FORCED_OFF = not enabled


def backend_for(weight, master=None, rule=None) -> str:
    """``'fused-cpu'``, ``'cuda'`` or ``'composed'``: the backend that updates ``weight``
    (with float32 ``master`` weight for float16 multi-precision) by ``rule`` (None: a
    rule that has kernels)."""
    return _backend(rule, weight.dtype, weight.context.device_type,
                    None if master is None else master.dtype)


def _backend(rule, dtype, device_type, master_dtype):
    """``backend_for`` from what it looks at (MXNet's ``dtype`` is a NumPy scalar type)."""
    if master_dtype is not None:
        fusable = dtype is numpy.float16 and master_dtype is numpy.float32
    else:
        fusable = dtype in _FUSED_DTYPES
    if not fusable or fused_cpu.FORCED_OFF:
        return 'composed'
    if device_type in _CPU_DEVICE_TYPES and fused_cpu.available() and \
            (rule is None or fused_cpu.supports(rule)):
        return 'fused-cpu'
    if device_type == 'gpu' and (rule is None or cuda.supports(rule)) and cuda.available(rule):
        return 'cuda'
    return 'composed'


def _same(mine, theirs):
    """Whether two sequences hold the same objects, in order."""
    return len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs))


_NO_CODED_BACKEND = ('%s update: 8-bit states (state_bits=8) need a fused backend, and the weight '
                     'on %s has none: %s. Use state_bits=32, or make the fused kernels available')


def _why_composed(context, rule):
    """Why a weight on ``context`` gets the composed backend (for the error above)."""
    if fused_cpu.FORCED_OFF:
        return 'the composed update is forced (MXNAG_FUSED=0 or kernels.set_fused(False))'
    if not cuda.supports(rule):
        return 'rule %r has no kernel (no body in src/rules.h)' % rule.name
    if context.device_type in _CPU_DEVICE_TYPES:
        return 'the fused CPU library is not available (%s)' % fused_cpu.status().get('reason')
    if context.device_type == 'gpu':
        return 'the CUDA kernels are not available (mx.rtc did not compile them)'
    return 'no fused kernel runs on %s' % context.device_type


def all_finite(arrays):
    """A float32 NDArray of one element, on the first array's context: 1 if every element
    of every array is finite, else 0; for ``MxnagOptimizer.set_finite_flag``. Never read
    on the host. On CPU contexts the fused operator ``mxnag_all_finite`` (one threaded
    pass), elsewhere MXNet's ``multi_all_finite``. The arrays share a context."""
    from mxnet import ndarray as nd
    arrays = list(arrays)
    device_type = arrays[0].context.device_type
    if device_type in _CPU_DEVICE_TYPES and not fused_cpu.FORCED_OFF and fused_cpu.available():
        return fused_cpu.all_finite(arrays)
    flag = None
    for start in range(0, len(arrays), 200):  # MXNet's operator takes a few hundred at most
        chunk = arrays[start:start + 200]
        part = nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=True)
        flag = part if flag is None else flag * part
    return flag


def update(rule, weight, grad, state, scalars):
    """One step of ``rule`` for one parameter, in place: ``state`` its tuple of state
    arrays, ``scalars`` every scalar of the rule by name (one number each)."""
    per_tensor = set(rule.per_tensor)
    multi_update(rule, [weight], [grad], [state],
                 {name: [value] if name in per_tensor else value for name, value in scalars.items()})


def _parts(rule, placement, masters, states):
    """The group split for its operator calls: ``{(backend, device type id, device id, has
    a master weight, dtype, 8-bit states): indices of its weights, or None for the whole
    group}``."""
    backends = {}  # (dtype, device type id, device id, master dtype, coded) -> backend
    places = []
    for k, (dtype, context, _) in enumerate(placement):
        master_dtype = masters[k].dtype if masters is not None and masters[k] is not None else None
        coded = len(states[k]) != len(rule.states)  # codes and scales per state
        key = (dtype, context.device_typeid, context.device_id, master_dtype, coded)
        backend = backends.get(key)
        if backend is None:
            backend = backends[key] = _backend(rule, dtype, context.device_type, master_dtype)
            if coded and backend == 'composed':
                raise RuntimeError(_NO_CODED_BACKEND % (rule.name, context, _why_composed(context, rule)))
        # dtype too: an operator call (a CUDA launch) reads its whole group as one type
        places.append((backend, key[1], key[2], master_dtype is not None, dtype, coded))
    if all(place == places[0] for place in places):
        return {places[0]: None}  # None: the whole group
    parts = {}
    for k, place in enumerate(places):
        parts.setdefault(place, []).append(k)
    return parts


def multi_update(rule, weights, grads, states, scalars, *, masters=None, placement=None,
                 steps=None, cache=None):
    """One step of ``rule`` for a group of parameters, in place.

    ``states[k]`` is the tuple of state arrays of ``weights[k]`` (in ``rule.states``'
    order); ``scalars`` maps each of ``rule.shared`` to a number and each of
    ``rule.per_tensor`` to a sequence with one number per weight; ``masters`` None, or
    the float32 master weights of float16 ``weights`` (states then float32, updated with
    the master, and the float16 weight written from it in the same pass); ``placement``
    None, or each weight's ``(dtype, context, shape)`` when the caller knows them; ``steps`` the
    group's ``StepCounts`` (None: the scalars are whole and the step applies); ``cache``
    None, or a dict the caller keeps for this group while its weights and gradients stay
    the same objects (the split and each part's operator inputs are made once while the
    states, step counts and master weights stay the same objects too). The group is split by backend,
    context and dtype; a part on the fused CPU backend is one operator call (the usual
    case: the whole group)."""
    missing = [name for name in rule.shared + rule.per_tensor if name not in scalars]
    if missing:
        raise ValueError('%s update: missing scalars %s' % (rule.name, ', '.join(missing)))
    shared = {name: scalars[name] for name in rule.shared}
    per_tensor = {name: scalars[name] for name in rule.per_tensor}
    count = len(weights)
    if placement is None:
        placement = [(weight.dtype, weight.context, weight.shape) for weight in weights]
    if steps is None:
        steps = _fixed_steps(weights, rule)
    if not (len(grads) == len(states) == len(placement) == len(steps.arrays) == count
            and all(len(v) == count for v in per_tensor.values())
            and (masters is None or len(masters) == count)):
        raise ValueError('%s update: weights, grads, states, masters and every per-parameter '
                         'scalar need one entry per weight (%d)' % (rule.name, count))
    if cache is None:
        cache = {}
    held = [array for state in states for array in state] + list(masters or ()) + list(steps.arrays)
    if not (cache.get('held') is not None and _same(cache['held'], held)
            and cache['forced_off'] == fused_cpu.FORCED_OFF):  # (set_fused changes backends)
        cache.clear()
        cache.update(held=held, forced_off=fused_cpu.FORCED_OFF,
                     parts=_parts(rule, placement, masters, states))
    for part, members in cache['parts'].items():
        backend, has_master = part[0], part[3]
        if members is None:
            pick = list
        else:
            pick = lambda seq: [seq[k] for k in members]  # noqa: E731
        if backend == 'fused-cpu':
            shapes = pick([place[2] for place in placement])
            part_cache = cache.setdefault(part, {})
            run = lambda *args: fused_cpu.update(*args, shapes=shapes, cache=part_cache)  # noqa: E731
        elif backend == 'cuda':
            run = cuda.update
        else:
            run = composed.update
        first = members[0] if members is not None else 0
        flag, table = steps.device_inputs(placement[first][1])
        run(rule, pick(weights), pick(grads), pick(states), pick(masters) if has_master else None,
            shared, {name: pick(values) for name, values in per_tensor.items()},
            pick(steps.arrays), pick(steps.slots), flag, table)
