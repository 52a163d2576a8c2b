"""What users train, on the fused CPU path: every model family the recipes offer, a
representative of each kind of weight oneDNN lays out its own way (dense; plain, grouped,
depthwise and transposed convolutions in 1, 2 and 3 dimensions), Gluon and GluonCV zoo
models at the sizes users train (3x224x224, 3x32x32), hybridized, with inference passes
around each step (which leave convolution and dense weights in oneDNN's layouts), every
fused step compared with the composed step from the same inputs; on one and two CPU
contexts, and float16 weights with master weights. The whole zoo is
``benchmarks/zoo_check.py``, whose functions these tests use. Also the inputs the fused
operators once misread (mixed dtypes in a group, kvstore copies on cpu_pinned, OpenMP
after fork, clip bounds outside float32's range)."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

import mxnag  # noqa: F401
from mxnag import kernels
from mxnag.train import models
from mxnag.kernels import fused_cpu

from conftest import ROOT
from optimizers import OPTIMIZERS as TABLE

OPTIMIZERS = sorted(info.name for info in TABLE)
MODELS = ['mlp', 'lenet', 'seed-cnn', 'resnet18_v1', 'resnet18_v2', 'mobilenetv2_0.25']

pytestmark = pytest.mark.skipif(not fused_cpu.available(), reason='fused CPU operators not built')


def _zoo_check():
    """benchmarks/zoo_check.py (not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        'zoo_check', os.path.join(ROOT, 'benchmarks', 'zoo_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zoo = _zoo_check()
assert set(zoo.OPTIMIZER_ARGS) == set(OPTIMIZERS)  # the script checks every optimizer


@pytest.fixture
def paths(monkeypatch):
    """``use(on)``: the fused CPU path allowed (or forced off); returns the numbers of
    groups each backend updates from then on."""
    active = []

    def use(on):
        monkeypatch.setattr(fused_cpu, 'FORCED_OFF', not on)
        while active:
            active.pop().__exit__()
        active.append(zoo.StepChecker(check=False).__enter__())
        return active[0].calls
    yield use
    while active:
        active.pop().__exit__()


def assert_trains(make_net, optimizer, shape, **options):
    result = zoo.check_training(make_net, optimizer, shape, **options)
    assert not result['problems'], result
    return result


@pytest.mark.parametrize('optimizer', OPTIMIZERS)
@pytest.mark.parametrize('name', MODELS)
def test_recipe_models_train_the_same_on_fused_and_composed_paths(name, optimizer):
    """The recipes' models at their input size (1x28x28)."""
    assert_trains(lambda: models.get_model(name, classes=10), optimizer, (8, 1, 28, 28))


@pytest.mark.parametrize('optimizer', OPTIMIZERS)
@pytest.mark.parametrize('kind', sorted(zoo.LAYER_NETS))
def test_every_kind_of_weight_layout(kind, optimizer):
    """Dense, and plain, grouped, depthwise and transposed (also grouped) convolutions in
    1, 2 and 3 dimensions: oneDNN gives grouped weights one dimension more than the array
    (5-D for a 4-D weight, 6-D for a 3-D convolution's), which the in-place Reshape used
    before could not reorder (1-D and 2-D) or left as it was (3-D)."""
    assert_trains(lambda: zoo.make_model(kind), optimizer, zoo.LAYER_NETS[kind])


@pytest.mark.parametrize('name, size', [('mobilenetv2_0.25', 224), ('mobilenetv2_0.25', 32),
                                        ('mobilenet0.25', 32), ('cifar_resnet20_v1', 32),
                                        ('mobilenetv3_small', 32), ('se_resnet18_v1', 32)])
def test_zoo_models_at_the_sizes_users_train(name, size):
    """Gluon's and GluonCV's models with 3-channel inputs (the issue's crash: MobileNetV2's
    depthwise weights at 3x224x224, batch 2); every optimizer in
    ``benchmarks/zoo_check.py``."""
    shape = (zoo.SIZES[size], 3, size, size)
    for optimizer in OPTIMIZERS if name == 'mobilenetv2_0.25' else ['adanag']:
        assert_trains(lambda: zoo.make_model(name), optimizer, shape)


def test_float16_weights_with_master_weights():
    """multi_precision: float16 weights (4-D, as a convolution's), float32 master weights.
    MXNet 1.9.1's CPU operators train no convolution or dense layer in float16 ("FP16 gemm
    on cpu not implemented!"), and its oneDNN operators take no float16 array, so such
    weights never meet oneDNN's layouts on the CPU: an elementwise model of them."""
    class Scale(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.kernel = self.params.get('kernel', shape=(10, 3, 4, 4))
                self.bias = self.params.get('bias', shape=(10,), init='zeros')

        def hybrid_forward(self, F, x, kernel, bias):  # noqa: N803
            products = F.broadcast_mul(x.expand_dims(1), kernel.expand_dims(0))
            return F.broadcast_add(products.sum(axis=(2, 3, 4)), bias.expand_dims(0))

    for optimizer in OPTIMIZERS:
        result = assert_trains(Scale, optimizer, (8, 3, 4, 4), dtype='float16')
        assert result['fused_groups'] == 3


@pytest.mark.parametrize('update_on_kvstore', [False, True])
@pytest.mark.parametrize('name, shape', [('lenet', (8, 1, 28, 28)),
                                         ('layers-conv2d', zoo.LAYER_NETS['layers-conv2d']),
                                         ('mobilenetv2_0.25', (8, 3, 32, 32))])
def test_two_cpu_contexts_with_device_kvstore(name, shape, update_on_kvstore):
    """kvstore='device' on cpu(0) and cpu(1); update_on_kvstore=True updates the kvstore's
    copies, which live on cpu_pinned(0), on the fused path too. Every device copy ends
    identical."""
    make = (lambda: models.get_model(name, classes=10)) if name == 'lenet' else \
        (lambda: zoo.make_model(name))
    for optimizer in OPTIMIZERS if name == 'layers-conv2d' else ['adanag']:
        assert_trains(make, optimizer, shape, ctxs=[mx.cpu(0), mx.cpu(1)], kvstore='device',
                      update_on_kvstore=update_on_kvstore)


def test_the_check_fails_a_lost_or_misread_update(monkeypatch):
    """The comparison is not blind: a fused step that drops the update of one weight, or
    reads a weight's layout wrong (its elements in another order), fails it."""
    real = fused_cpu.update

    def dropping(rule, weights, grads, *args, **kwargs):
        saved = [w.copy() for w in weights]
        real(rule, weights, grads, *args, **kwargs)
        saved[-1].copyto(weights[-1])

    def scrambling(rule, weights, grads, *args, **kwargs):
        real(rule, weights, grads, *args, **kwargs)
        for w in weights:  # as if a blocked layout were read as the default one
            if len(w.shape) >= 2:
                w[:] = nd.array(w.asnumpy().reshape(w.shape[1], w.shape[0], -1)
                                .transpose(1, 0, 2).reshape(w.shape))
    for wrong in (dropping, scrambling):
        monkeypatch.setattr(fused_cpu, 'update', wrong)
        result = zoo.check_training(lambda: zoo.make_model('layers-conv2d'), 'adanag',
                                    zoo.LAYER_NETS['layers-conv2d'])
        assert any('differs from the composed step' in p for p in result['problems']), result


@pytest.mark.parametrize('size, batch', [(224, 2), (32, 8)])
def test_the_issue_example_runs_as_written(size, batch):
    """The README's usage with MobileNetV2 (depthwise convolutions) and a validation pass
    between steps, MXNet's default (threaded) engine, in a fresh process, every optimizer."""
    script = textwrap.dedent('''
        import sys
        import mxnet as mx, numpy as np
        from mxnet import gluon, autograd
        import mxnag
        size, batch = int(sys.argv[1]), int(sys.argv[2])
        for name in sys.argv[3:]:
            net = gluon.model_zoo.vision.get_model('mobilenetv2_0.25', classes=10)
            net.initialize(mx.init.Xavier()); net.hybridize()
            tr = gluon.Trainer(net.collect_params(), name, {'learning_rate': 1e-3, 'wd': 1e-4})
            L = gluon.loss.SoftmaxCrossEntropyLoss()
            x = mx.nd.random.normal(shape=(batch, 3, size, size)); y = mx.nd.arange(batch) % 10
            for i in range(4):
                with autograd.record():
                    l = L(net(x), y).mean()
                l.backward(); tr.step(batch)
                net(x).wait_to_read()          # a validation pass between steps
            mx.nd.waitall()
            assert mxnag.kernels.backend_for(list(net.collect_params().values())[0].data()) == 'fused-cpu'
        print('trained')
    ''')
    env = {k: v for k, v in os.environ.items() if k not in ('MXNAG_FUSED', 'MXNET_ENGINE_TYPE')}
    proc = subprocess.run([sys.executable, '-c', script, str(size), str(batch)] + OPTIMIZERS,
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0 and 'trained' in proc.stdout, proc.stderr[-2000:]


# (operator, data shape, weight shape, arguments): each kind of weight oneDNN reorders
BLOCKED = {
    'dense': (nd.FullyConnected, (4, 64), (32, 64), dict(num_hidden=32)),
    'conv2d': (nd.Convolution, (2, 8, 8, 8), (16, 8, 3, 3), dict(kernel=(3, 3), num_filter=16)),
    'grouped-conv2d': (nd.Convolution, (2, 8, 8, 8), (16, 2, 3, 3),
                       dict(kernel=(3, 3), num_filter=16, num_group=4)),
    'depthwise-conv2d': (nd.Convolution, (2, 16, 8, 8), (16, 1, 3, 3),
                         dict(kernel=(3, 3), num_filter=16, num_group=16)),
    'grouped-conv1d': (nd.Convolution, (2, 8, 16), (16, 2, 3), dict(kernel=(3,), num_filter=16, num_group=4)),
    'conv3d': (nd.Convolution, (2, 4, 6, 6, 6), (8, 4, 3, 3, 3), dict(kernel=(3, 3, 3), num_filter=8)),
    'grouped-conv3d': (nd.Convolution, (2, 8, 6, 6, 6), (8, 2, 3, 3, 3),
                       dict(kernel=(3, 3, 3), num_filter=8, num_group=4)),
    'grouped-deconv2d': (nd.Deconvolution, (2, 8, 8, 8), (8, 4, 3, 3),
                         dict(kernel=(3, 3), num_filter=8, num_group=2)),
}


@pytest.mark.parametrize('kind', sorted(BLOCKED))
def test_blocked_layout_weight_is_updated_in_place_exactly(kind, rng):
    """A weight that an inference pass left in oneDNN's layout for its kind of layer, and a
    gradient in it too, against a float64 reference."""
    op, data_shape, shape, arguments = BLOCKED[kind]

    def blocked(values):
        array = nd.array(values)
        op(nd.array(rng.standard_normal(data_shape)), array, no_bias=True, **arguments).wait_to_read()
        nd.waitall()  # the reorder into oneDNN's layout has run
        return array

    w0 = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    weight, grad = blocked(w0), blocked(g)
    mean, var = nd.array(0.1 * g), nd.array(0.2 * g * g)
    coefs = dict(rescale_grad=0.5, clip_gradient=None, wd_into_grad=0.0, weight_scale=0.99,
                 beta1=0.9, beta2=0.999, epsilon=1e-8, one_minus_beta1=0.1,
                 one_minus_beta2=0.001, grad_coef=0.01, mean_coef=0.02,
                 var_scale=1.5)
    assert kernels.backend_for(weight) == 'fused-cpu'
    kernels.update(mxnag.AdaNAG.rule, weight, grad, (mean, var), coefs)
    g64, w64 = 0.5 * g.astype(np.float64), w0.astype(np.float64)
    m = 0.9 * 0.1 * g + 0.1 * g64
    v = 0.999 * 0.2 * g.astype(np.float64) ** 2 + 0.001 * g64 ** 2
    want = w64 * 0.99 - (0.01 * g64 + 0.02 * m) / (np.sqrt(v) * 1.5 + 1e-8)
    np.testing.assert_allclose(mean.asnumpy(), m, rtol=1e-5)
    np.testing.assert_allclose(weight.asnumpy(), want, rtol=1e-5, atol=1e-6)


def test_mxnet_has_onednn_and_its_reorder_function():
    """This wheel is built with oneDNN, and exports what ``to_default_layout`` calls."""
    from mxnet.base import _LIB
    assert fused_cpu._has_onednn(_LIB)
    assert fused_cpu._reorder_to_default() is not None


def test_without_mxnet_reorder_function_the_composed_update_is_used():
    """Where MXNet has oneDNN but its reorder cannot be found, the fused operators could not
    write a weight in oneDNN's layout: one warning, and the composed update, never a crash."""
    script = textwrap.dedent('''
        import mxnet as mx
        from mxnag.kernels import fused_cpu
        fused_cpu._REORDER = '_ZNK5mxnet7NDArray13NoSuchMethodEv'
        import mxnag
        w = mx.nd.ones((16, 8, 3, 3))
        print(mxnag.kernels.backend_for(w))
        opt = mx.optimizer.create('adanag', learning_rate=0.1)
        opt.update(0, w, mx.nd.ones(w.shape), opt.create_state(0, w))
        print(float(w[0, 0, 0, 0].asscalar()))
    ''')
    env = {k: v for k, v in os.environ.items() if k != 'MXNAG_FUSED'}
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    backend, value = proc.stdout.split()
    assert backend == 'composed' and 0.85 < float(value) < 0.95, proc.stdout  # it moved by ~lr
    assert "exports no _ZNK5mxnet7NDArray13NoSuchMethodEv" in proc.stderr
    assert proc.stderr.count('fused CPU optimizer kernels unavailable') == 1, proc.stderr


ADANAG_COEFS = dict(rescale_grad=1.0, clip_gradient=None, beta1=0.9, beta2=0.999, epsilon=1e-8,
                    one_minus_beta1=0.1, one_minus_beta2=0.001)


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
    keys = ['num_weights', 'multi_precision', 'state_bits', 'rescale_grad', 'clip_gradient', 'beta1',
            'beta2', 'epsilon', 'one_minus_beta1', 'one_minus_beta2', 'wd_into_grad', 'weight_scale',
            'grad_coef', 'mean_coef', 'var_scale', 'step_scalars', 'step_slot']
    values = ['2', '0', '32', '1.0', '-1.0', '0.9', '0.999', '1e-08', '0.1', '0.001'] + ['0.0,0.0'] + \
        ['1.0,1.0'] * 4 + ['grad_coef,mean_coef,var_scale', '0,0']
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
def test_host_memory_contexts_use_the_fused_path(device_type, rng, paths):
    calls = paths(True)
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
def test_both_paths_accept_the_same_clip_bounds(clip, dtype, rng, paths):
    values = rng.standard_normal((2, 999)) * 0.1

    def step(on):
        calls = paths(on)
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


def test_views_of_a_larger_array_update_in_place(rng, paths):
    """A weight that is a slice (or a reshaped view) of a larger array, as MXNet's own
    optimizers take it: only the view's elements change."""
    values = rng.standard_normal((8, 5))
    results = {}
    for on in (True, False):
        paths(on)
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
