"""What every mxnag optimizer shares: argument checks, per-parameter step counts,
state allocation on the weight's context, and the gradient preprocessing of MXNet.

Everything here is imported when a distributed kvstore server unpickles an mxnag
optimizer, i.e. while ``mxnet`` itself is only half imported (see
``kvstore_server.py``): only ``mxnet.optimizer`` and ``mxnet.ndarray`` may be touched
at module level.
"""
import inspect
import numbers

import numpy
from mxnet import ndarray as nd
from mxnet.optimizer import Optimizer

# The keyword arguments that ``mx.optimizer.Optimizer.__init__`` takes in this MXNet.
BASE_ARGUMENTS = tuple(
    name for name in inspect.signature(Optimizer.__init__).parameters if name != 'self')


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


class MxnagOptimizer(Optimizer):
    """Base of the mxnag optimizers: a ``mx.optimizer.Optimizer`` that checks its
    arguments when made and keeps everything it derives from the step count per parameter.

    Subclasses define ``state_names`` (one zero-initialised array of the weight's shape
    and dtype each), and ``_update_one(index, t, weight, grad, states)``.
    """
    state_names = ()

    def __init__(self, learning_rate=None, **kwargs):
        owner = type(self).__name__
        unknown = sorted(set(kwargs) - set(BASE_ARGUMENTS))
        if unknown:
            raise TypeError('%s got an unexpected keyword argument %r; it takes its own '
                            'hyperparameters and %s' % (owner, unknown[0], ', '.join(BASE_ARGUMENTS)))
        if learning_rate is None:
            scheduler = kwargs.get('lr_scheduler')
            learning_rate = scheduler.base_lr if scheduler is not None else self.default_learning_rate
        learning_rate = check_number(owner, 'learning_rate', learning_rate, 0.0)
        kwargs['wd'] = check_number(owner, 'wd', kwargs.get('wd', 0.0), 0.0)
        kwargs['rescale_grad'] = check_number(
            owner, 'rescale_grad', kwargs.get('rescale_grad', 1.0), 0.0, low_open=True)
        clip = kwargs.get('clip_gradient')
        if clip is not None:
            kwargs['clip_gradient'] = check_number(owner, 'clip_gradient', clip, 0.0, low_open=True)
        begin = kwargs.get('begin_num_update', 0)
        if isinstance(begin, bool) or not isinstance(begin, numbers.Integral) or begin < 0:
            raise ValueError('%s: begin_num_update must be an integer >= 0, got %r' % (owner, begin))
        if 'multi_precision' in kwargs:
            kwargs['multi_precision'] = check_bool(owner, 'multi_precision', kwargs['multi_precision'])
        super().__init__(learning_rate=learning_rate, **kwargs)

    # -- states ---------------------------------------------------------------
    def create_state(self, index, weight):
        _check_dense(self, index, weight, 'weight')
        return tuple(nd.zeros(weight.shape, ctx=weight.context, dtype=weight.dtype)
                     for _ in self.state_names)

    # -- one step -------------------------------------------------------------
    def update(self, index, weight, grad, state):
        _check_dense(self, index, weight, 'weight')
        _check_dense(self, index, grad, 'gradient')
        self._update_count(index)
        t = self._index_update_count[index]
        self._update_one(index, t, weight, grad, state)

    def _is_first_step(self, t):
        """Whether step ``t`` is this parameter's first on the current device."""
        return t == self.begin_num_update + 1

    def _update_one(self, index, t, weight, grad, state):
        raise NotImplementedError


def _check_dense(optimizer, index, array, what):
    if array.stype != 'default':
        param = optimizer.param_dict.get(index)
        name = param.name if param is not None else optimizer.idx2name.get(index, index)
        raise TypeError('%s does not support %s %s (parameter %r); use dense gradients '
                        '(e.g. sparse_grad=False)' % (type(optimizer).__name__, array.stype, what, name))
