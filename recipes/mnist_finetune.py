#!/usr/bin/env python
"""Fine-tune a pretrained classifier on a new task: other digits with k examples per
class, or Fashion-MNIST; optionally also train the same model from scratch to sweep.

    python recipes/mnist_finetune.py --pretrained ckpt.params --classes 5-9 --shots 100 \\
        --data-dir ../shared/data/mnist --compare-scratch --out results.json

The checkpoint (from mnist_pretrain.py --save) brings its model; its output layer is
replaced by a fresh one for the new classes. The features are frozen (--features freeze)
or trained with --features-lr-mult times the learning rate (--features lr_mult, default).
The results JSON has test_accuracy, and with --compare-scratch scratch_test_accuracy.
"""
import argparse
import sys
import time

from mxnag.train import checkpoint, cli, finetune, run, settings


def main(argv=None):
    args = cli.parser_for('finetune', __doc__).parse_args(argv)
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = run.prepare(args)
    net, meta = finetune.load_pretrained(args.pretrained, contexts, args.model)
    args.model = meta['model']
    head = finetune.replace_head(net, num_classes, contexts)
    finetune.set_feature_training(net, head, args.features, args.features_lr_mult, args.train_last)
    net.hybridize(static_alloc=True, static_shape=True)
    config = settings.config_of(args, num_classes=num_classes)
    history, _, _ = run.train(net, args, train_loader, test_loader, contexts, config,
                              'finetune', workers)
    result = run.summary(history, config, started)
    print('fine-tuned: test accuracy %.4f' % result['test_accuracy'])
    if args.compare_scratch:
        scratch_args = argparse.Namespace(**vars(args))
        scratch_args.checkpoint_dir, scratch_args.resume = None, False
        scratch = run.new_model(args.model, num_classes, contexts, args.seed)
        scratch_history, _, _ = run.train(scratch, scratch_args, train_loader,
                                          test_loader, contexts, config, 'scratch', workers)
        result['scratch_test_accuracy'] = scratch_history[-1]['test_accuracy']
        result['scratch_history'] = scratch_history
        print('from scratch: test accuracy %.4f' % result['scratch_test_accuracy'])
    if args.out and workers.chief:
        with run.writing(args):
            checkpoint.write_json(args.out, result)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
