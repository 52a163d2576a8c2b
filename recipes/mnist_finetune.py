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

import sys

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('finetune', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
