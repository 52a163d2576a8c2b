"""A recipe-like training run for the distributed tests: the library's own path
(Workers, sharded loader, train), but every rank saves its final weights."""
import os
import sys

import mxnet as mx

from mxnag.train import cli, run, settings, sweep


def main(out_dir, kvstore, epochs, *extra):
    args = sweep.run_args('mlp', 'adanag', 0.002, int(epochs), seed=3, batch_size=20,
                            data_dir=os.environ['MNIST_DIR'])
    args.kvstore, args.shots = kvstore, 50
    args.checkpoint_dir = os.path.join(out_dir, 'ck') if 'checkpoint' in extra else None
    args.resume, args.keep = 'resume' in extra, 4
    if 'state8' in extra:  # 8-bit optimizer states, on the servers
        args.opt_arg = list(args.opt_arg) + ['state_bits=8']
    workers = run.Workers(kvstore)
    train_loader, test_loader, classes = run.load_data(args, workers=workers)
    net = run.new_model('mlp', classes, [mx.cpu()], args.seed)
    config = settings.config_of(args, num_classes=classes)
    run.train(net, args, train_loader, test_loader, [mx.cpu()], config, 'dist', workers)
    net.save_parameters(os.path.join(out_dir, 'rank%d.params' % workers.rank))
    print('rank %d of %d done, %d steps per epoch' % (workers.rank, workers.num_workers, len(train_loader)))


if __name__ == '__main__':
    sys.exit(cli.run_cli(lambda argv: main(*argv), sys.argv[1:]))
