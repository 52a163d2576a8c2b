"""8-bit optimizer states (``state_bits=8``): each step of the fused kernel against the
float64 NumPy reference of the same quantised algorithm (tests/reference.py: decode, the
published update, encode to the nearest code), the format's promises (signs, zeros,
NaN, small tensors), a skipped step, and the ways states travel (save/load, float16
master weights, groups mixing 8-bit and float32 states)."""
import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, gluon

import mxnag
import reference
from mxnag import kernels
from optimizers import NAMES, BY_NAME, random_problem

pytestmark = pytest.mark.skipif(not mxnag.kernels.fused_cpu.available(),
                                reason='the fused CPU library is not available')
BIG, SMALL = (3, 2000), (7, 3)  # 6000 elements: 8-bit, its last block partial; 21: float32


def _decoded(rule, state):
    """{state name: float64 flat values} of a parameter's 8-bit states."""
    out = {}
    for j, name in enumerate(rule.states):
        codes, scales = state[2 * j].asnumpy().ravel(), state[2 * j + 1].asnumpy()
        out[name] = reference.decode_state(codes, scales, _non_negative(rule, j))
    return out


def _non_negative(rule, j):
    return rule.states[j] in rule.non_negative  # the second moments


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('option', [0, 1])
def test_each_quantised_step_equals_the_float64_reference(name, option):
    info = BY_NAME[name]
    opt_args, ref_args = info.options[option]
    lr = 0.01
    opt = mx.optimizer.create(name, learning_rate=lr, state_bits=8, aggregate_num=4, **opt_args)
    rule = type(opt).rule
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.default_rng(21 + option)
    problems = [random_problem(rng, BIG, steps=6), random_problem(rng, SMALL, steps=6)]
    weights = [mx.nd.array(w0) for w0, _ in problems]
    small = dict((n, np.zeros(SMALL)) for n in rule.states)
    small_t = 0
    for step in range(6):
        before = weights[0].asnumpy().astype(np.float64).ravel()
        start = dict(_decoded(rule, updater.states[0]) if step else {}, t=step)
        grads = [problems[k][1][step] for k in range(2)]
        updater([0, 1], [mx.nd.array(g) for g in grads], weights)
        w_ref, states_ref = info.reference(before, [grads[0].ravel()], [lr], start=start,
                                           return_states=True, **ref_args)
        state = updater.states[0]
        assert len(state) == 2 * len(rule.states) + 1 and state[0].dtype == np.uint8
        np.testing.assert_allclose(weights[0].asnumpy().ravel(), w_ref, rtol=2e-5, atol=1e-6)
        for j, state_name in enumerate(rule.states):
            codes_ref, scales_ref = reference.encode_state(states_ref[state_name],
                                                           _non_negative(rule, j))
            codes = state[2 * j].asnumpy().ravel()
            np.testing.assert_allclose(state[2 * j + 1].asnumpy(), scales_ref, rtol=1e-4)
            # equal except ties: a value within float32 rounding of a midpoint
            assert (codes != codes_ref).mean() < 2e-2, state_name
            assert reference.codes_agree(codes, states_ref[state_name], _non_negative(rule, j)).all()
        # the small parameter keeps float32 states, the reference's float path
        w_small, small = info.reference(
            problems[1][0] if step == 0 else w_small_before, [grads[1]], [lr],
            start=dict(small, t=small_t), return_states=True, **ref_args)
        small_t += 1
        w_small_before = weights[1].asnumpy()
        assert updater.states[1][0].dtype == np.float32 and len(updater.states[1]) == len(rule.states) + 1
        np.testing.assert_allclose(w_small_before, w_small, rtol=1e-4, atol=1e-6)
        small = {n: updater.states[1][j].asnumpy().astype(np.float64) for j, n in enumerate(rule.states)}


def test_signs_zeros_and_nan_in_the_format():
    """A small moment keeps its sign or becomes 0, never the other sign; zero is code 0;
    a block holding a NaN reads NaN; a positive second moment never reads 0."""
    opt = mx.optimizer.create('adanag', learning_rate=1e-3, state_bits=8)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.ones((4096,))
    g = np.full(4096, 1e-9, np.float32)
    g[:256] = 0.0  # a block of zeros
    g[256:512:2] = -1e-9
    g[300] = 5.0  # one large value: the small ones fall far below it
    g[600] = -3.0
    updater(0, mx.nd.array(g), w)
    decoded = _decoded(opt.rule, updater.states[0])
    m, v = decoded['mean'], decoded['var']
    assert np.all(m[:256] == 0) and np.all(v[:256] == 0)
    assert np.all(updater.states[0][0].asnumpy()[:256] == 0)
    assert np.all(np.sign(m[256:]) * np.sign(g[256:]) >= 0)  # same sign, or zero
    assert np.all(v[256:] > 0)  # every coordinate with a gradient has a second moment
    g_nan = g.copy()
    g_nan[1000] = np.nan
    updater(0, mx.nd.array(g_nan), w)
    scales = updater.states[0][1].asnumpy()
    assert np.isnan(scales[1000 // 256]) and np.isfinite(np.delete(scales, 1000 // 256)).all()


def test_a_skipped_step_leaves_codes_scales_and_weights_untouched():
    opt = mx.optimizer.create('adan', learning_rate=1e-3, state_bits=8)
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.default_rng(3)
    w = mx.nd.array(rng.standard_normal(5000).astype(np.float32))
    for _ in range(2):
        updater(0, mx.nd.array(rng.standard_normal(5000).astype(np.float32)), w)
    # the states without the step count (whose other slot is written with the same count)
    before = [a.asnumpy().copy() for a in updater.states[0][:-1]] + [w.asnumpy().copy()]
    g = rng.standard_normal(5000).astype(np.float32)
    g[7] = np.inf
    grad = mx.nd.array(g)
    opt.set_finite_flag(kernels.all_finite([grad]))
    updater(0, grad, w)
    after = [a.asnumpy() for a in updater.states[0][:-1]] + [w.asnumpy()]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    assert list(updater.states[0][-1].asnumpy()) == [2.0, 2.0]  # still 2 steps taken


def test_which_tensors_get_8bit_states():
    opt = mx.optimizer.create('adanag', state_bits=8, min_8bit_size=100)
    assert opt.coded(mx.nd.zeros((100,))) and not opt.coded(mx.nd.zeros((99,)))
    assert not opt.coded(mx.nd.zeros((1000,), dtype='float64'))  # float64 keeps float64 states
    state = opt.create_state(0, mx.nd.zeros((10, 30)))
    assert [a.shape for a in state] == [(10, 30), (2,), (10, 30), (2,), (2,)]
    assert mx.optimizer.create('adanag').create_state(0, mx.nd.zeros((5000,)))[0].dtype == np.float32


@pytest.mark.parametrize('bad', [16, 4, True, '8', None])
def test_bad_state_bits_are_named(bad):
    with pytest.raises(ValueError, match='state_bits must be 32 or 8'):
        mx.optimizer.create('adanag', state_bits=bad)


@pytest.mark.parametrize('bad', [-1, 1.5, True])
def test_bad_min_8bit_size_is_named(bad):
    with pytest.raises(ValueError, match='min_8bit_size'):
        mx.optimizer.create('adan', state_bits=8, min_8bit_size=bad)


def test_the_composed_backend_refuses_8bit_states_by_name():
    opt = mx.optimizer.create('adanag', state_bits=8)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.ones((5000,))
    kernels.set_fused(False)
    try:
        with pytest.raises(RuntimeError, match='state_bits=8.*forced'):
            updater(0, mx.nd.ones((5000,)), w)
    finally:
        kernels.set_fused(True)


def test_float16_master_weights_with_8bit_states_equal_the_float32_run():
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(6000).astype(np.float16)
    grads = [rng.standard_normal(6000).astype(np.float16) for _ in range(4)]
    runs = {}
    for dtype in ('float16', 'float32'):
        opt = mx.optimizer.create('adanag', learning_rate=1e-2, state_bits=8,
                                  multi_precision=dtype == 'float16')
        updater = mx.optimizer.get_updater(opt)
        w = mx.nd.array(w0, dtype=dtype)
        for g in grads:
            updater(0, mx.nd.array(g, dtype=dtype), w)
        state = updater.states[0]
        master = state[0] if dtype == 'float16' else w
        coded = state[1] if dtype == 'float16' else state
        runs[dtype] = [master.asnumpy()] + [a.asnumpy() for a in coded[:-1]]
        if dtype == 'float16':
            np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))
    for a, b in zip(runs['float16'], runs['float32']):
        np.testing.assert_array_equal(a, b)


def _net(seed):
    mx.random.seed(seed)
    net = gluon.nn.Dense(50, in_units=200)  # 10000 weights: 8-bit; 50 biases: float32
    net.initialize(mx.init.Xavier())
    return net


def _steps(net, trainer, rng, count):
    for _ in range(count):
        x = mx.nd.array(rng.standard_normal((8, 200)).astype(np.float32))
        with autograd.record():
            loss = (net(x) ** 2).mean()
        loss.backward()
        trainer.step(8)


@pytest.mark.parametrize('name', NAMES)
def test_save_and_load_states_continue_bit_exact(name, tmp_path):
    net = _net(0)
    trainer = gluon.Trainer(net.collect_params(), name, {'learning_rate': 1e-2, 'state_bits': 8})
    _steps(net, trainer, np.random.default_rng(1), 3)
    path = str(tmp_path / 'states')
    trainer.save_states(path)
    copy = _net(0)
    for mine, theirs in zip(copy.collect_params().values(), net.collect_params().values()):
        mine.set_data(theirs.data())
    trainer2 = gluon.Trainer(copy.collect_params(), name, {'learning_rate': 1e-2, 'state_bits': 8})
    trainer2.load_states(path)
    _steps(net, trainer, np.random.default_rng(2), 2)
    _steps(copy, trainer2, np.random.default_rng(2), 2)
    for mine, theirs in zip(copy.collect_params().values(), net.collect_params().values()):
        np.testing.assert_array_equal(mine.data().asnumpy(), theirs.data().asnumpy())
    states = trainer2._updaters[0].states
    # the weight's states loaded as codes, the bias's as float32
    assert sorted(np.dtype(state[0].dtype).name for state in states.values()) == ['float32', 'uint8']


def test_inf_and_denormal_blocks():
    """A block holding an Inf reads NaN (as a NaN's does); a block whose largest moment is
    below the smallest normal float reads 0 (its inverse scale would overflow)."""
    opt = mx.optimizer.create('adanag', learning_rate=1e-3, state_bits=8)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.ones((4096,))
    g = np.full(4096, 0.5, np.float32)
    g[:256] = 1e-30  # m = 1e-31: fine; set below to a denormal m directly
    g[300] = np.inf
    updater(0, mx.nd.array(g), w)
    scales = updater.states[0][1].asnumpy()
    assert np.isnan(scales[1]) and np.isfinite(np.delete(scales, 1)).all()
    state = updater.states[0]
    codes = np.zeros(4096, np.uint8)
    codes[:256] = 100
    state[0][:] = mx.nd.array(codes, dtype='uint8')
    state[1][:] = mx.nd.array(np.r_[1e-39 / 1.875, np.ones(15)].astype(np.float32))
    # m of block 0 ~ 1e-39 x 0.9 after the next step with zero gradients there
    g2 = np.full(4096, 0.5, np.float32)
    g2[:256] = 0.0
    updater(0, mx.nd.array(g2), w)
    m = _decoded(opt.rule, updater.states[0])['mean']
    assert updater.states[0][1].asnumpy()[0] == 0 and np.all(m[:256] == 0)
    assert np.all(updater.states[0][0].asnumpy()[:256] % 128 == 0)


def test_set_fused_applies_to_a_group_already_cached(rng):
    """The group caches keep the backend split; forcing the composed update afterwards
    still takes effect (and refuses 8-bit states by name)."""
    from mxnag.kernels import fused_cpu
    opt = mx.optimizer.create('adanag', learning_rate=1e-2, state_bits=8)
    updater = mx.optimizer.get_updater(opt)
    w, g = mx.nd.ones((5000,)), mx.nd.array(rng.standard_normal(5000).astype(np.float32))
    updater(0, g, w)
    calls = []
    original = fused_cpu.invoke
    fused_cpu.invoke = lambda *a, **k: (calls.append(a[0]), original(*a, **k))
    kernels.set_fused(False)
    try:
        with pytest.raises(RuntimeError, match='forced'):
            updater(0, g, w)
    finally:
        kernels.set_fused(True)
        fused_cpu.invoke = original
    assert calls == []
    assert len(opt._plans) == 1
    updater(0, g, mx.nd.ones((5000,)))  # new arrays for the same group: its plan replaced
    assert len(opt._plans) == 1
