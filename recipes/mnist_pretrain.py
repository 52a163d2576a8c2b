#!/usr/bin/env python
"""Train a classifier on MNIST (or a subset of its classes) and save a checkpoint.

    python recipes/mnist_pretrain.py --model lenet --optimizer adanag --epochs 3 \\
        --data-dir ../shared/data/mnist --classes 0-4 --out results.json --save ckpt.params

Writes the results JSON (--out: test_accuracy, per-epoch history, timings, config), a
checkpoint of the final network (--save: ckpt.params, ckpt.states, ckpt.json) for
mnist_finetune.py, per-epoch checkpoints (--checkpoint-dir, continued by --resume) and a
live metrics log (--log). Bad input ends with exit status 2 and one line naming it.
"""
import argparse
import sys
import time

from mxnag.train import checkpoint, recipe


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    recipe.add_data_args(parser)
    recipe.add_training_args(parser)
    recipe.add_output_args(parser)
    parser.add_argument('--save', help='write the final checkpoint to this .params path')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = recipe.prepare(args)
    config = recipe.config_of(args, num_classes=num_classes, features=None, pretrained=None)
    net = recipe.new_model(args.model, num_classes, contexts, args.seed)
    history, trainer, _ = recipe.train(net, args, train_loader, test_loader, contexts,
                                           config, 'pretrain', workers)
    if args.save and workers.chief:
        checkpoint.save(args.save, net, {'model': args.model, 'num_classes': num_classes,
                                         'config': config, 'epoch': len(history),
                                         'history': history}, trainer, workers.states_saver())
    result = recipe.summary(history, config, started)
    if args.out and workers.chief:
        checkpoint.write_json(args.out, result)
    print('test accuracy %.4f after %d epochs' % (result['test_accuracy'], result['epochs_run']))
    return 0


if __name__ == '__main__':
    sys.exit(recipe.run_cli(main))
