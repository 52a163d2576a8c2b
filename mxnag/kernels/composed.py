"""The composed backend: an optimizer's readable step (``rule.step``, NDArray operators),
one parameter at a time. Correct on every context and dtype, and asynchronous (no value
ever comes back to the host), but one pass over memory per operator.

The step count is applied as the fused backends apply it, with NDArray operators: the
count read from one slot plus the flag is written to the other, the step scalars are the
multipliers times the table's row at the new count, and the step runs on copies of the
weight and states that replace them only where the flag is 1 (a skipped step leaves
them untouched, NaN gradients included)."""
import numpy


def update(rule, weights, grads, states, masters, shared, per_tensor, step_arrays, slots, flag,
           table):
    """One step of ``rule`` for a group of parameters, in place (the arguments of
    ``fused_cpu.update``); float16 with master weights as MXNet's base class does it
    (cast the gradient, update the master, cast back)."""
    from mxnet import ndarray as nd
    applies = flag != 0  # float32 (1,): 1 or 0
    increment = nd.cast(applies, dtype=numpy.float64)
    last_row = table.shape[0] - 1
    for k, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        count = step_arrays[k][slots[k]:slots[k] + 1] + increment
        step_arrays[k][1 - slots[k]:2 - slots[k]] = count
        if rule.step_scalars:
            row = nd.take(table, nd.clip(count - 1, 0, last_row), mode='clip')  # (1, columns)
        target = weight if masters is None else masters[k]
        scalars = dict(shared, **{name: values[k] for name, values in per_tensor.items()})
        for j, name in enumerate(rule.step_scalars):
            factor = nd.cast(row[:, j], dtype=target.dtype) * scalars[name]
            scalars[name] = nd.broadcast_like(factor.reshape((1,) * target.ndim), target)
        new_target = target.copy()
        new_states = [s.copy() for s in state]
        rule.step(new_target, grad if masters is None else grad.astype(numpy.float32),
                  *new_states, **scalars)
        keep = nd.broadcast_like(nd.cast(applies, dtype=target.dtype).reshape((1,) * target.ndim),
                                 target)
        nd.where(keep, new_target, target, out=target)
        for old, new in zip(state, new_states):
            nd.where(keep, new, old, out=old)
        if masters is not None:
            nd.cast(masters[k], dtype=weight.dtype, out=weight)
