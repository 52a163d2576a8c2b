"""Every mxnag optimizer, described once for the tests (as PyTorch's OptimizerInfo and
optax's alias table do): its class, its float64 reference, option sets, valid and invalid
hyperparameters, property strategies and the settings the training tests use. Every test
module iterates over ``OPTIMIZERS``; adding an optimizer to mxnag is adding its entry here.

Also the helpers the numeric tests share (bounds, a random problem, MXNet's Updater).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import mxnet as mx
import numpy as np
from hypothesis import strategies as st

import mxnag
import reference
from reference import relative_error

# Over 30 steps float32 rounding moves the displacement w_T - w_0 by a relative 1e-6 to
# 1e-4 (measured: test_optim.py::test_tolerance_separates_rounding_from_mistakes); a
# wrong bias correction, schedule or step count moves it by 1e-2 or more. FLOAT32_BOUND
# sits between the two with a margin of 10x on either side. float64 runs get 1e-9.
FLOAT32_BOUND = 2e-3
FLOAT64_BOUND = 1e-9
STEPS = 30


@dataclass
class OptimizerInfo:
    name: str                      # the registered name
    cls: type
    reference: Callable            # reference.<name>(w0, grads, lrs, **reference kwargs)
    # option sets: (optimizer kwargs, the reference's kwargs for the same maths)
    options: List[Tuple[dict, dict]]
    default_lr: float
    # where its rule runs: 'fused-cpu' and 'cuda' where src/rules.h has its body; a rule
    # without one runs 'composed' only, and the kernel tests leave it out
    backends: Tuple[str, ...] = ('fused-cpu', 'cuda', 'composed')
    trainer_args: dict = field(default_factory=lambda: {'learning_rate': 0.01, 'wd': 0.01})
    mnist_lr: float = 2e-3         # a learning rate at which one MNIST epoch learns
    # from the optimizer's declared hyperparameters (cls.hyperparameters):
    defaults: Dict[str, object] = None        # attribute -> default value
    bad_values: List[Tuple[str, object]] = None   # -> ValueError naming the argument
    bad_types: List[Tuple[str, object]] = None    # -> TypeError naming the argument
    valid: Dict[str, object] = None   # hypothesis strategies of valid hyperparameters

    def __post_init__(self):
        defaults, self.bad_values, self.bad_types, self.valid = _declared(self.cls)
        self.defaults = dict(lr=self.default_lr, **defaults)


_COMMON_BAD_VALUES = [('learning_rate', -0.1), ('learning_rate', float('nan')), ('wd', -1.0),
                      ('rescale_grad', 0.0), ('clip_gradient', -1.0), ('clip_gradient', 1e-310),
                      ('state_bits', 16), ('min_8bit_size', -1)]
_COMMON_BAD_TYPES = [('multi_precision', 'True')]
_COMMON_VALID = dict(learning_rate=st.floats(0, 1), wd=st.floats(0, 1))
# Each domain of a declared hyperparameter (mxnag.optim.base.DOMAINS): values it refuses
# (ValueError), values of a wrong type (TypeError), and valid values.
_DOMAIN_BAD_VALUES = {'decay': [1.0, -0.1, 1.5, float('nan')], 'positive': [0.0, -1e-8],
                      'non-negative': [-1e-3], 'bool': []}
_DOMAIN_BAD_TYPES = {'decay': ['0.9', None], 'positive': ['1e-8', None], 'non-negative': [None],
                     'bool': ['yes', 1]}
_DOMAIN_VALID = {'decay': st.floats(0, 0.9999), 'positive': st.floats(1e-10, 1),
                 'non-negative': st.floats(0, 1), 'bool': st.booleans()}


def _declared(cls):
    """(defaults, bad values, bad types, valid strategies) from ``cls.hyperparameters``."""
    hypers = cls.hyperparameters
    return ({h.name: h.default for h in hypers},
            _COMMON_BAD_VALUES + [(h.name, v) for h in hypers for v in _DOMAIN_BAD_VALUES[h.domain]],
            _COMMON_BAD_TYPES + [(h.name, v) for h in hypers for v in _DOMAIN_BAD_TYPES[h.domain]],
            dict(_COMMON_VALID, **{h.name: _DOMAIN_VALID[h.domain] for h in hypers}))


OPTIMIZERS = [
    OptimizerInfo(
        name='adanag', cls=mxnag.AdaNAG, reference=reference.adanag, default_lr=0.002,
        options=[
            ({}, {}),
            ({'wd': 0.1}, {'wd': 0.1}),
            ({'wd': 0.1, 'decoupled_wd': False}, {'wd': 0.1, 'decoupled_wd': False}),
            ({'beta1': 0.8, 'beta2': 0.99, 'epsilon': 1e-3, 'momentum_decay': 0.1},
             {'beta1': 0.8, 'beta2': 0.99, 'epsilon': 1e-3, 'momentum_decay': 0.1}),
            ({'momentum_decay': 0.0}, {'momentum_decay': 0.0}),
            ({'rescale_grad': 0.25, 'clip_gradient': 0.3, 'wd': 0.05, 'decoupled_wd': False},
             {'rescale': 0.25, 'clip': 0.3, 'wd': 0.05, 'decoupled_wd': False}),
        ]),
    OptimizerInfo(
        name='adan', cls=mxnag.Adan, reference=reference.adan, default_lr=0.001,
        options=[
            ({}, {}),
            ({'wd': 0.1}, {'wd': 0.1}),
            ({'wd': 0.1, 'no_prox': True}, {'wd': 0.1, 'no_prox': True}),
            ({'beta1': 0.9, 'beta2': 0.7, 'beta3': 0.95, 'epsilon': 1e-3},
             {'beta1': 0.9, 'beta2': 0.7, 'beta3': 0.95, 'epsilon': 1e-3}),
            ({'rescale_grad': 0.25, 'clip_gradient': 0.3, 'wd': 0.05},
             {'rescale': 0.25, 'clip': 0.3, 'wd': 0.05}),
        ]),
    OptimizerInfo(
        name='nadamw', cls=mxnag.NAdamW, reference=reference.nadamw, default_lr=0.001,
        options=[
            ({}, {}),
            ({'wd': 0.1}, {'wd': 0.1}),
            ({'beta1': 0.8, 'beta2': 0.99, 'epsilon': 1e-3},
             {'beta1': 0.8, 'beta2': 0.99, 'epsilon': 1e-3}),
            ({'beta1': 0.0}, {'beta1': 0.0}),
            ({'rescale_grad': 0.25, 'clip_gradient': 0.3, 'wd': 0.05},
             {'rescale': 0.25, 'clip': 0.3, 'wd': 0.05}),
        ]),
]
BY_NAME = {info.name: info for info in OPTIMIZERS}
# The step rules with kernels that the optimizers run (NAdamW runs AdaNAG's), by rule name.
RULES = {info.cls.rule.name: info.cls.rule for info in OPTIMIZERS if 'cuda' in info.backends}
NAMES = [info.name for info in OPTIMIZERS]
# (name, option set index) of every option set of every optimizer
CASES = [(info.name, k) for info in OPTIMIZERS for k in range(len(info.options))]
# Invalid values every optimizer refuses, as hypothesis strategies (argument, values).
INVALID = st.sampled_from([
    ('beta1', st.one_of(st.floats(1, 1e6), st.floats(-1e6, -1e-9))),
    ('beta2', st.one_of(st.floats(1, 1e6), st.floats(-1e6, -1e-9))),
    ('epsilon', st.floats(-1e6, 0)),
    ('learning_rate', st.floats(-1e6, -1e-12)),
    ('wd', st.floats(-1e6, -1e-12)),
    ('beta1', st.just(float('nan'))),
    ('beta1', st.text(max_size=3)),
])


def run_updater(opt, w0, grads, dtype='float32', index=0):
    """Run ``len(grads)`` updates through MXNet's Updater; return (weight, updater)."""
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(w0, dtype=dtype)
    for g in grads:
        updater(index, mx.nd.array(g, dtype=dtype), w)
    return w, updater


def random_problem(rng, shape, steps=STEPS):
    w0 = rng.standard_normal(shape).astype(np.float32)
    # gradients with a drifting mean, so that momentum and bias corrections matter
    drift = rng.standard_normal(shape)
    grads = [(drift + rng.standard_normal(shape)).astype(np.float32) for _ in range(steps)]
    return w0, grads


GROUP_TEST_SHAPES = [(1,), (7, 3), (5, 1, 3, 3), (300, 250), (64,), (33, 17)]


def check_aggregated_groups(name, dtype, rng):
    """Six parameters of mixed shapes (GROUP_TEST_SHAPES) in groups of 4 (MXNet's Updater
    splits 4 + 2), with per-parameter lr_mult/wd_mult, under an lr schedule, and one
    parameter that starts late (its own step 1 inside a group of parameters past theirs),
    checked against the references; returns the parameter indices updated at each step."""
    late, base_lr = 10, 0.02
    names = {k: 'p%d_weight' % k for k in range(len(GROUP_TEST_SHAPES))}
    scheduler = mx.lr_scheduler.FactorScheduler(step=7, factor=0.5, base_lr=base_lr)
    opt = mx.optimizer.create(name, lr_scheduler=scheduler, wd=0.1, param_idx2name=names,
                              aggregate_num=4, multi_precision=dtype == 'float16')
    lr_mult = {'p1_weight': 0.5, 'p3_weight': 2.0}
    wd_mult = {'p2_weight': 0.0, 'p3_weight': 3.0}
    opt.set_lr_mult(lr_mult)
    opt.set_wd_mult(wd_mult)
    updater = mx.optimizer.get_updater(opt)
    assert updater.aggregate_updates
    problems = [random_problem(rng, shape) for shape in GROUP_TEST_SHAPES]
    if dtype == 'float16':
        problems = [(w0.astype(np.float16), [g.astype(np.float16) for g in gs]) for w0, gs in problems]
    weights = [mx.nd.array(w0, dtype=dtype) for w0, _ in problems]
    ids_per_step = []
    for step in range(STEPS):
        ids = [k for k in range(len(GROUP_TEST_SHAPES)) if k != 4 or step >= late]
        updater(ids, [mx.nd.array(problems[k][1][step], dtype=dtype) for k in ids],
                [weights[k] for k in ids])
        ids_per_step.append(ids)
    lrs = [base_lr * 0.5 ** ((s - 1) // 7) for s in range(1, STEPS + 1)]
    for k, (w0, grads) in enumerate(problems):
        key = names[k]
        start = late if k == 4 else 0
        ref = BY_NAME[name].reference(w0, grads[start:], [lr * lr_mult.get(key, 1.0) for lr in lrs[start:]],
                                       wd=0.1 * wd_mult.get(key, 1.0))
        result = updater.states[k][0] if dtype == 'float16' else weights[k]
        assert relative_error(w0, result.asnumpy(), ref) < FLOAT32_BOUND, key
        if dtype == 'float16':
            np.testing.assert_array_equal(weights[k].asnumpy(), result.asnumpy().astype(np.float16))
    return ids_per_step
