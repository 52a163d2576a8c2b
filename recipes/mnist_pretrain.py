#!/usr/bin/env python
"""Train a classifier on MNIST (or a subset of its classes) and save a checkpoint.

    python recipes/mnist_pretrain.py --model lenet --optimizer adanag --epochs 3 \\
        --data-dir ../shared/data/mnist --classes 0-4 --out results.json --save ckpt.params

Writes the results JSON (--out: test_accuracy, per-epoch history, timings, config), a
checkpoint of the final network (--save: ckpt.params, ckpt.states, ckpt.json) for
mnist_finetune.py, per-epoch checkpoints (--checkpoint-dir, continued by --resume) and a
live metrics log (--log). Bad input ends with exit status 2 and one line naming it.
"""
import sys
import time

from mxnag.train import checkpoint, cli, run, settings


def main(argv=None):
    args = cli.parser_for('pretrain', __doc__).parse_args(argv)
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = run.prepare(args)
    config = settings.config_of(args, num_classes=num_classes)
    net = run.new_model(args.model, num_classes, contexts, args.seed)
    history, trainer, _ = run.train(net, args, train_loader, test_loader, contexts,
                                    config, 'pretrain', workers)
    result = run.summary(history, config, started)
    with run.writing(args):
        if args.save and workers.chief:
            checkpoint.save(args.save, net, {'model': args.model, 'num_classes': num_classes,
                                             'config': config, 'epoch': len(history),
                                             'history': history}, trainer, workers.states_saver())
        if args.out and workers.chief:
            checkpoint.write_json(args.out, result)
    print('test accuracy %.4f after %d epochs' % (result['test_accuracy'], result['epochs_run']))
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
