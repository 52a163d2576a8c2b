"""mxnag's optimizers against the float64 references in reference.py, every optimizer of
the table in optimizers.py (bounds: see there)."""
import pickle

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizers import (BY_NAME, CASES, FLOAT32_BOUND, FLOAT64_BOUND, INVALID, NAMES, STEPS,
                        random_problem, run_updater)
from reference import adanag, factor_schedule, relative_error


@pytest.mark.parametrize('name,case', CASES)
@pytest.mark.parametrize('shape', [(1,), (7, 3), (5, 1, 3, 3)])
def test_matches_reference(name, case, shape, rng):
    kwargs, ref_kwargs = BY_NAME[name].options[case]
    lr = 0.01
    w0, grads = random_problem(rng, shape)
    opt = mx.optimizer.create(name, learning_rate=lr, **kwargs)
    w, _ = run_updater(opt, w0, grads)
    ref = BY_NAME[name].reference(w0, grads, [lr] * STEPS, **ref_kwargs)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_million_elements(name, rng):
    w0, grads = random_problem(rng, (1000, 1000), steps=20)
    opt = mx.optimizer.create(name, learning_rate=0.003, wd=0.01)
    w, _ = run_updater(opt, w0, grads)
    ref = BY_NAME[name].reference(w0, grads, [0.003] * 20, wd=0.01)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_float64_weights(name, rng):
    w0, grads = random_problem(rng, (13, 4))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02)
    w, updater = run_updater(opt, w0, [g.astype(np.float64) for g in grads], dtype='float64')
    assert w.dtype == np.float64
    assert all(s.dtype == np.float64 for s in updater.states[0])
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT64_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_float16_multi_precision(name, rng):
    w0, grads = random_problem(rng, (9, 11))
    w0 = w0.astype(np.float16)
    grads = [g.astype(np.float16) for g in grads]
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, multi_precision=True)
    w, updater = run_updater(opt, w0, grads, dtype='float16')
    master, states = updater.states[0]
    assert master.dtype == np.float32 and all(s.dtype == np.float32 for s in states[:-1])
    assert states[-1].dtype == np.float64  # the step count, on the device
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02)
    assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND
    assert w.dtype == np.float16
    np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))


@pytest.mark.parametrize('name', NAMES)
def test_scheduler_multipliers_and_late_start(name, rng):
    """Two parameters under a FactorScheduler with lr_mult/wd_mult; the second one
    starts at global step 11 and must use its own step count from 1 (fine-tuning's
    unfrozen layer) while the schedule follows the global update count."""
    base_lr, late = 0.02, 10
    scheduler = mx.lr_scheduler.FactorScheduler(step=7, factor=0.5, base_lr=base_lr)
    opt = mx.optimizer.create(name, lr_scheduler=scheduler, wd=0.1,
                              param_idx2name={0: 'a_weight', 1: 'b_weight'})
    opt.set_lr_mult({'a_weight': 0.5})
    opt.set_wd_mult({'b_weight': 3.0})
    updater = mx.optimizer.get_updater(opt)
    w0a, ga = random_problem(rng, (6,))
    w0b, gb = random_problem(rng, (4, 2), steps=STEPS - late)
    wa, wb = mx.nd.array(w0a), mx.nd.array(w0b)
    for step in range(STEPS):
        updater(0, mx.nd.array(ga[step]), wa)
        if step >= late:
            updater(1, mx.nd.array(gb[step - late]), wb)
    lrs = [factor_schedule(base_lr, 7, 0.5, s) for s in range(1, STEPS + 1)]
    ref_a = BY_NAME[name].reference(w0a, ga, [0.5 * lr for lr in lrs], wd=0.1)
    ref_b = BY_NAME[name].reference(w0b, gb, lrs[late:], wd=0.3)
    assert relative_error(w0a, wa.asnumpy(), ref_a) < FLOAT32_BOUND
    assert relative_error(w0b, wb.asnumpy(), ref_b) < FLOAT32_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_set_learning_rate_and_begin_num_update(name, rng):
    w0, grads = random_problem(rng, (10,))
    opt = mx.optimizer.create(name, learning_rate=0.01, begin_num_update=0)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(w0)
    for k, g in enumerate(grads):
        if k == 15:
            opt.set_learning_rate(0.003)
        updater(0, mx.nd.array(g), w)
    ref = BY_NAME[name].reference(w0, grads, [0.01] * 15 + [0.003] * 15)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


def test_tolerance_separates_rounding_from_mistakes(rng):
    """The bound must pass float32 rounding and fail plausible mistakes: MXNet's own
    'nadam' (one momentum schedule advanced once per parameter per step) and a bias
    correction off by one step."""
    w0, grads = random_problem(rng, (50,))
    lrs = [0.01] * STEPS
    ref = adanag(w0, grads, lrs)
    ours, _ = run_updater(mx.optimizer.create('adanag', learning_rate=0.01), w0, grads)
    rounding = relative_error(w0, ours.asnumpy(), ref)
    assert rounding < FLOAT32_BOUND / 10
    # MXNet's nadam on a model of two parameters: the second parameter's schedule is wrong
    mxnet_nadam = mx.optimizer.create('nadam', learning_rate=0.01)
    updater = mx.optimizer.get_updater(mxnet_nadam)
    w, other = mx.nd.array(w0), mx.nd.array(w0)
    for g in grads:
        updater(0, mx.nd.array(g), other)
        updater(1, mx.nd.array(g), w)
    assert relative_error(w0, w.asnumpy(), ref) > 10 * FLOAT32_BOUND
    # a bias correction one step late
    shifted = adanag(w0, [grads[0]] + grads[:-1], lrs)
    assert relative_error(w0, shifted, ref) > 10 * FLOAT32_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_pickle_round_trip_continues_identically(name, rng):
    w0, grads = random_problem(rng, (8,))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.1)
    w, updater = run_updater(opt, w0, grads[:10])
    blob = updater.get_states(dump_optimizer=True)
    clone = mx.optimizer.get_updater(mx.optimizer.create(name))
    clone.set_states(blob)
    assert type(clone.optimizer).__name__.lower() == name
    w2 = w.copy()
    for g in grads[10:]:
        updater(0, mx.nd.array(g), w)
        clone(0, mx.nd.array(g), w2)
    np.testing.assert_array_equal(w.asnumpy(), w2.asnumpy())


@pytest.mark.parametrize('name', NAMES)
def test_states_live_on_weight_context(name):
    ctx = mx.cpu(1)
    opt = mx.optimizer.create(name)
    state = opt.create_state_multi_precision(0, mx.nd.ones((3,), ctx=ctx))
    assert len(state) == len(opt.rule.states) + 1  # and the step count
    assert all(s.context == ctx for s in state)


@pytest.mark.parametrize('name', NAMES)
def test_row_sparse_gradient_refused(name):
    opt = mx.optimizer.create(name)
    w = mx.nd.ones((4, 2))
    before = w.asnumpy()
    state = opt.create_state(0, w)
    grad = mx.nd.sparse.row_sparse_array((np.ones((1, 2), np.float32), [1]), shape=(4, 2))
    with pytest.raises(TypeError, match='row_sparse gradient'):
        opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), before)


@pytest.mark.parametrize('name', NAMES)
def test_arrays_checked_again_when_a_parameter_comes_with_new_ones(name):
    """The dense check (and dtype/context look-up) is remembered per pair of arrays: a
    sparse gradient after dense steps is still refused, and no array enters a pickle."""
    opt = mx.optimizer.create(name)
    w = mx.nd.ones((4, 2))
    state = opt.create_state(0, w)
    for _ in range(2):
        opt.update(0, w, mx.nd.ones((4, 2)), state)
    before = w.asnumpy()
    grad = mx.nd.sparse.row_sparse_array((np.ones((1, 2), np.float32), [1]), shape=(4, 2))
    with pytest.raises(TypeError, match='row_sparse gradient'):
        opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), before)
    assert len(opt._arrays[0]) <= 8
    assert '_arrays' not in opt.__getstate__()
    assert pickle.loads(pickle.dumps(opt))._arrays == {}


@pytest.mark.skipif(mx.context.num_gpus() == 0, reason='no GPU (mx.context.num_gpus() == 0)')
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_on_gpu_matches_reference_with_states_on_the_gpu(name, dtype, rng):
    w0, grads = random_problem(rng, (37, 5))
    if dtype == 'float16':
        w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, multi_precision=dtype == 'float16')
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(w0, ctx=mx.gpu(0), dtype=dtype)
    for g in grads:
        updater(0, mx.nd.array(g, ctx=mx.gpu(0), dtype=dtype), w)
    state = updater.states[0]
    flat = [a for s in state for a in (s if isinstance(s, tuple) else (s,))]
    assert all(a.context == mx.gpu(0) for a in flat)
    master = state[0] if dtype == 'float16' else w
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02)
    assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND


FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_valid_hyperparameters_and_finite_gradients_stay_finite(name, data):
    kwargs = data.draw(st.fixed_dictionaries(BY_NAME[name].valid))
    grads = data.draw(st.lists(st.lists(FINITE, min_size=5, max_size=5), min_size=1, max_size=6))
    opt = mx.optimizer.create(name, **kwargs)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(np.linspace(-1, 1, 5))
    for g in grads:
        updater(0, mx.nd.array(g), w)
    assert np.isfinite(w.asnumpy()).all(), (kwargs, grads)


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_invalid_hyperparameters_always_raise(name, data):
    arg, values = data.draw(INVALID)
    value = data.draw(values)
    with pytest.raises((ValueError, TypeError), match=arg):
        mx.optimizer.create(name, **{arg: value})


def test_nadamw_is_adanags_kernel_with_constant_momentum(rng):
    """NAdamW runs AdaNAG's step rule (no kernel of its own), and differs from AdaNAG
    only by its momentum schedule: with AdaNAG's schedule switched off the two still
    differ (mu = beta1 / 2 there), and NAdamW follows its own reference."""
    nadamw = mx.optimizer.create('nadamw', learning_rate=0.01)
    assert nadamw.rule is mx.optimizer.create('adanag').rule
    w0, grads = random_problem(rng, (40,))
    w, _ = run_updater(nadamw, w0, grads)
    ref = BY_NAME['nadamw'].reference(w0, grads, [0.01] * STEPS)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND
    other = adanag(w0, grads, [0.01] * STEPS, momentum_decay=0.0)
    assert relative_error(w0, other, ref) > 10 * FLOAT32_BOUND
