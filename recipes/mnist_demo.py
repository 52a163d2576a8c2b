"""Train a small classifier on MNIST with gluon.Trainer(..., 'adanag') and print its
test accuracy: the shortest end-to-end use of mxnag.

    python recipes/mnist_demo.py --data-dir ../shared/data/mnist --epochs 2
"""
import argparse
import sys
import time

import mxnet as mx
from mxnet import autograd, gluon

import mxnag
from mxnag import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', help='directory with the four MNIST IDX files')
    parser.add_argument('--optimizer', default='adanag')
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        splits = data.load('mnist', args.data_dir)
    except data.DataError as err:
        parser.exit(2, 'error: %s\n' % err)
    mx.random.seed(args.seed)
    train = data.ArrayLoader(data.normalize(splits['train'][0]), splits['train'][1],
                             args.batch_size, seed=args.seed)
    test = data.ArrayLoader(data.normalize(splits['test'][0]), splits['test'][1], 1000,
                            shuffle=False)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(20, 5, activation='relu'), gluon.nn.MaxPool2D(2),
            gluon.nn.Conv2D(50, 5, activation='relu'), gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(), gluon.nn.Dense(500, activation='relu'), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), args.optimizer, {'learning_rate': args.lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for epoch in range(args.epochs):
        start, total = time.time(), 0.0
        for x, y in train:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            total += loss.sum()
        metric = mx.metric.Accuracy()
        for x, y in test:
            metric.update(y, net(x))
        print('epoch %d  train loss %.4f  test accuracy %.4f  (%.0f s)'
              % (epoch + 1, total.asscalar() / len(train.data), metric.get()[1], time.time() - start))
    print('mxnag %s, %s: MNIST test accuracy %.4f' % (mxnag.__version__, args.optimizer, metric.get()[1]))


if __name__ == '__main__':
    sys.exit(main())
