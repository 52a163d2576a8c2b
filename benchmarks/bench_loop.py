#!/usr/bin/env python
"""Benchmark: one MNIST training epoch in the recipes' loop against a bare Gluon loop and
against PyTorch.

    python benchmarks/bench_loop.py --data-dir ../shared/data/mnist [--models lenet,mlp]
        [--rounds 3] [--images N] [--json out.json] [--no-torch]

For each model, in turns (a round runs every case once, so drifts in the machine's load
hit all alike), median over rounds:

* ``bare Gluon``: data in memory, ``autograd.record``, ``backward``, ``trainer.step``,
  nothing else (the model as ``mxnag.train.models.get_model`` makes it, hybridized the
  same way);
* ``bare Gluon + test pass``: the same, then a pass over the test images (2,000) as
  ``fit`` makes after each epoch: what ``mxnag loop (whole fit)`` compares with;
* ``mxnag loop``: ``mxnag.train.loop.fit`` for one epoch with every check on: the
  non-finite skip check, loss/accuracy metrics, the progress bar (written to a null
  file), the JSON-lines log and an end-of-epoch checkpoint. Timed: the epoch's training
  part (what ``fit`` reports as the epoch's seconds; x bare Gluon), and the whole call
  (test pass and checkpoint included; compare with bare Gluon + test pass);
* ``PyTorch``: the same network, ``torch.optim.NAdam`` (what 'adanag' equals), the same
  batches in memory, 2 threads, in a subprocess (when PyTorch is installed).

All use adanag at lr 2e-3 (PyTorch: NAdam at 2e-3), batch 128, the last partial batch
dropped. The table gives seconds per epoch, images/s and each case's ratio to the bare
Gluon loop.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TORCH_SCRIPT = r'''
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
data = np.load(spec['data'])
x, y = torch.from_numpy(data['x']), torch.from_numpy(data['y']).long()
torch.manual_seed(0)
if spec['model'] == 'lenet':
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(20, 50, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(800, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10))
else:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.NAdam(net.parameters(), lr=2e-3)
loss_fn = torch.nn.CrossEntropyLoss()
batch = spec['batch_size']
batches = len(x) // batch
for line in sys.stdin:  # one epoch per request, so the parent can take turns
    order = torch.from_numpy(np.random.RandomState(int(line)).permutation(len(x)))
    start = time.perf_counter()
    for b in range(batches):
        idx = order[b * batch:(b + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
    print(json.dumps({'seconds': time.perf_counter() - start, 'images': batches * batch}), flush=True)
'''


def load_data(data_dir, images):
    from mxnag.train import data
    train_x, train_y = data.load('mnist', data_dir, download=False)['train']
    if images:
        train_x, train_y = train_x[:images], train_y[:images]
    test_x, test_y = data.load('mnist', data_dir, download=False)['test']
    return (data.normalize(train_x), train_y.astype('float32'),
            data.normalize(test_x[:2000]), test_y[:2000].astype('float32'))


def _net(name):
    import mxnet as mx
    from mxnag.train import models
    net = models.get_model(name, classes=10)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    return net


def bare_gluon_epoch(name, arrays, batch_size, epoch, test_pass=False):
    """The bare loop: seconds and images of one epoch (and, with ``test_pass``, the
    seconds of the loop and a pass over the test images, as ``fit`` makes after an
    epoch)."""
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnag.train import data
    train_x, train_y = arrays[:2]
    net = _net(name)
    trainer = gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    loader = data.ArrayLoader(train_x, train_y, batch_size, seed=0, last_batch='discard')
    loader.epoch = epoch
    mx.nd.waitall()
    start = time.perf_counter()
    for x, y in loader:
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch_size)
    mx.nd.waitall()
    seconds = time.perf_counter() - start
    if test_pass:
        from mxnag.train import loop
        loop.evaluate(net, data.ArrayLoader(arrays[2], arrays[3], 1000, shuffle=False), [mx.cpu()])
        return seconds, time.perf_counter() - start, len(loader) * batch_size
    return seconds, len(loader) * batch_size


def mxnag_loop_epoch(name, arrays, batch_size, epoch, workdir):
    """``loop.fit`` for one epoch with every check on: (training seconds as fit reports
    them, whole call's seconds, images)."""
    import mxnet as mx
    from mxnet import gluon
    from mxnag.train import data, loop
    train_x, train_y, test_x, test_y = arrays
    net = _net(name)
    trainer = gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 2e-3})
    train = data.ArrayLoader(train_x, train_y, batch_size, seed=0, last_batch='discard')
    test = data.ArrayLoader(test_x, test_y, 1000, shuffle=False)
    log = loop.MetricsLog(os.path.join(workdir, 'log.jsonl'))
    mx.nd.waitall()
    start = time.perf_counter()
    with open(os.devnull, 'w') as null:
        saved = sys.stdout, sys.stderr  # the progress bar draws on them
        sys.stdout = sys.stderr = null
        try:
            history = loop.fit(net, trainer, train, test, [mx.cpu()], epoch + 1, start_epoch=epoch,
                               log=log, checkpoint_dir=os.path.join(workdir, 'ck'), keep=1,
                               progress=True, meta={'model': name})
        finally:
            sys.stdout, sys.stderr = saved
    return history[-1]['seconds'], time.perf_counter() - start, len(train) * batch_size


class TorchPeer:
    """PyTorch's epochs in a subprocess that answers turn by turn."""

    def __init__(self, name, arrays, batch_size, workdir):
        import numpy as np
        path = os.path.join(workdir, 'mnist_%s.npz' % name)
        np.savez(path, x=arrays[0], y=arrays[1])
        self.errors = open(os.path.join(workdir, 'torch_%s.err' % name), 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-c', TORCH_SCRIPT,
             json.dumps({'data': path, 'model': name, 'batch_size': batch_size})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True)

    def epoch(self, epoch):
        self.proc.stdin.write('%d\n' % epoch)
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.errors.flush()
            raise RuntimeError('PyTorch process ended: %s' % open(self.errors.name).read()[-500:])
        result = json.loads(line)
        return result['seconds'], result['images']

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.errors.close()


def run(models, rounds, data_dir, images, torch, batch_size=128):
    arrays = load_data(data_dir, images)
    results = {}
    with tempfile.TemporaryDirectory(prefix='mxnag-bench-loop-') as workdir:
        for name in models:
            peer = None
            torch_error = None
            if torch:
                try:
                    peer = TorchPeer(name, arrays, batch_size, workdir)
                    peer.epoch(0)  # warm up (and fail early)
                except Exception as err:  # noqa: BLE001  (reported in the table)
                    torch_error, peer = str(err), None
            bare_gluon_epoch(name, arrays, batch_size, 0)  # warm up: build the library, caches
            times = {'bare Gluon': [], 'bare Gluon + test pass': [], 'mxnag loop (training)': [],
                     'mxnag loop (whole fit)': []}
            if peer is not None:
                times['PyTorch NAdam'] = []
            seen = {}
            for r in range(rounds):
                seconds, with_test, n = bare_gluon_epoch(name, arrays, batch_size, r, test_pass=True)
                times['bare Gluon'].append(seconds)
                times['bare Gluon + test pass'].append(with_test)
                seen['bare Gluon'] = seen['bare Gluon + test pass'] = n
                train_s, whole_s, n = mxnag_loop_epoch(name, arrays, batch_size, r, workdir)
                times['mxnag loop (training)'].append(train_s)
                times['mxnag loop (whole fit)'].append(whole_s)
                seen['mxnag loop (training)'] = seen['mxnag loop (whole fit)'] = n
                if peer is not None:
                    seconds, seen['PyTorch NAdam'] = peer.epoch(r + 1)
                    times['PyTorch NAdam'].append(seconds)
            if peer is not None:
                peer.close()
            base = statistics.median(times['bare Gluon'])
            rows = {}
            for case, values in times.items():
                median = statistics.median(values)
                rows[case] = {'seconds': median, 'rounds': values,
                              'images_per_sec': seen[case] / median, 'x_bare': median / base}
            results[name] = {'rows': rows, 'torch_error': torch_error}
    return results


def table(results):
    lines = ['| model | loop | epoch s (median) | images/s | x bare Gluon |', '|---|---|---:|---:|---:|']
    for name, result in results.items():
        for case, row in result['rows'].items():
            lines.append('| %s | %s | %.2f | %.0f | %.3f |' % (name, case, row['seconds'],
                                                             row['images_per_sec'], row['x_bare']))
        if result['torch_error']:
            lines.append('| %s | PyTorch | - | - | not run: %s |' % (name, result['torch_error'][:80]))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python benchmarks/bench_loop.py',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', default=os.path.join('..', 'shared', 'data', 'mnist'))
    parser.add_argument('--models', default='lenet,mlp')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--images', type=int, default=0, help='first N training images (default all)')
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--no-torch', action='store_true')
    args = parser.parse_args(argv)
    import mxnag  # noqa: F401  (registers the optimizers)
    results = run(args.models.split(','), args.rounds, args.data_dir, args.images, not args.no_torch)
    print(table(results))
    if args.json:
        command = 'python benchmarks/bench_loop.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
        with open(args.json, 'w') as f:
            json.dump({'command': command, 'results': results}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
