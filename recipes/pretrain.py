#!/usr/bin/env python
"""Train a classifier on any data source and save a checkpoint.

    python recipes/pretrain.py --data folder:photos --model cifar_resnet20_v1 --epochs 10 \
        --workers 2 --out results.json --save ckpt.params

--data: mnist, fashion-mnist (with --data-dir), cifar10:PATH or cifar100:PATH (the python
or binary version's files, as downloaded and extracted), folder:PATH (one sub-folder of
images per class, train/ and test/ inside or split off by --val-fraction), rec:PREFIX
(im2rec's PREFIX.rec and PREFIX.idx). Images are resized to --input-size, augmented as
GluonCV's training scripts do (--augment) and standardised per channel (--normalize);
--workers N decodes them in N processes. Writes the results JSON (--out: test_accuracy,
history, timings, config, class_names), a checkpoint of the final network (--save: for
recipes/finetune.py), per-epoch checkpoints (--checkpoint-dir, continued exactly by
--resume) and a live metrics log (--log). Bad input ends with exit status 2 and one line
naming it. recipes/mnist_pretrain.py is the same recipe.
"""
import sys

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('pretrain', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
