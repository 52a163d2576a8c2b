"""What a run is made of, by name: its contexts (``cpu``, ``gpu:0,gpu:1``), any registered
optimizer with its hyperparameters (``--opt-arg name=value``), and its learning-rate
schedule. Each raises ``MxnagError`` naming the setting that is wrong."""
import ast

import mxnet as mx

from .. import optim  # noqa: F401  (registers the mxnag optimizers)
from ..errors import MxnagError

SCHEDULES = ('constant', 'step', 'cosine')


def parse_contexts(spec):
    """``'cpu'``, ``'cpu:0,cpu:1'``, ``'gpu:0,gpu:1'`` -> list of ``mx.Context``."""
    contexts = []
    for part in (p.strip() for p in str(spec).split(',')):
        kind, _, index = part.partition(':')
        if kind not in ('cpu', 'gpu') or (index and not index.isdigit()):
            raise MxnagError('ctx: %r is not like cpu, cpu:1 or gpu:0,gpu:1' % part, ('ctx',))
        ctx = mx.Context(kind, int(index or 0))
        if kind == 'gpu' and ctx.device_id >= mx.context.num_gpus():
            raise MxnagError('ctx: %s does not exist (this machine has %d GPUs)'
                             % (part, mx.context.num_gpus()), ('ctx',))
        if ctx in contexts:
            raise MxnagError('ctx: %s given twice' % part, ('ctx',))
        contexts.append(ctx)
    return contexts


def parse_opt_args(opt_arg):
    """``['beta2=0.99', 'decoupled_wd=False']`` -> ``{'beta2': 0.99, 'decoupled_wd': False}``."""
    out = {}
    for pair in opt_arg or ():
        key, sep, value = pair.partition('=')
        if not sep or not key.strip().isidentifier():
            raise MxnagError('opt_arg: %r is not like name=value' % pair, ('opt_arg',))
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def make_lr_scheduler(lr_schedule, base_lr, steps_per_epoch, epochs, warmup_epochs=0.0,
                      lr_step_epochs=(), lr_factor=0.1):
    """An ``mx.lr_scheduler`` (or None for a constant rate): ``constant``, ``step``
    (multiply by ``lr_factor`` at each of ``lr_step_epochs``) or ``cosine`` (to 0 at the
    end), each after ``warmup_epochs`` of linear warm-up from 0."""
    if lr_schedule not in SCHEDULES:
        raise MxnagError('lr_schedule: %r is not one of %s' % (lr_schedule, ', '.join(SCHEDULES)),
                         ('lr_schedule',))
    if warmup_epochs < 0 or warmup_epochs > epochs:
        raise MxnagError('warmup_epochs: must be in [0, epochs=%d], got %r' % (epochs, warmup_epochs),
                         ('warmup_epochs',))
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if lr_schedule == 'cosine':
        return mx.lr_scheduler.CosineScheduler(max(epochs * steps_per_epoch, warmup + 1), base_lr,
                                               0.0, warmup_steps=warmup)
    if lr_schedule == 'step':
        steps = [int(e * steps_per_epoch) for e in lr_step_epochs]
        if not steps or steps != sorted(set(steps)) or steps[0] < 1:
            raise MxnagError('lr_step_epochs: need increasing epochs > 0, got %r' % (lr_step_epochs,),
                             ('lr_step_epochs',))
        return mx.lr_scheduler.MultiFactorScheduler(steps, lr_factor, base_lr, warmup_steps=warmup)
    if warmup:
        return mx.lr_scheduler.FactorScheduler(10 ** 12, 1.0, base_lr=base_lr, warmup_steps=warmup)
    return None


def make_optimizer(optimizer, learning_rate, opt_args=None, lr_scheduler=None):
    """Any registered optimizer by name, its arguments checked: MxnagError if unknown."""
    key = str(optimizer).lower()
    registry = mx.optimizer.Optimizer.opt_registry
    if key not in registry:
        raise MxnagError('optimizer: unknown %r; registered: %s'
                         % (optimizer, ', '.join(sorted(registry))), ('optimizer',))
    kwargs = dict(opt_args or {})
    if learning_rate is not None:  # None: the optimizer's own default
        kwargs['learning_rate'] = learning_rate
    if lr_scheduler is not None:
        kwargs['lr_scheduler'] = lr_scheduler
    try:
        return mx.optimizer.create(key, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise MxnagError('optimizer %s: %s' % (key, err), ('optimizer',)) from None
