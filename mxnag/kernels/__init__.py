"""How one optimizer step is computed, and on which backend.

The optimizers compute every step-dependent scalar on the host and call the functions
here, which pick, per group of parameters:

* ``fused-cpu``: the single-pass C++/OpenMP operators of ``src/fused_cpu.cc``, built and
  cached on first use (``build``) and loaded into MXNet (``fused_cpu``); float32 and
  float64 weights, float16 weights with float32 master weights; a whole group per call;
* ``cuda``: the same update as a CUDA kernel (``src/fused_cuda.cu``) compiled at run time
  by ``mx.rtc`` for weights on a GPU context;
* ``composed``: NDArray operators (``composed``), on any context and dtype: the fallback
  when nothing is compiled (no compiler, a failed build, ``MXNAG_FUSED=0``).

Every backend implements the maths of ``composed`` and agrees with the float64
references of the tests to float32 rounding. Nothing here synchronises with the host.
Only ``mxnet.ndarray`` is imported at module level (a kvstore server unpickling an
optimizer has no more); the library and ``mx.rtc`` are loaded on the first update.
"""
import numpy

from . import composed, cuda, fused_cpu

__all__ = ['adanag_update', 'adan_update', 'multi_adanag_update', 'multi_adan_update',
           'backend_for']

ADANAG_SHARED = ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'epsilon')
ADANAG_PER_TENSOR = ('wd_into_grad', 'weight_scale', 'grad_coef', 'mean_coef', 'var_scale')
ADAN_SHARED = ('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'beta3', 'epsilon')
ADAN_PER_TENSOR = ('first_step', 'mean_coef', 'diff_coef', 'sq_scale', 'weight_scale',
                   'weight_divisor')
_NAMES = {'adanag': (ADANAG_SHARED, ADANAG_PER_TENSOR), 'adan': (ADAN_SHARED, ADAN_PER_TENSOR)}
_COMPOSED = {'adanag': composed.adanag_update, 'adan': composed.adan_update}
_FUSED_DTYPES = (numpy.float32, numpy.float64)
# Host memory, as MXNet names it: a kvstore keeps its copies of the weights (which
# update_on_kvstore updates) on cpu_pinned, DataLoader workers share cpu_shared arrays.
_CPU_DEVICE_TYPES = ('cpu', 'cpu_pinned', 'cpu_shared')


def backend_for(weight, master=None) -> str:
    """``'fused-cpu'``, ``'cuda'`` or ``'composed'``: the backend that updates ``weight``
    (with float32 ``master`` weight for float16 multi-precision)."""
    return _backend(weight.dtype, weight.context.device_type,
                    None if master is None else master.dtype, fused_cpu.forced_off())


def _backend(dtype, device_type, master_dtype, forced_off):
    """``backend_for`` from what it looks at (MXNet's ``dtype`` is a NumPy scalar type)."""
    if master_dtype is not None:
        fusable = dtype is numpy.float16 and master_dtype is numpy.float32
    else:
        fusable = dtype in _FUSED_DTYPES
    if not fusable or forced_off:
        return 'composed'
    if device_type in _CPU_DEVICE_TYPES and fused_cpu.available():
        return 'fused-cpu'
    if device_type == 'gpu' and cuda.available():
        return 'cuda'
    return 'composed'


def adanag_update(weight, grad, mean, var, *, rescale_grad, clip_gradient, wd_into_grad,
                  weight_scale, beta1, beta2, epsilon, grad_coef, mean_coef, var_scale):
    """One AdaNAG step of one parameter, in place; the arguments and maths of
    ``composed.adanag_update``, on the fastest backend available."""
    multi_adanag_update(
        [weight], [grad], [(mean, var)], rescale_grad=rescale_grad, clip_gradient=clip_gradient,
        beta1=beta1, beta2=beta2, epsilon=epsilon, wd_into_grad=[wd_into_grad],
        weight_scale=[weight_scale], grad_coef=[grad_coef], mean_coef=[mean_coef],
        var_scale=[var_scale])


def adan_update(weight, grad, mean, diff_mean, sq_mean, prev_grad, *, rescale_grad,
                clip_gradient, first_step, beta1, beta2, beta3, epsilon, mean_coef,
                diff_coef, sq_scale, weight_scale, weight_divisor):
    """One Adan step of one parameter, in place; the arguments and maths of
    ``composed.adan_update``, on the fastest backend available."""
    multi_adan_update(
        [weight], [grad], [(mean, diff_mean, sq_mean, prev_grad)], rescale_grad=rescale_grad,
        clip_gradient=clip_gradient, beta1=beta1, beta2=beta2, beta3=beta3, epsilon=epsilon,
        first_step=[first_step], mean_coef=[mean_coef], diff_coef=[diff_coef],
        sq_scale=[sq_scale], weight_scale=[weight_scale], weight_divisor=[weight_divisor])


def multi_adanag_update(weights, grads, states, *, masters=None, placement=None, rescale_grad,
                        clip_gradient, beta1, beta2, epsilon, wd_into_grad, weight_scale,
                        grad_coef, mean_coef, var_scale):
    """One AdaNAG step for a group of parameters, in place.

    ``states[k]`` is ``(mean, var)`` of ``weights[k]``; ``masters`` None, or the float32
    master weights of float16 ``weights`` (states then float32, updated with the master,
    and the float16 weight written from it in the same pass). ``rescale_grad``,
    ``clip_gradient`` and the betas are the group's; the other coefficients are sequences,
    one value per parameter. A group on the fused CPU backend is one operator call.
    ``placement``: None, or each weight's ``(dtype, context)`` when the caller knows them.
    """
    _multi_update('adanag', weights, grads, states, masters, placement, locals())


def multi_adan_update(weights, grads, states, *, masters=None, placement=None, rescale_grad,
                      clip_gradient, beta1, beta2, beta3, epsilon, first_step, mean_coef,
                      diff_coef, sq_scale, weight_scale, weight_divisor):
    """One Adan step for a group of parameters, in place; ``states[k]`` is
    ``(mean, diff_mean, sq_mean, prev_grad)``; otherwise as ``multi_adanag_update``
    (``first_step`` per parameter: its previous gradient is taken to be the current one)."""
    _multi_update('adan', weights, grads, states, masters, placement, locals())


def _multi_update(algorithm, weights, grads, states, masters, placement, arguments):
    """Split the group by backend, context and dtype, and run each part on its backend (a
    group on one backend, context and dtype, the usual case, goes on whole)."""
    shared_names, tensor_names = _NAMES[algorithm]
    shared = {name: arguments[name] for name in shared_names}
    per_tensor = {name: arguments[name] for name in tensor_names}
    count = len(weights)
    if placement is None:
        placement = [(weight.dtype, weight.context) for weight in weights]
    if not (len(grads) == len(states) == len(placement) == count
            and all(len(v) == count for v in per_tensor.values())
            and (masters is None or len(masters) == count)):
        raise ValueError('%s update: weights, grads, states, masters and every per-parameter '
                         'coefficient need one entry per weight (%d)' % (algorithm, count))
    forced_off = fused_cpu.forced_off()
    backends = {}  # (dtype, device type id, device id, master dtype) -> backend
    places = []  # per weight: (backend, device type id, device id, has a master weight)
    for k, (dtype, context) in enumerate(placement):
        master_dtype = masters[k].dtype if masters is not None and masters[k] is not None else None
        key = (dtype, context.device_typeid, context.device_id, master_dtype)
        backend = backends.get(key)
        if backend is None:
            backend = backends[key] = _backend(dtype, context.device_type, master_dtype, forced_off)
        # dtype too: an operator call (a CUDA launch) reads its whole group as one type
        places.append((backend, key[1], key[2], master_dtype is not None, dtype))
    if all(place == places[0] for place in places):
        parts = {places[0]: None}  # None: the whole group
    else:
        parts = {}
        for k, place in enumerate(places):
            parts.setdefault(place, []).append(k)
    for (backend, _, _, has_master, _), members in parts.items():
        if members is None:
            pick = list
        else:
            pick = lambda seq: [seq[k] for k in members]  # noqa: E731
        if backend == 'fused-cpu':
            run = fused_cpu.update
        elif backend == 'cuda':
            run = cuda.update
        else:
            run = _composed_update
        run(algorithm, pick(weights), pick(grads), pick(states), pick(masters) if has_master else None,
            shared, {name: pick(values) for name, values in per_tensor.items()})


def _composed_update(algorithm, weights, grads, states, masters, shared, per_tensor):
    """The NDArray fallback, one parameter at a time; float16 with master weights as
    MXNet's base class does it (cast the gradient, update the master, cast back)."""
    from mxnet import ndarray as nd
    step = _COMPOSED[algorithm]
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        coefs = dict(shared, **{name: values[k] for name, values in per_tensor.items()})
        if masters is None:
            step(weight, grad, *state, **coefs)
        else:
            step(masters[k], grad.astype(numpy.float32), *state, **coefs)
            nd.cast(masters[k], dtype=weight.dtype, out=weight)
