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

from mxnag.train import checkpoint, recipe, finetune


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--pretrained', required=True, help='checkpoint .params from mnist_pretrain.py')
    parser.add_argument('--features', choices=('freeze', 'lr_mult'), default='lr_mult',
                        help='freeze the feature extractor or scale its learning rate (default lr_mult)')
    parser.add_argument('--features-lr-mult', type=recipe.nonnegative_float, default=0.1,
                        help='learning-rate multiplier of the features with --features lr_mult (default 0.1)')
    parser.add_argument('--train-last', type=recipe.nonnegative_int, default=0, metavar='K',
                        help='keep the last K feature layers training at the full rate (default 0)')
    parser.add_argument('--compare-scratch', action='store_true',
                        help='also train the same model from scratch on the same examples')
    recipe.add_data_args(parser, classes='5-9')
    recipe.add_training_args(parser, model=None, epochs=20, batch_size=64)
    recipe.add_output_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = recipe.prepare(args)
    net, meta = finetune.load_pretrained(args.pretrained, contexts, args.model)
    args.model = meta['model']
    head = finetune.replace_head(net, num_classes, contexts)
    finetune.set_feature_training(net, head, args.features, args.features_lr_mult, args.train_last)
    net.hybridize()
    config = recipe.config_of(args, num_classes=num_classes, features=args.features,
                                  features_lr_mult=args.features_lr_mult, train_last=args.train_last,
                                  pretrained=args.pretrained)
    history, _, _ = recipe.train(net, args, train_loader, test_loader, contexts, config,
                                     'finetune', workers)
    result = recipe.summary(history, config, started)
    print('fine-tuned: test accuracy %.4f' % result['test_accuracy'])
    if args.compare_scratch:
        scratch_args = argparse.Namespace(**vars(args))
        scratch_args.checkpoint_dir, scratch_args.resume = None, False
        scratch = recipe.new_model(args.model, num_classes, contexts, args.seed)
        scratch_history, _, _ = recipe.train(scratch, scratch_args, train_loader,
                                                 test_loader, contexts, config, 'scratch', workers)
        result['scratch_test_accuracy'] = scratch_history[-1]['test_accuracy']
        result['scratch_history'] = scratch_history
        print('from scratch: test accuracy %.4f' % result['scratch_test_accuracy'])
    if args.out and workers.chief:
        checkpoint.write_json(args.out, result)
    return 0


if __name__ == '__main__':
    sys.exit(recipe.run_cli(main))
