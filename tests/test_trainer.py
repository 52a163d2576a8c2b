"""The optimizers inside gluon.Trainer: contexts, kvstores, update_on_kvstore, resume."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import mxnag  # noqa: F401

from optimizers import OPTIMIZERS as TABLE

OPTIMIZERS = {info.name: info.trainer_args for info in TABLE}
STEPS = 8


def make_net(ctxs, hybridize, seed=0):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(16, activation='relu', in_units=10), gluon.nn.Dense(4, in_units=16))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


def batches(seed=1, n=STEPS):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 10)).astype(np.float32), rng.integers(0, 4, 8))
            for _ in range(n)]


def train(net, trainer, ctxs, data):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in data:
        xs = gluon.utils.split_and_load(mx.nd.array(x), ctxs)
        ys = gluon.utils.split_and_load(mx.nd.array(y), ctxs)
        with autograd.record():
            losses = [loss_fn(net(a), b) for a, b in zip(xs, ys)]
        for loss in losses:
            loss.backward()
        trainer.step(len(x))


def weights(net, ctx):
    return [p.data(ctx).asnumpy() for p in net.collect_params().values()]


@pytest.fixture(scope='module')
def baselines():
    out = {}
    for name, hp in OPTIMIZERS.items():
        net = make_net([mx.cpu(0)], hybridize=False)
        trainer = gluon.Trainer(net.collect_params(), name, dict(hp), kvstore=None)
        train(net, trainer, [mx.cpu(0)], batches())
        out[name] = weights(net, mx.cpu(0))
    return out


CONFIGS = [
    (1, 'device', None), (1, 'local', None),
    (2, 'device', True), (2, 'device', False),
    (2, 'local', True), (2, 'local', False),
]


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('num_ctx,kvstore,update_on_kvstore', CONFIGS)
def test_trainer_configurations(name, hybridize, num_ctx, kvstore, update_on_kvstore, baselines):
    ctxs = [mx.cpu(i) for i in range(num_ctx)]
    net = make_net(ctxs, hybridize)
    trainer = gluon.Trainer(net.collect_params(), name, dict(OPTIMIZERS[name]), kvstore=kvstore,
                            update_on_kvstore=update_on_kvstore)
    train(net, trainer, ctxs, batches())
    first = weights(net, ctxs[0])
    for ctx in ctxs[1:]:  # every device copy followed the same trajectory
        for a, b in zip(first, weights(net, ctx)):
            np.testing.assert_array_equal(a, b)
    for got, want in zip(first, baselines[name]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    init = weights(make_net(ctxs[:1], False), ctxs[0])
    assert any(not np.allclose(a, b) for a, b in zip(first, init)), 'weights did not move'


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
@pytest.mark.parametrize('num_ctx,kvstore,update_on_kvstore', [
    (1, None, None), (2, 'device', False), (2, 'local', True)])
def test_save_and_load_states_resume_bit_exact(name, num_ctx, kvstore, update_on_kvstore, tmp_path):
    ctxs = [mx.cpu(i) for i in range(num_ctx)]
    data = batches(n=12)

    def fresh():
        net = make_net(ctxs, hybridize=True)
        return net, gluon.Trainer(net.collect_params(), name, dict(OPTIMIZERS[name]),
                                  kvstore=kvstore, update_on_kvstore=update_on_kvstore)

    net, trainer = fresh()
    train(net, trainer, ctxs, data)
    uninterrupted = weights(net, ctxs[0])

    net, trainer = fresh()
    train(net, trainer, ctxs, data[:5])
    net.save_parameters(str(tmp_path / 'p.params'))
    trainer.save_states(str(tmp_path / 't.states'))
    net, trainer = fresh()
    net.load_parameters(str(tmp_path / 'p.params'), ctx=ctxs)
    trainer.load_states(str(tmp_path / 't.states'))
    train(net, trainer, ctxs, data[5:])
    for a, b in zip(weights(net, ctxs[0]), uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_frozen_layer_unfrozen_late_starts_at_its_own_step_one(name):
    """A layer frozen for the first steps then trained gets the bias corrections of t=1."""
    ctxs = [mx.cpu(0)]
    net = make_net(ctxs, hybridize=False)
    head = net[1]
    head.collect_params().setattr('grad_req', 'null')
    trainer = gluon.Trainer(net.collect_params(), name, dict(OPTIMIZERS[name]))
    data = batches(n=6)
    train(net, trainer, ctxs, data[:3])
    head.collect_params().setattr('grad_req', 'write')
    before = head.weight.data().asnumpy()
    train(net, trainer, ctxs, data[3:4])
    # first step of a bias-corrected Adam-family optimizer moves every coordinate by ~lr
    step = np.abs(head.weight.data().asnumpy() - before)
    assert 0.5 * OPTIMIZERS[name]['learning_rate'] < np.median(step) < 2 * OPTIMIZERS[name]['learning_rate']
    counts = trainer._updaters[0].optimizer._index_update_count
    assert counts[0] == 4 and counts[2] == 1


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_float16_parameter_with_multi_precision(name):
    """float16 weights (MXNet's CPU build has no float16 Dense, so a quadratic bowl)."""
    param = gluon.Parameter('w', shape=(50,), dtype='float16')
    param.initialize(mx.init.Zero())
    trainer = gluon.Trainer([param], name, {'learning_rate': 0.05, 'multi_precision': True})
    target = mx.nd.array(np.random.default_rng(0).uniform(1, 2, 50), dtype='float16')
    distances = []
    for _ in range(60):
        with autograd.record():
            loss = ((param.data() - target) ** 2).sum()
        loss.backward()
        trainer.step(1)
        distances.append(float(loss.asscalar()))
    master = trainer._updaters[0].states[0][0]
    assert param.data().dtype == np.float16 and master.dtype == np.float32
    assert distances[-1] < 0.25 * distances[0]
