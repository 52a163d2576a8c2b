#!/usr/bin/env python
"""Split-MNIST, class-incremental, one pass: the DER paper's protocol through the stream
recipe, side by side with the published numbers.

    python recipes/split_mnist.py --data-dir ../shared/data/mnist --tune      # learning rates
    python recipes/split_mnist.py --data-dir ../shared/data/mnist --out-dir results

The MLP 784-100-100-10 with one 10-way head learns the tasks 0-1, 2-3, 4-5, 6-7, 8-9 one
after another, each training image once in batches of 10, with a reservoir memory of
200, 500 or 5120 examples; the class-incremental accuracy is the mean over the five
tasks' test accuracies after the last. Rows: ER and DER++ with plain SGD at the authors'
best hyperparameters (mxnag.train.split_mnist.AUTHORS), ER-ACE with SGD at ER's learning
rate, and ER, ER-ACE and DER++ with adanag, adan and nadamw at the learning rates --tune
chose (on the last 10,000 training images, seed 100, never the test set; written to
OUT_DIR/split_mnist_tuned.json and read from there). Each row runs --seeds seeds (0, 1,
...). Writes OUT_DIR/split_mnist.json ({"runs": [{"method", "optimizer", "lr", "buffer",
"memory", "seeds", "accuracies", "mean", "std", "latency_p99_ratio", "args"}]}; args with
--seed S --data-dir D --out F added reproduce a run with recipes/mnist_stream.py) and
OUT_DIR/split_mnist.md.
"""
import argparse
import json
import os
import sys

from mxnag.errors import MxnagError
from mxnag.train import checkpoint, cli, settings, split_mnist as sm


def configurations(tuned, buffers, optimizers):
    """(label, lr -> argv) of every row; SGD rows at the authors' learning rates."""
    rows = []
    for buffer in buffers:
        rows.append(('er sgd %d' % buffer, lambda lr, b=buffer: sm.authors_row('er', b, lr=lr),
                     sm.AUTHORS[('er', buffer)]['lr']))
        rows.append(('der++ sgd %d' % buffer, lambda lr, b=buffer: sm.authors_row('der++', b, lr=lr),
                     sm.AUTHORS[('der++', buffer)]['lr']))
        rows.append(('er-ace sgd %d' % buffer,
                     lambda lr, b=buffer: sm.arguments('er-ace', 'sgd', lr, b),
                     sm.AUTHORS[('er', buffer)]['lr']))
        for optimizer in optimizers:
            for method in ('er', 'er-ace', 'der++'):
                label = '%s %s %d' % (method, optimizer, buffer)
                make = (lambda lr, m=method, o=optimizer, b=buffer:
                        sm.authors_row(m, b, o, lr) if m != 'er-ace' else sm.arguments(m, o, lr, b))
                rows.append((label, make, tuned.get(label)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--data-dir', help='directory with the MNIST IDX files')
    parser.add_argument('--seeds', type=settings.positive_int, default=3)
    parser.add_argument('--buffers', default='200,500,5120')
    parser.add_argument('--optimizers', default=','.join(sm.MXNAG_OPTIMIZERS))
    parser.add_argument('--out-dir', default='results')
    parser.add_argument('--tune', action='store_true', help='choose the mxnag optimizers\' '
                        'learning rates instead (writes split_mnist_tuned.json)')
    args = parser.parse_args(argv)
    try:
        buffers = [int(b) for b in args.buffers.split(',')]
    except ValueError:
        raise MxnagError('--buffers: %r is not a list of sizes' % args.buffers) from None
    if any(b not in sm.BUFFERS for b in buffers):
        raise MxnagError('--buffers: %r: the protocol has %s'
                         % (args.buffers, ', '.join(map(str, sm.BUFFERS))))
    optimizers = [o for o in args.optimizers.split(',') if o]
    tuned_path = os.path.join(args.out_dir, 'split_mnist_tuned.json')
    os.makedirs(args.out_dir, exist_ok=True)
    if args.tune:
        configs = [(label, make) for label, make, _ in configurations({}, buffers, optimizers)
                   if ' sgd ' not in label]
        best = sm.tune(configs, args.data_dir)
        checkpoint.write_json(tuned_path, best)
        print(json.dumps(best, indent=1))
        return 0
    tuned = {}
    if os.path.exists(tuned_path):
        with open(tuned_path) as f:
            tuned = json.load(f)
    runs = []
    for label, make, lr in configurations(tuned, buffers, optimizers):
        if lr is None:
            raise MxnagError('%s: no learning rate for %s: run --tune first' % (tuned_path, label))
        runs.append(sm.run_row(make(lr), range(args.seeds), args.data_dir))
        checkpoint.write_json(os.path.join(args.out_dir, 'split_mnist.json'), {'runs': runs})
    table = sm.markdown(runs)
    checkpoint.write_file(os.path.join(args.out_dir, 'split_mnist.md'),
                          lambda tmp: open(tmp, 'w').write(table))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
