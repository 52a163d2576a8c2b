#!/usr/bin/env python
"""The MNIST results table: sgd, nag, adam, nadam (MXNet's built-ins), adanag and adan on
mlp and lenet over several seeds.

    python recipes/compare_optimizers.py --data-dir ../shared/data/mnist --out-dir results/

Writes results/sweep.json (every run's history), results/sweep.md (the table in the
README) and results/sweep.png (test accuracy and training loss per epoch). Each
optimizer uses its tuned learning rate (mxnag.train.sweep.TUNED_LR); --tune re-derives them:
one epoch per grid value on the first 50k training images, scored on the last 10k.

Any data source and model compare the same way (shapes and classes from the source):

    python recipes/compare_optimizers.py --data folder:photos --models cifar_resnet20_v1 \
        --optimizers adanag,adam --lrs tuned_lr.json --target cifar_resnet20_v1=0.9

(--tune --data folder:photos writes that tuned_lr.json: the last sixth of the training
images is the validation; without --lrs each optimizer runs at its default rate.)
"""
import argparse
import json
import os
import sys

from mxnag.errors import MxnagError
from mxnag.train import checkpoint, cli, extras, models as models_lib, settings, sweep


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--data-dir', help='directory with the MNIST IDX files')
    parser.add_argument('--data', metavar='SPEC', help='data source, as recipes/pretrain.py takes '
                        'it (default mnist)')
    parser.add_argument('--target', action='append', default=[], metavar='MODEL=ACCURACY',
                        help='time each run of MODEL to this test accuracy (0-1; MNIST: '
                        'mlp=0.98, lenet=0.99)')
    parser.add_argument('--models', default='mlp,lenet')
    parser.add_argument('--optimizers', default=','.join(sweep.OPTIMIZERS))
    parser.add_argument('--seeds', type=settings.positive_int, default=3)
    parser.add_argument('--epochs', type=settings.positive_int, default=10)
    parser.add_argument('--out-dir', default='results')
    parser.add_argument('--log', help='JSON-lines metrics log of all runs')
    parser.add_argument('--tune', action='store_true',
                        help='tune the learning rates instead (writes tuned_lr.json)')
    parser.add_argument('--lrs', help='JSON file of learning rates {model: {optimizer: lr}}')
    args = parser.parse_args(argv)
    models = args.models.split(',')
    optimizers = args.optimizers.split(',')
    for model in models:
        models_lib.check_model(model)
    for optimizer in optimizers:
        if optimizer not in sweep.LR_GRID:
            raise MxnagError('--optimizers: %r is not one of %s'
                             % (optimizer, ', '.join(sweep.OPTIMIZERS)))
    targets = {}
    for item in args.target:
        model, _, value = item.partition('=')
        try:
            targets[model] = float(value)
        except ValueError:
            raise MxnagError('--target: %r is not like MODEL=ACCURACY' % item) from None
        if model not in models or not 0 < targets[model] <= 1:
            raise MxnagError('--target: %r: want one of --models and an accuracy in (0, 1]' % item)
    if not args.tune:  # the plot comes last: know now that it can be drawn
        extras.require('matplotlib', "the sweep's plot")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.tune:
        best = sweep.tune(models, optimizers, args.data_dir, report=print, data=args.data)
        checkpoint.write_json(os.path.join(args.out_dir, 'tuned_lr.json'), best)
        print(json.dumps(best, indent=1))
        return 0
    lrs = None
    if args.lrs:
        with open(args.lrs) as f:
            lrs = json.load(f)
    result = sweep.compare(models, optimizers, range(args.seeds), args.epochs, args.data_dir,
                           lrs, args.log, report=print, data=args.data, targets=targets or None)
    result['command'] = ' '.join(['python', 'recipes/compare_optimizers.py'] + (argv or sys.argv[1:]))
    checkpoint.write_json(os.path.join(args.out_dir, 'sweep.json'), result)
    table = sweep.markdown(result)
    with open(os.path.join(args.out_dir, 'sweep.md'), 'w') as f:
        f.write(table)
    sweep.plot(result, os.path.join(args.out_dir, 'sweep.png'))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
