#!/usr/bin/env python
"""Benchmark: training throughput of LeNet on MNIST from each kind of data source.

    python benchmarks/bench_sources.py --data-dir ../shared/data/mnist --folder runs/sources/mnist
        [--batches 150] [--rounds 3] [--json out.json]

``--folder`` is MNIST written as an image folder (``recipes/export_images.py --data mnist``).
Cases, in turns (each round runs every case once), median images/s over rounds, and each
case's ratio to the in-memory source of the same round: ``--data mnist`` (the IDX files in
memory, standardised once, batched by fancy indexing) and ``--data folder:...`` decoded
image by image (PNG) with 0, 1 and 2 worker processes. Each case trains LeNet with adanag
(batch 128, ``--augment none``) for ``--batches`` batches after 5 warm-up batches (which
also start the workers), through the recipes' loaders and a plain Gluon training step.
"""
import argparse
import json
import os
import statistics
import sys
import time

import mxnet as mx
from mxnet import autograd, gluon

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mxnag.train import run, settings  # noqa: E402

WARMUP = 5


def images_per_second(spec, data_dir, workers, batches):
    args = settings.namespace('pretrain', data=spec, data_dir=data_dir, workers=workers,
                              augment='none', model='lenet', batch_size=128)
    train, _, classes = run.load_data(args)
    net = run.new_model('lenet', classes, [mx.cpu()], 0)
    trainer = gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    seen, start, b = 0, None, 0
    while b < WARMUP + batches:  # epochs after epochs, until enough batches
        for x, y in train:
            if b == WARMUP:
                mx.nd.waitall()
                start = time.perf_counter()
            x, y = x.as_in_context(mx.cpu()), y.as_in_context(mx.cpu())  # workers' are cpu_shared
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            if b >= WARMUP:
                seen += x.shape[0]
            b += 1
            if b == WARMUP + batches:
                break
    mx.nd.waitall()
    return seen / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--folder', required=True, help='MNIST as an image folder')
    parser.add_argument('--batches', type=int, default=150)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    cases = [('mnist (in memory)', 'mnist', 0)] + \
        [('folder, %d workers' % w, 'folder:%s' % args.folder, w) for w in (0, 1, 2)]
    rates = {name: [] for name, _, _ in cases}
    ratios = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        this_round = {}
        for name, spec, workers in cases:
            this_round[name] = images_per_second(spec, args.data_dir, workers, args.batches)
            rates[name].append(this_round[name])
        for name in rates:
            ratios[name].append(this_round[name] / this_round[cases[0][0]])
    rows = [{'source': name, 'workers': workers, 'images_per_second': statistics.median(rates[name]),
             'ratio_to_memory': statistics.median(ratios[name]), 'rounds': rates[name]}
            for name, _, workers in cases]
    print('| source | workers | images/s (median of %d) | x in-memory |' % args.rounds)
    print('|---|---|---|---|')
    for row in rows:
        print('| %s | %d | %.0f | %.2f |' % (row['source'], row['workers'], row['images_per_second'],
                                             row['ratio_to_memory']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'command': ' '.join(['python'] + sys.argv), 'rows': rows}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
