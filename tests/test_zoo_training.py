"""Every model family the recipes offer, trained by name through gluon.Trainer on the
fused CPU path and on the composed path, with evaluation passes between the steps (which
leave convolution weights in oneDNN's blocked layout); and the inputs the fused
operators once misread (mixed dtypes in a group, kvstore copies on cpu_pinned, OpenMP
after fork, clip bounds outside float32's range)."""
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import mxnag  # noqa: F401
from mxnag import kernels
from mxnag.train import models
from mxnag.kernels import composed, fused_cpu

from conftest import ROOT
from optimizers import OPTIMIZERS as TABLE

OPTIMIZERS = {info.name: info.trainer_args for info in TABLE}
MODELS = ['mlp', 'lenet', 'seed-cnn', 'resnet18_v1', 'resnet18_v2', 'mobilenetv2_0.25']
STEPS = 3

pytestmark = pytest.mark.skipif(not fused_cpu.available(), reason='fused CPU operators not built')


@pytest.fixture
def fused(monkeypatch):
    """Count the groups each backend updates; ``mode(True|False)`` picks the path, and
    ``mode(True, check=True)`` also runs every fused group's step on copies of its
    inputs through the composed path and compares (see ``_checked``)."""
    calls = {'fused-cpu': 0, 'composed': 0, 'checked': []}
    real_fused, real_composed = fused_cpu.update, composed.update
    settings = {'check': False}

    def counted_fused(*args, **kwargs):
        calls['fused-cpu'] += 1
        if settings['check']:
            return _checked(real_fused, real_composed, calls['checked'], *args, **kwargs)
        return real_fused(*args, **kwargs)

    def counted_composed(*args):
        calls['composed'] += 1
        return real_composed(*args)

    monkeypatch.setattr(fused_cpu, 'update', counted_fused)
    monkeypatch.setattr(composed, 'update', counted_composed)

    def mode(on, check=False):
        monkeypatch.setattr(fused_cpu, 'FORCED_OFF', not on)
        settings['check'] = check
        calls.update({'fused-cpu': 0, 'composed': 0, 'checked': []})
        return calls
    return mode


# A step's displacement (and new states) on the fused path against the composed path's from the same
# weights, gradients and states: float32 rounding is ~1e-6, a wrong or lost update ~1.
# (Whole runs of the two paths drift apart by more: an adaptive step divides by the
# gradient's size, so rounding differences in near-zero gradients of the second step
# grow; that is why every step is compared from the same inputs.)
STEP_BOUND = 1e-4


def _checked(fused_update, composed_update, pending, rule, weights, grads, states, masters,
             shared, per_tensor, step_arrays, slots, flag, table, **options):
    """``fused_update`` on the arrays, ``composed_update`` on copies made before it (MXNet's
    copy reads any layout); the arrays to compare go to ``pending`` (compared after the
    run by ``_step_errors``: reading them now would wait for the engine and change the
    order in which layouts change)."""
    before = [w.copy() for w in weights]
    copies = [w.copy() for w in weights], [g.copy() for g in grads], \
        [tuple(s.copy() for s in state) for state in states], [a.copy() for a in step_arrays]
    fused_update(rule, weights, grads, states, masters, shared, per_tensor, step_arrays, slots,
                 flag, table, **options)
    after = [w.copy() for w in weights], [tuple(s.copy() for s in state) for state in states]
    composed_update(rule, copies[0], copies[1], copies[2], masters, shared, per_tensor, copies[3],
                    slots, flag, table)
    pending.append((before, after, (copies[0], copies[2])))


def _step_errors(pending):
    """Relative errors of every checked step's displacement and new states."""
    errors = []
    for before, (weights, states), (want_weights, want_states) in pending:
        for k, start in enumerate(before):
            start = start.asnumpy().astype(np.float64)
            want = want_weights[k].asnumpy() - start
            errors.append(np.linalg.norm(weights[k].asnumpy() - start - want) /
                          max(np.linalg.norm(want), 1e-30))
            for state, want in zip(states[k], want_states[k]):
                want = want.asnumpy().astype(np.float64)
                errors.append(np.linalg.norm(state.asnumpy() - want) / max(np.linalg.norm(want), 1e-30))
    return errors


def train(name, optimizer, ctxs, kvstore=None, update_on_kvstore=None, seed=0):
    """STEPS hybridized training steps on 1x28x28 inputs, each followed by an evaluation
    pass (the user's validation): the trained parameters before and after."""
    net = models.get_model(name, classes=10)  # hybridized
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8))
               for _ in range(STEPS)]
    net(nd.array(batches[0][0], ctx=ctxs[0]))  # shapes known before the first step
    params = [p for p in net.collect_params().values() if p.grad_req != 'null']
    before = [p.data(ctxs[0]).asnumpy() for p in params]
    trainer = gluon.Trainer(net.collect_params(), optimizer, dict(OPTIMIZERS[optimizer]),
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in batches:
        xs = gluon.utils.split_and_load(nd.array(x), ctxs)
        ys = gluon.utils.split_and_load(nd.array(y), ctxs)
        with autograd.record():
            losses = [loss_fn(net(a), b) for a, b in zip(xs, ys)]
        for loss in losses:
            loss.backward()
        trainer.step(len(x))
        for a in xs:
            net(a).wait_to_read()  # evaluation pass: weights go to oneDNN layouts
    nd.waitall()
    after = [[p.data(ctx).asnumpy() for p in params] for ctx in ctxs]
    return [p.name for p in params], before, after


def assert_same_training(name, optimizer, ctxs, fused, **trainer_args):
    """Trains on the composed path, then on the fused path with every step compared with
    the composed step from the same inputs; every parameter moves on both."""
    calls = fused(False)
    names, before, composed = train(name, optimizer, ctxs, **trainer_args)
    assert calls['fused-cpu'] == 0 and calls['composed'] > 0
    calls = fused(True, check=True)
    _, before_fused, got = train(name, optimizer, ctxs, **trainer_args)
    assert calls['composed'] == 0 and calls['fused-cpu'] > 0, calls
    errors = _step_errors(calls['checked'])
    assert len(errors) >= 2 * STEPS * len(names)  # weights and states
    assert max(errors) < STEP_BOUND, max(errors)
    for k, param in enumerate(names):
        np.testing.assert_array_equal(before_fused[k], before[k])
        for run in (composed, got):
            for c in range(len(ctxs)):  # every device copy followed the same trajectory
                np.testing.assert_array_equal(run[c][k], run[0][k])
            assert not np.array_equal(run[0][k], before[k]), '%s did not move' % param


@pytest.mark.parametrize('optimizer', sorted(OPTIMIZERS))
@pytest.mark.parametrize('name', MODELS)
def test_model_family_trains_the_same_on_fused_and_composed_paths(name, optimizer, fused):
    assert_same_training(name, optimizer, [mx.cpu(0)], fused)


@pytest.mark.parametrize('update_on_kvstore', [False, True])
@pytest.mark.parametrize('name', ['lenet', 'resnet18_v1', 'mobilenetv2_0.25'])
def test_two_cpu_contexts_with_device_kvstore(name, update_on_kvstore, fused):
    """kvstore='device' on cpu(0) and cpu(1); update_on_kvstore=True updates the kvstore's
    copies, which live on cpu_pinned(0), on the fused path too."""
    assert_same_training(name, 'adanag', [mx.cpu(0), mx.cpu(1)], fused, kvstore='device',
                         update_on_kvstore=update_on_kvstore)


def test_the_issue_example_runs_as_written():
    """The README's zoo model with an evaluation pass between steps, MXNet's default
    (threaded) engine, in a fresh process, every optimizer."""
    script = textwrap.dedent('''
        import mxnet as mx
        from mxnet import gluon, autograd
        import mxnag
        for name in ('adanag', 'adan'):
            net = gluon.model_zoo.vision.get_model('resnet18_v1', classes=10)
            net.initialize(mx.init.Xavier()); net.hybridize()
            tr = gluon.Trainer(net.collect_params(), name, {'learning_rate': 1e-3})
            L = gluon.loss.SoftmaxCrossEntropyLoss()
            x = mx.nd.random.uniform(shape=(8, 3, 32, 32)); y = mx.nd.arange(8) % 10
            for i in range(3):
                with autograd.record():
                    l = L(net(x), y).mean()
                l.backward(); tr.step(8)
                net(x).wait_to_read()
            mx.nd.waitall()
            assert mxnag.kernels.backend_for(list(net.collect_params().values())[0].data()) == 'fused-cpu'
        print('trained')
    ''')
    env = {k: v for k, v in os.environ.items() if k not in ('MXNAG_FUSED', 'MXNET_ENGINE_TYPE')}
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0 and 'trained' in proc.stdout, proc.stderr[-2000:]


def test_blocked_layout_weight_is_updated_in_place_exactly(rng):
    """A weight an inference convolution left in oneDNN's layout, and a gradient in it too."""
    shape = (16, 8, 3, 3)

    def blocked(values):
        array = nd.array(values)
        nd.Convolution(nd.array(rng.standard_normal((2, 8, 8, 8))), array, kernel=(3, 3),
                       num_filter=16, no_bias=True).wait_to_read()
        nd.waitall()  # the reorder into the blocked layout has run
        return array

    w0 = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    weight, grad = blocked(w0), blocked(g)
    mean, var = nd.array(0.1 * g), nd.array(0.2 * g * g)
    coefs = dict(rescale_grad=0.5, clip_gradient=None, wd_into_grad=0.0, weight_scale=0.99,
                 beta1=0.9, beta2=0.999, epsilon=1e-8, grad_coef=0.01, mean_coef=0.02,
                 var_scale=1.5)
    assert kernels.backend_for(weight) == 'fused-cpu'
    kernels.update(mxnag.AdaNAG.rule, weight, grad, (mean, var), coefs)
    g64, w64 = 0.5 * g.astype(np.float64), w0.astype(np.float64)
    m = 0.9 * 0.1 * g + 0.1 * g64
    v = 0.999 * 0.2 * g.astype(np.float64) ** 2 + 0.001 * g64 ** 2
    want = w64 * 0.99 - (0.01 * g64 + 0.02 * m) / (np.sqrt(v) * 1.5 + 1e-8)
    np.testing.assert_allclose(mean.asnumpy(), m, rtol=1e-5)
    np.testing.assert_allclose(weight.asnumpy(), want, rtol=1e-5, atol=1e-6)


ADANAG_COEFS = dict(rescale_grad=1.0, clip_gradient=None, beta1=0.9, beta2=0.999, epsilon=1e-8)


def _group_update(weights, grads, states):
    n = len(weights)
    kernels.multi_update(mxnag.AdaNAG.rule, weights, grads, states,
                         dict(ADANAG_COEFS, wd_into_grad=[0.0] * n, weight_scale=[1.0] * n,
                              grad_coef=[0.01] * n, mean_coef=[0.02] * n, var_scale=[1.0] * n))


@pytest.mark.parametrize('order', [('float32', 'float64'), ('float64', 'float32')])
def test_a_group_of_mixed_dtypes_is_split_by_dtype(order, rng):
    values = [(rng.standard_normal(1000 + 7 * k), rng.standard_normal(1000 + 7 * k))
              for k in range(2)]

    def arrays(dtypes):
        return ([nd.array(w, dtype=d) for (w, _), d in zip(values, dtypes)],
                [nd.array(g, dtype=d) for (_, g), d in zip(values, dtypes)],
                [(nd.zeros(len(w), dtype=d), nd.zeros(len(w), dtype=d)) for (w, _), d in zip(values, dtypes)])

    weights, grads, states = arrays(order)
    _group_update(weights, grads, states)
    for k, dtype in enumerate(order):  # each as a group of its own
        w, g, s = arrays([dtype, dtype])
        _group_update(w[k:k + 1], g[k:k + 1], s[k:k + 1])
        np.testing.assert_array_equal(weights[k].asnumpy(), w[k].asnumpy())
        np.testing.assert_array_equal(states[k][1].asnumpy(), s[k][1].asnumpy())


def test_the_operator_refuses_a_group_of_mixed_dtypes(rng):
    w32, w64 = nd.array(rng.standard_normal(100)), nd.array(rng.standard_normal(100), dtype='float64')
    before = w64.asnumpy()
    inputs = [w32, w32.copy(), nd.zeros(100), nd.zeros(100),
              w64, w64.copy(), nd.zeros(100, dtype='float64'), nd.zeros(100, dtype='float64'),
              nd.ones((1,)), nd.ones((4, 3), dtype='float64'),
              nd.zeros((2,), dtype='float64'), nd.zeros((2,), dtype='float64')]
    keys = ['num_weights', 'multi_precision', 'rescale_grad', 'clip_gradient', 'beta1', 'beta2',
            'epsilon', 'wd_into_grad', 'weight_scale', 'grad_coef', 'mean_coef', 'var_scale',
            'step_scalars', 'step_slot']
    values = ['2', '0', '1.0', '-1.0', '0.9', '0.999', '1e-08'] + ['0.0,0.0'] + ['1.0,1.0'] * 4 + \
        ['grad_coef,mean_coef,var_scale', '0,0']
    with pytest.raises(mx.base.MXNetError, match='weight 1 is float64, weight 0 float32; one fused '
                                                 'update call takes weights of one dtype'):
        fused_cpu.invoke('mxnag_adanag_update', inputs, keys, values, [w32, w64])
        nd.waitall()
    np.testing.assert_array_equal(w64.asnumpy(), before)  # nothing written


def test_optimizer_update_with_a_hand_built_mixed_group(rng):
    opt = mx.optimizer.create('adanag', learning_rate=0.01)
    ref = mx.optimizer.create('adanag', learning_rate=0.01)
    arrays = [rng.standard_normal(300) for _ in range(4)]
    w = [nd.array(arrays[0]), nd.array(arrays[1], dtype='float64')]
    g = [nd.array(arrays[2]), nd.array(arrays[3], dtype='float64')]
    opt.update([0, 1], w, g, [opt.create_state(0, w[0]), opt.create_state(1, w[1])])
    for k in range(2):
        w1, g1 = w[k].copy(), g[k].copy()
        w1[:] = arrays[k]
        ref.update(k, w1, g1, ref.create_state(k, w1))
        np.testing.assert_array_equal(w[k].asnumpy(), w1.asnumpy())


@pytest.mark.parametrize('device_type', ['cpu_pinned', 'cpu_shared'])
def test_host_memory_contexts_use_the_fused_path(device_type, rng, fused):
    calls = fused(True)
    ctx = mx.Context(device_type, 0)
    values = rng.standard_normal((2, 5000))
    weight = nd.array(values[0], ctx=ctx)
    grad = nd.array(values[1], ctx=ctx)
    assert kernels.backend_for(weight) == 'fused-cpu'
    opt = mx.optimizer.create('adanag', learning_rate=0.01)
    opt.update(0, weight, grad, opt.create_state(0, weight))
    assert (calls['fused-cpu'], calls['composed']) == (1, 0)
    ref_w = nd.array(values[0])
    ref = mx.optimizer.create('adanag', learning_rate=0.01)
    ref.update(0, ref_w, nd.array(values[1]), ref.create_state(0, ref_w))
    np.testing.assert_array_equal(weight.asnumpy(), ref_w.asnumpy())


@pytest.mark.parametrize('clip', [1e-42, 1e-30, 0.05, 1e30, 1e300])
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_both_paths_accept_the_same_clip_bounds(clip, dtype, rng, fused):
    values = rng.standard_normal((2, 999)) * 0.1

    def step(on):
        calls = fused(on)
        opt = mx.optimizer.create('adanag', learning_rate=0.01, clip_gradient=clip)
        weight = nd.array(values[0], dtype=dtype)
        opt.update(0, weight, nd.array(values[1], dtype=dtype), opt.create_state(0, weight))
        assert calls['fused-cpu' if on else 'composed'] == 1
        return weight.asnumpy()

    fused_moved, composed_moved = step(True) - values[0], step(False) - values[0]
    assert np.linalg.norm(fused_moved - composed_moved) <= 1e-5 * np.linalg.norm(composed_moved)


def test_clip_bounds_mxnet_cannot_represent_are_refused_when_made():
    with pytest.raises(ValueError, match=r'AdaNAG: clip_gradient must be in \[2.2250738585072014e-308'):
        mx.optimizer.create('adanag', clip_gradient=1e-310)


def test_openmp_threading_survives_fork_under_the_naive_engine():
    """MXNAG_THREADING=openmp, NaiveEngine: a child forked after the parent ran a fused
    update (as gluon's DataLoader workers are) runs its own fused update."""
    script = textwrap.dedent('''
        import os, sys
        import numpy as np
        import mxnet as mx
        import mxnag
        def step():
            w = mx.nd.ones(1 << 20)
            opt = mx.optimizer.create('adanag', learning_rate=0.1)
            opt.update(0, w, mx.nd.ones(1 << 20), opt.create_state(0, w))
            return float(w[:1].asscalar())
        assert mxnag.kernels.backend_for(mx.nd.ones(1)) == 'fused-cpu'
        parent = step()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if step() == parent else 3)
        _, status = os.waitpid(pid, 0)
        print('child', os.waitstatus_to_exitcode(status))
    ''')
    env = dict(os.environ, MXNAG_THREADING='openmp', MXNET_ENGINE_TYPE='NaiveEngine',
               MXNAG_NUM_THREADS='2', MXNAG_FUSED='1')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0 and 'child 0' in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_views_of_a_larger_array_update_in_place(rng, fused):
    """A weight that is a slice (or a reshaped view) of a larger array, as MXNet's own
    optimizers take it: only the view's elements change."""
    values = rng.standard_normal((8, 5))
    results = {}
    for on in (True, False):
        fused(on)
        big = nd.array(values)
        view = big[2:5]
        opt = mx.optimizer.create('adanag', learning_rate=0.1)
        opt.update(0, view, nd.array(values[:3] * 0.5), opt.create_state(0, view))
        flat = big[5:7].reshape((10,))
        opt.update(1, flat, nd.array(values[:2].ravel()), opt.create_state(1, flat))
        results[on] = big.asnumpy()
    np.testing.assert_array_equal(results[True][[0, 1, 7]], values[[0, 1, 7]].astype(np.float32))
    assert not np.allclose(results[True][2:7], values[2:7])
    np.testing.assert_allclose(results[True], results[False], rtol=1e-6)
