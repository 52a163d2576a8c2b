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

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('pretrain', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
