#!/usr/bin/env python
"""Write a data source's images as an image folder: FOLDER/train/<class>/<n>.png and
FOLDER/test/<class>/<n>.png, class folders named after the data set's classes.

    python recipes/export_images.py --data fashion-mnist --out-dir fashion-folder
    python recipes/pretrain.py --data folder:fashion-folder --model cifar_resnet20_v1 ...

--data takes what recipes/pretrain.py takes (mnist and fashion-mnist from --data-dir,
cifar10:PATH, ...); --per-class N keeps the first N images of each class of each split;
--format jpg writes JPEG (quality 95) instead of PNG.
"""
import argparse
import sys

from mxnag.train import cli, sources


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--data', required=True, metavar='SPEC')
    parser.add_argument('--data-dir')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--per-class', type=int)
    parser.add_argument('--format', choices=('png', 'jpg'), default='png')
    args = parser.parse_args(argv)
    source = sources.parse(args.data, args.data_dir)
    counts = sources.export_folder(source, args.out_dir, args.format, args.per_class)
    print('wrote %d training and %d test images of %d classes to %s'
          % (counts['train'], counts['test'], source.num_classes, args.out_dir))
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
