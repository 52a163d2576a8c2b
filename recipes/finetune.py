#!/usr/bin/env python
"""Fine-tune a pretrained classifier on new classes of any data source; optionally also
train the same model from scratch on the same examples.

    python recipes/finetune.py --pretrained ckpt.params --data folder:new-photos \
        --classes all --shots 100 --compare-scratch --out results.json

The checkpoint (from recipes/pretrain.py --save) brings its model, its input size and its
normalisation; its output layer is replaced by a fresh one for the new classes. The
features are frozen (--features freeze) or trained with --features-lr-mult times the
learning rate (--features lr_mult, default). --data as in recipes/pretrain.py. The results
JSON has test_accuracy and class_names, and with --compare-scratch scratch_test_accuracy.
recipes/mnist_finetune.py is the same recipe.
"""
import sys

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('finetune', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
