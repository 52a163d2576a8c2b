"""The model registry: mxnag's models and GluonCV's zoo at MNIST size."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import mxnag  # noqa: F401
from mxnag.train import finetune, models
from mxnag.errors import MxnagError


@pytest.mark.parametrize('name', ['mlp', 'lenet', 'seed-cnn', 'resnet18_v1', 'mobilenetv2_0.25'])
def test_model_trains_one_step_at_mnist_size(name):
    net = models.get_model(name, classes=7)
    assert isinstance(net, gluon.HybridBlock) and net._active  # hybridized by default
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'adanag')
    x = mx.nd.random.normal(shape=(4, 1, 28, 28))
    with autograd.record():
        out = net(x)
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(out, mx.nd.array([0, 1, 2, 6]))
    loss.backward()
    trainer.step(4)
    assert out.shape == (4, 7)
    assert np.isfinite(net(x).asnumpy()).all()


def test_mlp_is_784_128_64_10():
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    shapes = [p.shape for p in net.collect_params().values()]
    assert shapes == [(128, 784), (128,), (64, 128), (64,), (10, 64), (10,)]


def test_unknown_model_names_the_choices():
    with pytest.raises(MxnagError, match="unknown model 'lenet7'.*mlp, lenet, seed-cnn"):
        models.get_model('lenet7')


def test_zoo_models_listed_and_torch_does_not_block_gluoncv():
    names = models.model_names()
    assert names[:3] == ['mlp', 'lenet', 'seed-cnn'] and 'resnet50_v1b' in names


@pytest.mark.parametrize('name', ['lenet', 'seed-cnn'])
def test_replace_head_and_freeze(name):
    ctx = [mx.cpu()]
    net = models.get_model(name, classes=5, hybridize=False)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net(mx.nd.zeros((1, 1, 28, 28)))
    head = finetune.replace_head(net, 3, ctx)
    trained = [k for k, v in net.collect_params().items()  # BatchNorm's running stats excluded
               if v.grad_req != 'null' and v not in set(head.collect_params().values())]
    finetune.set_feature_training(net, head, 'freeze')
    net.hybridize()
    before = {k: net.collect_params()[k].data().asnumpy() for k in trained}
    trainer = gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 0.01})
    x = mx.nd.random.normal(shape=(6, 1, 28, 28))
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), mx.nd.array([0, 1, 2, 0, 1, 2]))
    loss.backward()
    trainer.step(6)
    assert net(x).shape == (6, 3)
    frozen = {k: v.data().asnumpy() for k, v in net.collect_params().items() if k in before}
    assert before and all(np.array_equal(before[k], frozen[k]) for k in before)
    assert head.weight.grad_req == 'write'


def test_replace_head_of_a_zoo_model_and_freeze():
    """GluonCV's ResNet-v1b keeps its head in ``fc``. (Weights are not compared here: with
    MKL-DNN, MXNet 1.9.1 reads back some ResNet conv weights changed after a forward pass
    at 28x28, frozen or not; with MXNET_MKLDNN_ENABLED=0 they stay equal.)"""
    ctx = [mx.cpu()]
    net = models.get_model('resnet18_v1b', classes=5, hybridize=False)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    head = finetune.replace_head(net, 3, ctx)
    assert net.fc is head
    finetune.set_feature_training(net, head, 'lr_mult', 0.25)
    head_params = set(head.collect_params().values())
    for param in net.collect_params().values():
        if param.grad_req != 'null':
            assert param.lr_mult == (1.0 if param in head_params else 0.25)
    assert net(mx.nd.zeros((2, 1, 28, 28))).shape == (2, 3)


def test_train_last_keeps_the_last_feature_layers_training():
    ctx = [mx.cpu()]
    net = models.get_model('lenet', classes=5, hybridize=False)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    head = finetune.replace_head(net, 3, ctx)
    finetune.set_feature_training(net, head, 'freeze', train_last=1)
    dense, conv = net.features[5], net.features[2]
    assert dense.weight.grad_req == 'write' and dense.weight.lr_mult == 1.0
    assert conv.weight.grad_req == 'null' and head.weight.grad_req == 'write'
    with pytest.raises(MxnagError, match='has 3 feature layers with parameters, 4 asked'):
        finetune.set_feature_training(net, head, 'freeze', train_last=4)
