"""What every mxnag optimizer shares: the declaration of its step (``StepRule``),
argument checks, per-parameter step counts, state allocation on the weight's context,
and MXNet's gradient preprocessing.

Everything here is imported when a distributed kvstore server unpickles an mxnag
optimizer, i.e. while ``mxnet`` itself is only half imported (see
``kvstore_server.py``): only ``mxnet.optimizer`` and ``mxnet.ndarray`` may be touched
at module level.
"""
import inspect
import numbers
import os
import sys
from typing import Callable, NamedTuple, Tuple

import numpy
from mxnet import ndarray as nd
from mxnet.optimizer import Optimizer

from .. import kernels


class StepRule(NamedTuple):
    """The maths of one optimizer step, declared once, as every backend reads it.

    The optimizer computes the scalars on the host: ``_shared_coefficients()`` (those
    every parameter shares), ``_scalars(lr, wd)`` (each parameter's) and
    ``_step_factors(t)`` (what depends on the parameter's step count ``t``). A scalar
    named in ``step_scalars`` is ``_scalars``' value (a multiplier, e.g. the learning
    rate) times column j of ``_step_factors(t)``, taken on the device at the step count
    the device keeps: a step whose gradients are not finite is skipped there without
    advancing ``t``, and the host never reads it. ``step`` applies the scalars with NDArray
    operators, in place: ``step(weight, grad, *states, **scalars)`` (the readable step,
    and the composed backend; a step scalar may arrive as an NDArray of the weight's
    shape). The fused backends run the same maths: the C++ operator
    ``mxnag_<name>_update`` (src/fused_cpu.cc) and the CUDA device function
    ``mxnag_<name>_body`` (src/fused_cuda.cu), which take the states and scalars in the
    orders given here; an optimizer whose maths is a rule that exists (NAdamW is
    AdaNAG's rule with other scalars) needs no kernel of its own, and a rule with no
    kernel runs composed."""
    name: str
    states: Tuple[str, ...]        # state arrays, each of the weight's shape
    shared: Tuple[str, ...]        # scalars every parameter of a group shares
    per_tensor: Tuple[str, ...]    # scalars of each parameter
    flags: Tuple[str, ...]         # per-tensor scalars that are booleans (ints in CUDA)
    step_scalars: Tuple[str, ...]  # per-tensor scalars scaled by _step_factors(t), in order
    step: Callable
    # states that are never negative (second moments): with state_bits=8 they are stored
    # as codes of their square roots (src/state_codes.h); the kernel's body says the same
    non_negative: Tuple[str, ...] = ()


def preprocess_grad(weight, grad, rescale_grad, wd_into_grad, clip_gradient):
    """``clip(rescale_grad * grad + wd_into_grad * weight)`` as a new array, MXNet's order.
    ``clip_gradient`` None leaves the gradient unclipped."""
    g = grad * rescale_grad
    if wd_into_grad:
        g = g + weight * wd_into_grad
    if clip_gradient is not None:
        # maximum/minimum, not nd.clip: clip's bounds are float32 attributes, which refuse
        # 1e300 or 1e-42 (the fused kernels take any normal double); NaN passes either way
        g = nd.minimum(nd.maximum(g, -clip_gradient), clip_gradient)
    return g

# The keyword arguments that ``mx.optimizer.Optimizer.__init__`` takes in this MXNet.
BASE_ARGUMENTS = tuple(
    name for name in inspect.signature(Optimizer.__init__).parameters if name != 'self')
# Parameters per fused update call by default (MXNAG_AGGREGATE_NUM overrides it).
DEFAULT_AGGREGATE_NUM = 32
# state_bits=8: tensors with fewer elements keep float32 states (bitsandbytes' default);
# every CODE_BLOCK elements of a coded state share one float32 scale (src/state_codes.h).
MIN_8BIT_SIZE = 4096
CODE_BLOCK = 256
STATE_BITS = (32, 8)
# Pairs of (weight, gradient) arrays remembered per parameter: one per device it lives on.
_ARRAYS_PER_INDEX = 8


def check_number(owner, name, value, low=None, high=None, low_open=False, high_open=False):
    """Return ``float(value)`` or raise naming ``owner``'s argument ``name`` and its range.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. Booleans and
    non-numbers raise ``TypeError``; NaN and values outside the range raise ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError('%s: %s must be a real number, got %r' % (owner, name, value))
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if value != value or too_low or too_high:
        lo = '-inf' if low is None else repr(low)
        hi = 'inf' if high is None else repr(high)
        interval = '%s%s, %s%s' % ('(' if low_open or low is None else '[', lo,
                                   hi, ')' if high_open or high is None else ']')
        raise ValueError('%s: %s must be in %s, got %r' % (owner, name, interval, value))
    return value


def check_bool(owner, name, value):
    if not isinstance(value, (bool, numpy.bool_)):
        raise TypeError('%s: %s must be True or False, got %r' % (owner, name, value))
    return bool(value)


def check_beta(owner, name, value):
    """A decay rate: in [0, 1)."""
    return check_number(owner, name, value, 0.0, 1.0, high_open=True)


class Hyperparameter(NamedTuple):
    """One hyperparameter of an optimizer, declared once (``MxnagOptimizer.hyperparameters``):
    its check, its line in the class docstring and the tests' valid and invalid values
    derive from it."""
    name: str
    default: object
    domain: str   # a key of DOMAINS
    meaning: str


# domain -> (what the docstring says, the check)
DOMAINS = {
    'decay': ('float in [0, 1)', check_beta),
    'positive': ('float > 0', lambda owner, name, value: check_number(owner, name, value, 0.0,
                                                                      low_open=True)),
    'non-negative': ('float >= 0', lambda owner, name, value: check_number(owner, name, value, 0.0)),
    'bool': ('bool', check_bool),
}

# The arguments every mxnag optimizer takes besides its hyperparameters, for the docstrings.
_COMMON_DOC = """state_bits : 32 or 8, default 32. 8 keeps each state as 8-bit codes with one float32
        scale per 256 elements (a quarter of the memory; ``min_8bit_size``), on the fused
        backends (CPU operator, CUDA kernels); see mxnag/kernels/src/state_codes.h.
    min_8bit_size : int >= 0, default 4096. Tensors with fewer elements keep float32 states.
    aggregate_num : int >= 0, default ``$MXNAG_AGGREGATE_NUM`` or 32. Parameters MXNet's
        Updater (and so gluon.Trainer) hands over per update call; on the fused CPU path a
        group is one operator call. 0 updates one parameter per call.
    **kwargs : the arguments of ``mx.optimizer.Optimizer`` (``wd``, ``rescale_grad``,
        ``clip_gradient``, ``lr_scheduler``, ``multi_precision``, ``param_idx2name``,
        ``begin_num_update``, ...). ``multi_precision=True`` keeps float32 master weights
        and states for float16 weights."""


class MxnagOptimizer(Optimizer):
    """Base of the mxnag optimizers: a ``mx.optimizer.Optimizer`` that checks its
    arguments when made and keeps everything it derives from the step count per parameter.

    A subclass declares its step (``rule``, a ``StepRule``: its states, the names of its
    scalars, the readable step) and computes the scalars: ``_scalars(lr, wd)`` (one
    parameter's) and ``_step_factors(t)`` (those that depend on its step ``t``); the ones
    every parameter shares (``rule.shared``) are its attributes of those names. ``mxnag.kernels`` runs the
    rule on the fastest backend.

    Step counts live on the device, beside the states (a float64 array of two slots per
    parameter, read and written alternately), so that a step can be skipped there:
    ``set_finite_flag(flag)`` hands over an NDArray (MXNet's ``multi_all_finite`` of the
    gradients, say) that the update reads; where it is 0 the weights, states and step
    counts stay as they are, as if the step had not been attempted, with no host read.
    The learning-rate schedule counts attempted steps (``num_update``), as PyTorch's
    schedulers do.

    ``aggregate_num`` (default ``$MXNAG_AGGREGATE_NUM`` or 32; 0 turns grouping off) is
    how many parameters MXNet's Updater hands over per call; each group is one fused
    operator call, as MXNet's SGD does with ``multi_sgd_mom_update``.
    """
    rule: StepRule = None
    hyperparameters: Tuple[Hyperparameter, ...] = ()

    def __init_subclass__(cls, **kwargs):
        """The docstring's ``{hyperparameters}``: a line per declared hyperparameter and the
        arguments every mxnag optimizer takes."""
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and '{hyperparameters}' in cls.__doc__:
            lines = ['%s : %s, default %r. %s' % (h.name, DOMAINS[h.domain][0], h.default, h.meaning)
                     for h in cls.hyperparameters]
            cls.__doc__ = cls.__doc__.replace('{hyperparameters}', '\n    '.join(lines + [_COMMON_DOC]))

    def __init__(self, *args, aggregate_num=None, state_bits=32, min_8bit_size=MIN_8BIT_SIZE,
                 **kwargs):
        owner = type(self).__name__
        positional = ['learning_rate'] + [h.name for h in self.hyperparameters]
        if len(args) > len(positional):
            raise TypeError('%s takes at most %d positional arguments (%s), got %d'
                            % (owner, len(positional), ', '.join(positional), len(args)))
        for name, value in zip(positional, args):
            if name in kwargs:
                raise TypeError('%s got multiple values for argument %r' % (owner, name))
            kwargs[name] = value
        learning_rate = kwargs.pop('learning_rate', None)
        for h in self.hyperparameters:
            setattr(self, h.name, DOMAINS[h.domain][1](owner, h.name, kwargs.pop(h.name, h.default)))
        if state_bits not in STATE_BITS or isinstance(state_bits, bool):
            raise ValueError('%s: state_bits must be 32 or 8, got %r' % (owner, state_bits))
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, numbers.Integral) \
                or min_8bit_size < 0:
            raise ValueError('%s: min_8bit_size must be an integer >= 0, got %r'
                             % (owner, min_8bit_size))
        unknown = sorted(set(kwargs) - set(BASE_ARGUMENTS))
        if unknown:
            others = [name for name in BASE_ARGUMENTS if name not in ('learning_rate', 'sym', 'param_dict')]
            raise TypeError('%s got an unexpected keyword argument %r; it takes learning_rate, %s'
                            'aggregate_num, state_bits, min_8bit_size and %s'
                            % (owner, unknown[0], ''.join(h.name + ', ' for h in self.hyperparameters),
                               ', '.join(others)))
        if learning_rate is None:
            scheduler = kwargs.get('lr_scheduler')
            learning_rate = scheduler.base_lr if scheduler is not None else self.default_learning_rate
        learning_rate = check_number(owner, 'learning_rate', learning_rate, 0.0)
        kwargs['wd'] = check_number(owner, 'wd', kwargs.get('wd', 0.0), 0.0)
        kwargs['rescale_grad'] = check_number(
            owner, 'rescale_grad', kwargs.get('rescale_grad', 1.0), 0.0, low_open=True)
        clip = kwargs.get('clip_gradient')
        if clip is not None:  # a normal double: MXNet's scalar attributes refuse subnormals
            kwargs['clip_gradient'] = check_number(owner, 'clip_gradient', clip, sys.float_info.min)
        begin = kwargs.get('begin_num_update', 0)
        if isinstance(begin, bool) or not isinstance(begin, numbers.Integral) or begin < 0:
            raise ValueError('%s: begin_num_update must be an integer >= 0, got %r' % (owner, begin))
        if 'multi_precision' in kwargs:
            kwargs['multi_precision'] = check_bool(owner, 'multi_precision', kwargs['multi_precision'])
        aggregate_num = default_aggregate_num(owner) if aggregate_num is None else aggregate_num
        if isinstance(aggregate_num, bool) or not isinstance(aggregate_num, numbers.Integral) \
                or aggregate_num < 0:
            raise ValueError('%s: aggregate_num must be an integer >= 0, got %r' % (owner, aggregate_num))
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.aggregate_num = int(aggregate_num)  # MXNet's Updater groups updates when > 0
        self.state_bits = int(state_bits)
        self.min_8bit_size = int(min_8bit_size)
        self._init_device_side()

    def _init_device_side(self):
        """What lives on devices and is made again after unpickling: the arrays a
        parameter comes with (``_placement``), the step-factor tables and flags."""
        self._arrays = {}  # index -> [(weight, gradient, (dtype, context)), ...]
        self._plans = {}  # (indices, device) -> (weights, grads, placement, kernels' cache)
        self._factor_rows = []  # _step_factors(t) for t = 1, 2, ... (host, float64)
        self._tables = {}  # context key -> (rows, float64 NDArray (rows, len(step_scalars)))
        self._flags = {}  # context key -> float32 NDArray (1,): 0 skips the step
        self._flag_source = None

    # -- skipping non-finite steps on the device ----------------------------------
    def set_finite_flag(self, flag):
        """Use ``flag`` (a float32 NDArray of one element, e.g.
        ``nd.multi_all_finite(*grads, num_arrays=len(grads))``, or a list of them, one per
        context) for the updates that follow: where it is 0 they leave weights, states
        and step counts untouched. None: every step applies (the default). Nothing is
        read on the host; a context without its own flag gets a copy of the first."""
        self._flags = {}
        self._flag_source = None
        if flag is None:
            return
        flags = list(flag) if isinstance(flag, (list, tuple)) else [flag]
        for array in flags:
            self._flags[_context_key(array.context)] = array
        self._flag_source = flags[0]

    def _flag_for(self, context):
        key = _context_key(context)
        flag = self._flags.get(key)
        if flag is None:
            flag = (nd.ones((1,), ctx=context) if self._flag_source is None
                    else self._flag_source.as_in_context(context))
            self._flags[key] = flag
        return flag

    def _table_for(self, context, steps):
        """The float64 table of ``_step_factors(t)`` for t = 1 .. at least ``steps`` on
        ``context`` (rows grow by doubling: one upload every so many steps)."""
        key = _context_key(context)
        rows, table = self._tables.get(key, (0, None))
        if rows < steps:
            rows = max(steps, 2 * rows, 1024)
            factors = self._factor_rows
            while len(factors) < rows:
                factors.append(tuple(self._step_factors(len(factors) + 1)))
            values = numpy.array(factors[:rows], dtype=numpy.float64).reshape(rows, -1)
            if values.shape[1] == 0:  # no step scalars: one unread column (MXNet has no 0-wide arrays)
                values = numpy.zeros((rows, 1))
            table = nd.array(values, ctx=context, dtype=numpy.float64)
            self._tables[key] = (rows, table)
        return table

    # -- states ---------------------------------------------------------------
    def create_state(self, index, weight):
        """The rule's states and, last, the parameter's step count on the device (float64,
        two slots; ``begin_num_update`` before the first step, as MXNet's optimizers count).

        Each state is zeros of the weight's shape and dtype; with ``state_bits=8``, for a
        float32 weight (a float16 weight's float32 master under ``multi_precision``) of at
        least ``min_8bit_size`` elements, two arrays instead: its 8-bit codes (uint8, the
        weight's shape) and their scales (float32, one per block of 256 elements), all
        zero (code 0 is 0)."""
        _check_dense(self, index, weight, 'weight')
        context = weight.context
        if self.coded(weight):
            blocks = -(-weight.size // CODE_BLOCK)
            states = []
            for _ in self.rule.states:
                states += [nd.zeros(weight.shape, ctx=context, dtype=numpy.uint8),
                           nd.zeros((blocks,), ctx=context, dtype=numpy.float32)]
        else:
            states = [nd.zeros(weight.shape, ctx=context, dtype=weight.dtype)
                      for _ in self.rule.states]
        return tuple(states) + \
            (nd.full((2,), self.begin_num_update, ctx=context, dtype=numpy.float64),)

    def grow_state(self, state, shape):
        """``state`` (``create_state``'s) for the same parameter grown by rows to ``shape``
        (the old rows first, as an output layer given more classes): each state array of
        the old shape copied into zeros of the new one; 8-bit codes likewise, their scales
        extended by zeros (the old elements keep their flat positions, so their blocks and
        scales; new elements read 0); the step count as it is."""
        def grown(array):
            out = nd.zeros(shape, ctx=array.context, dtype=array.dtype)
            out[:array.shape[0]] = array
            return out
        items = list(state[:-1])
        if len(items) == len(self.rule.states):
            return tuple(grown(a) for a in items) + (state[-1],)
        blocks = -(-int(numpy.prod(shape)) // CODE_BLOCK)
        out = []
        for codes, scales in zip(items[::2], items[1::2]):
            wider = nd.zeros((blocks,), ctx=scales.context, dtype=scales.dtype)
            wider[:scales.shape[0]] = scales
            out += [grown(codes), wider]
        return tuple(out) + (state[-1],)

    def coded(self, weight) -> bool:
        """Whether ``weight``'s states are 8-bit codes (``state_bits=8``, float32, at least
        ``min_8bit_size`` elements)."""
        return (getattr(self, 'state_bits', 32) == 8 and weight.dtype is numpy.float32
                and weight.size >= self.min_8bit_size)

    # -- one step -------------------------------------------------------------
    def update(self, index, weight, grad, state):
        """One step of one parameter, or of a group (tuples of indices, weights, grads
        and states, as MXNet's Updater passes them when ``aggregate_num > 0``)."""
        self._step(index, weight, grad, state, use_master=False)

    def update_multi_precision(self, index, weight, grad, state):
        """``update``; float16 weights with ``multi_precision`` update their float32
        master weight and write the float16 weight in the same pass (MXNet's base class
        would cast in separate passes)."""
        self._step(index, weight, grad, state, use_master=self.multi_precision)

    def _step(self, index, weight, grad, state, use_master):
        if isinstance(index, (tuple, list)):
            indices, weights, grads, states = list(index), list(weight), list(grad), list(state)
        else:
            indices, weights, grads, states = [index], [weight], [grad], [state]
        context = weights[0].context
        key = (tuple(indices), context.device_typeid, context.device_id)  # a plan per device
        plan = self._plans.get(key)
        if plan is None or not (_same(plan[0], weights) and _same(plan[1], grads)):
            # what is made once per group while MXNet passes the same arrays (a Trainer
            # does): each weight's placement and the kernels' cache
            placement = [self._placement(i, w, g) for i, w, g in zip(indices, weights, grads)]
            plan = (list(weights), list(grads), placement, {})
            if len(self._plans) >= _PLANS:
                self._plans.clear()
            self._plans[key] = plan
        placement = plan[2]
        self._update_count(indices)
        masters = None
        if use_master and any(place[0] is numpy.float16 for place in placement):
            half = [place[0] is numpy.float16 for place in placement]
            masters = [s[0] if h else None for h, s in zip(half, states)]
            states = [s[1] if h else s for h, s in zip(half, states)]
        lrs, wds = self._get_lrs(indices), self._get_wds(indices)
        known = {}  # (lr, wd) -> scalars: a group's parameters mostly share them
        per_param = []
        for lr, wd in zip(lrs, wds):
            key = (lr, wd)
            if key not in known:
                known[key] = self._scalars(lr, wd)
            per_param.append(known[key])
        scalars = self._shared_coefficients()
        scalars.update((name, [c[name] for c in per_param]) for name in per_param[0])
        # attempted steps of each parameter (on this device) decide which slot of its
        # step count is read; the count itself is on the device
        counts = [self._index_update_count[i] for i in indices]
        steps = kernels.StepCounts(
            arrays=[s[-1] for s in states],
            slots=[(count - self.begin_num_update - 1) % 2 for count in counts],
            device_inputs=lambda context: (self._flag_for(context),
                                           self._table_for(context, max(counts))))
        kernels.multi_update(self.rule, weights, grads, [s[:-1] for s in states], scalars,
                             masters=masters, placement=placement, steps=steps, cache=plan[3])

    def _placement(self, index, weight, grad):
        """(dtype, context, shape) of parameter ``index``'s weight, once its weight and gradient
        are known to be dense. Each is a call into MXNet's library, made once per pair
        of arrays a parameter comes with (a model of 161 parameters asks 644 times a step
        otherwise): a Trainer passes the same arrays every step, one pair per device."""
        known = self._arrays.setdefault(index, [])
        for cached_weight, cached_grad, placement in known:
            if cached_weight is weight and cached_grad is grad:
                return placement
        _check_dense(self, index, weight, 'weight')
        _check_dense(self, index, grad, 'gradient')
        placement = (weight.dtype, weight.context, weight.shape)
        known.insert(0, (weight, grad, placement))
        del known[_ARRAYS_PER_INDEX:]
        return placement

    def __getstate__(self):  # device arrays stay out of pickles (save_states, kvstore servers)
        state = super().__getstate__()
        for name in ('_arrays', '_plans', '_factor_rows', '_tables', '_flags', '_flag_source'):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_device_side()

    # 1 - beta, computed in double here: the kernels compute in float32, where
    # 1 - float32(0.999) is 1.3e-5 off 0.001 (a rule names these in its shared scalars)
    one_minus_beta1 = property(lambda self: 1.0 - self.beta1)
    one_minus_beta2 = property(lambda self: 1.0 - self.beta2)
    one_minus_beta3 = property(lambda self: 1.0 - self.beta3)

    def _shared_coefficients(self):
        """The scalars every parameter of a group shares: each of ``rule.shared`` is the
        optimizer's attribute of that name (``rescale_grad``, ``clip_gradient``, the betas,
        ``epsilon``, ...)."""
        return {name: getattr(self, name) for name in self.rule.shared}

    def _scalars(self, lr, wd):
        """One parameter's per-tensor scalars at learning rate ``lr`` and weight decay
        ``wd``; for a step scalar, its multiplier."""
        raise NotImplementedError

    def _step_factors(self, t):
        """The factors of the step scalars at a parameter's step ``t`` (from 1), in the
        order of ``rule.step_scalars``."""
        raise NotImplementedError


def _same(mine, theirs):
    """Whether two sequences hold the same objects, in order."""
    return len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs))


# Groups whose plans an optimizer keeps (a model's groups are few; more means the arrays
# change, as when a Trainer is rebuilt)
_PLANS = 256


def _context_key(context):
    return (context.device_typeid, context.device_id)


def default_aggregate_num(owner='mxnag'):
    """``$MXNAG_AGGREGATE_NUM`` or DEFAULT_AGGREGATE_NUM."""
    text = os.environ.get('MXNAG_AGGREGATE_NUM')
    if text is None:
        return DEFAULT_AGGREGATE_NUM
    try:
        return int(text)
    except ValueError:
        raise ValueError('%s: MXNAG_AGGREGATE_NUM must be an integer >= 0, got %r'
                         % (owner, text)) from None


def _check_dense(optimizer, index, array, what):
    if array.stype != 'default':
        param = optimizer.param_dict.get(index)
        name = param.name if param is not None else optimizer.idx2name.get(index, index)
        raise TypeError('%s does not support %s %s (parameter %r); use dense gradients '
                        '(e.g. sparse_grad=False)' % (type(optimizer).__name__, array.stype, what, name))
