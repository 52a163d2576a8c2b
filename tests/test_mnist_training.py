"""A short real training run on an MNIST subset: the loss falls, accuracy rises."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import mxnag  # noqa: F401
from mxnag.train import data
from optimizers import OPTIMIZERS


@pytest.mark.parametrize('name,lr', [(info.name, info.mnist_lr) for info in OPTIMIZERS])
def test_loss_falls_on_mnist_subset(name, lr, mnist_dir):
    splits = data.load('mnist', mnist_dir, download=False)
    images, labels = data.subset(*splits['train'], shots=100, seed=0)
    loader = data.ArrayLoader(data.normalize(images), labels, 50, seed=0)
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(128, activation='relu'), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), name, {'learning_rate': lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    epoch_losses = []
    for _ in range(8):
        total = 0.0
        for x, y in loader:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            total += float(loss.sum().asscalar())
        epoch_losses.append(total / len(labels))
    assert epoch_losses[-1] < 0.3 * epoch_losses[0], epoch_losses
    test_x, test_y = splits['test']
    predictions = net(mx.nd.array(data.normalize(test_x[:2000]))).argmax(axis=1).asnumpy()
    assert np.mean(predictions == test_y[:2000]) > 0.8
