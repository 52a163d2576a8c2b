"""The composed backend: an optimizer's readable step (``rule.step``, NDArray operators),
one parameter at a time. Correct on every context and dtype, and asynchronous (no value
ever comes back to the host), but one pass over memory per operator."""
import numpy


def update(rule, weights, grads, states, masters, shared, per_tensor):
    """One step of ``rule`` for a group of parameters, in place (the arguments of
    ``fused_cpu.update``); float16 with master weights as MXNet's base class does it
    (cast the gradient, update the master, cast back)."""
    from mxnet import ndarray as nd
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        scalars = dict(shared, **{name: values[k] for name, values in per_tensor.items()})
        if masters is None:
            rule.step(weight, grad, *state, **scalars)
        else:
            rule.step(masters[k], grad.astype(numpy.float32), *state, **scalars)
            nd.cast(masters[k], dtype=weight.dtype, out=weight)
