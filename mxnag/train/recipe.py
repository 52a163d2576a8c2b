"""What the recipes do, as library code: their command-line arguments, data preparation,
a training run with checkpoints and resume, and the results JSON. The scripts in
``recipes/`` only parse arguments and call these functions."""
import argparse
import os
import sys
import time

import mxnet as mx

from .. import __version__
from ..dist import worker
from . import checkpoint, data, loop, models
from ..errors import MxnagError, TrainingError  # noqa: F401  (MxnagError re-exported)

# Changing any of these makes a checkpoint of the run unusable for --resume.
RESUME_KEYS = ('model', 'dataset', 'classes', 'shots', 'optimizer', 'lr', 'opt_args', 'batch_size',
               'seed', 'lr_schedule', 'warmup_epochs', 'lr_step_epochs', 'lr_factor', 'epochs',
               'features', 'features_lr_mult', 'train_last', 'pretrained')


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be >= 1, got %d' % value)
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0, got %d' % value)
    return value


def nonnegative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError('must be >= 0, got %r' % text)
    return value


def epoch_list(text):
    try:
        return [float(x) for x in text.split(',') if x]
    except ValueError:
        raise argparse.ArgumentTypeError('not a comma-separated list of epochs: %r' % text) from None


def add_data_args(parser, dataset='mnist', classes=None):
    group = parser.add_argument_group('data')
    group.add_argument('--dataset', default=dataset, choices=sorted(data.DATASETS),
                       help='data set (default %(default)s)')
    group.add_argument('--data-dir', help='directory holding the four IDX files (.gz or raw); '
                       'default: $MXNAG_DATA_DIR/<dataset>, ~/.mxnet/datasets/<dataset>, '
                       '/usr/share/datasets/<dataset>, else download')
    group.add_argument('--classes', default=classes,
                       help="classes to keep, relabelled from 0: '0-4', '3,8' (default: all)")
    group.add_argument('--shots', type=positive_int,
                       help='k training examples per class, chosen with --seed (default: all)')


def add_training_args(parser, model='lenet', optimizer='adanag', lr=None, epochs=3,
                      batch_size=128):
    group = parser.add_argument_group('training')
    group.add_argument('--model', default=model,
                       help='mlp, lenet, seed-cnn or a GluonCV classifier name (default %(default)s)')
    group.add_argument('--optimizer', default=optimizer,
                       help='any registered optimizer: adanag, adan, sgd, nag, adam, nadam, ... '
                       '(default %(default)s)')
    group.add_argument('--lr', type=nonnegative_float, default=lr,
                       help="learning rate (default: the optimizer's own default)")
    group.add_argument('--opt-arg', action='append', default=[], metavar='NAME=VALUE',
                       help='optimizer hyperparameter, repeatable: --opt-arg beta2=0.99')
    group.add_argument('--epochs', type=positive_int, default=epochs, help='(default %(default)s)')
    group.add_argument('--batch-size', type=positive_int, default=batch_size,
                       help='global batch size (default %(default)s)')
    group.add_argument('--lr-schedule', default='constant', choices=loop.SCHEDULES)
    group.add_argument('--warmup-epochs', type=nonnegative_float, default=0.0,
                       help='linear warm-up from 0, in epochs (default 0)')
    group.add_argument('--lr-step-epochs', type=epoch_list, default=[],
                       help="for --lr-schedule step: epochs at which to multiply by --lr-factor, '6,8'")
    group.add_argument('--lr-factor', type=nonnegative_float, default=0.1)
    group.add_argument('--ctx', default='cpu', help="devices: cpu, cpu:0,cpu:1, gpu:0,gpu:1 (default cpu)")
    group.add_argument('--kvstore', default='device',
                       help='device, local, none, or dist_sync, dist_device_sync, dist_async '
                       'under mxnag launch (default device)')
    group.add_argument('--seed', type=int, default=0, help='(default 0)')
    group.add_argument('--amp', action='store_true',
                       help="float16 mixed precision with MXNet's AMP and dynamic loss scaling "
                       '(GPU contexts only)')
    group.add_argument('--max-skips', type=nonnegative_int, default=10,
                       help='stop after this many steps in a row with a non-finite loss or '
                       'gradient (each is skipped; default 10)')
    group.add_argument('--target-accuracy', type=float,
                       help='stop after the first epoch whose test accuracy reaches this (0-1)')


def add_output_args(parser):
    group = parser.add_argument_group('output')
    group.add_argument('--out', help='results JSON (test_accuracy, history, timings, config)')
    group.add_argument('--log', help='JSON-lines metrics log, appended as training goes')
    group.add_argument('--checkpoint-dir', help='write a checkpoint after every epoch here')
    group.add_argument('--keep', type=positive_int, default=3,
                       help='checkpoints kept in --checkpoint-dir (default 3)')
    group.add_argument('--resume', action='store_true',
                       help='continue from the newest good checkpoint in --checkpoint-dir')
    group.add_argument('--no-progress', action='store_true', help='no progress bar')


def run_cli(main, argv=None):
    """Run ``main(argv)``; bad input ends with exit status 2 and one line on stderr, a
    training failure (``TrainingError``) with exit status 1 and one line."""
    prog = os.path.basename(sys.argv[0]) or 'mxnag'
    try:
        return main(argv)
    except MxnagError as err:
        sys.stderr.write('%s: error: %s\n' % (prog, err))
        return 2
    except TrainingError as err:
        sys.stderr.write('%s: stopped: %s\n' % (prog, err))
        return 1


def check_args(args):
    """Checks that argparse cannot express; raises MxnagError naming the argument."""
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise MxnagError('--target-accuracy: must be in (0, 1], got %r' % args.target_accuracy)
    if args.resume and not args.checkpoint_dir:
        raise MxnagError('--resume: needs --checkpoint-dir')
    kinds = ('device', 'local', 'none') + worker.KINDS
    if args.kvstore not in kinds:
        raise MxnagError('--kvstore: %r is not one of %s' % (args.kvstore, ', '.join(kinds)))


class Workers:
    """This process's place among the workers: ``kvstore`` (an ``mx.kv.KVStore`` for the
    dist kinds, else the kvstore name or None), ``rank`` and ``num_workers``."""

    def __init__(self, kind):
        self.kvstore, self.rank, self.num_workers = (None if kind == 'none' else kind), 0, 1
        if kind in worker.KINDS:
            if 'DMLC_ROLE' not in os.environ:
                raise MxnagError('--kvstore %s: not in a ps-lite cluster (no DMLC_ROLE); '
                                 'start the job with mxnag launch' % kind)
            self.kvstore = mx.kv.create(kind)
            self.rank, self.num_workers = self.kvstore.rank, self.kvstore.num_workers

    @property
    def distributed(self):
        return self.num_workers > 1 or worker.is_distributed(self.kvstore)

    @property
    def chief(self):
        """Rank 0 alone writes checkpoints, logs and results."""
        return self.rank == 0

    def states_saver(self):
        """``save_states`` for ``checkpoint.save``: the servers' optimizer states on a
        distributed kvstore (where ``Trainer.save_states`` cannot reach them), else None."""
        if not self.distributed:
            return None
        return lambda path: worker.save_server_states(self.kvstore, path)


def prepare(args):
    """What every recipe does first: check ``args``, then ``(contexts, workers,
    train_loader, test_loader, num_classes)``."""
    check_args(args)
    contexts = loop.parse_contexts(args.ctx)
    if getattr(args, 'amp', False):
        if any(ctx.device_type != 'gpu' for ctx in contexts):
            raise MxnagError("--amp: needs GPU contexts (MXNet's CPU build has no float16 "
                             'Dense or Convolution)')
        from mxnet.contrib import amp
        amp.init()  # before any network is built: it patches MXNet's operators
    workers = Workers(args.kvstore)
    return (contexts, workers) + load_data(args, workers=workers)


def load_data(args, workers=None):
    """``(train_loader, test_loader, num_classes)`` for the data options of ``args``;
    with ``workers``, the training loader yields this worker's slice of each batch."""
    classes = data.parse_classes(args.classes)
    splits = data.load(args.dataset, args.data_dir)
    train_x, train_y = data.subset(*splits['train'], classes=classes, shots=args.shots,
                                   seed=args.seed)
    test_x, test_y = data.subset(*splits['test'], classes=classes)
    shard = (workers.rank, workers.num_workers) if workers else (0, 1)
    # the last partial batch is dropped (each epoch reshuffles, so every example is used):
    # a step on a handful of examples can throw an adaptive optimizer far off (seen here:
    # LeNet on digits 0-4 fell from 99.7% to 88.6% test accuracy on a final batch of 4)
    train = data.ArrayLoader(data.normalize(train_x, args.dataset), train_y,
                             min(args.batch_size, len(train_y)), seed=args.seed,
                             last_batch='discard', shard=shard)
    test = data.ArrayLoader(data.normalize(test_x, args.dataset), test_y, 1000, shuffle=False)
    return train, test, len(classes) if classes else 10


def config_of(args, **extra):
    keys = ('model', 'dataset', 'classes', 'shots', 'optimizer', 'lr', 'batch_size', 'epochs',
            'seed', 'lr_schedule', 'warmup_epochs', 'lr_step_epochs', 'lr_factor', 'ctx', 'kvstore',
            'target_accuracy')
    config = {k: getattr(args, k, None) for k in keys}
    config['opt_args'] = loop.parse_opt_args(args.opt_arg)
    config.update(extra)
    return config


def train(net, args, train_loader, test_loader, contexts, config, log_name, workers=None):
    """Train ``net`` (initialised, on ``contexts``) as ``args`` say: optimizer, schedule,
    checkpoints, resume; on a distributed kvstore as one of ``workers``. Returns
    ``(history, trainer, resumed_from)``."""
    workers = workers or Workers(args.kvstore)
    opt_args = loop.parse_opt_args(args.opt_arg)
    lr = args.lr
    if lr is None:  # the optimizer's own default
        lr = loop.make_optimizer(args.optimizer, None, opt_args).learning_rate
    scheduler = loop.make_lr_scheduler(args.lr_schedule, lr, len(train_loader), args.epochs,
                                         args.warmup_epochs, args.lr_step_epochs, args.lr_factor)
    optimizer = loop.make_optimizer(args.optimizer, lr, opt_args, scheduler)
    net(mx.nd.zeros((1, 1, 28, 28), ctx=contexts[0]))  # completes deferred initialisation
    # Per-parameter multipliers by index: a kvstore server gets the optimizer pickled,
    # without the Trainer's param_dict, and would ignore lr_mult/wd_mult otherwise.
    params = list(net.collect_params().values())
    optimizer.set_lr_mult({i: p.lr_mult for i, p in enumerate(params) if p.lr_mult != 1.0})
    optimizer.set_wd_mult({i: p.wd_mult for i, p in enumerate(params) if p.wd_mult != 1.0})
    dist = workers.distributed
    trainer = mx.gluon.Trainer(params, optimizer, kvstore=workers.kvstore)
    if getattr(args, 'amp', False):  # dynamic loss scaling; loop.fit counts its skips
        from mxnet.contrib import amp
        amp.init_trainer(trainer)
    if dist:  # the servers get the optimizer once, so with the global batch's normalisation
        optimizer.rescale_grad = trainer._scale / train_loader.batch_size
        trainer._init_kvstore()
        worker.verify_server_optimizer(workers.kvstore)
    meta = {'model': args.model, 'num_classes': config['num_classes'], 'config': config,
            'mxnag_version': __version__}
    start_epoch, history, resumed_from = 0, [], None
    if args.resume:
        prefix, saved, skipped = checkpoint.newest_good(args.checkpoint_dir)
        for bad, reason in skipped:
            sys.stderr.write('warning: skipping checkpoint %s: %s\n' % (bad, reason))
        if prefix is not None:
            if saved.get('mxnag_version') != __version__:
                raise MxnagError('--resume: %s was written by mxnag %s; this is mxnag %s'
                                 % (prefix + '.json', saved.get('mxnag_version'), __version__))
            differing = [k for k in RESUME_KEYS if saved['config'].get(k) != config.get(k)]
            if differing:
                raise MxnagError('--resume: %s was made with other settings (%s: %r, now %r)'
                                 % (prefix + '.json', differing[0], saved['config'].get(differing[0]),
                                    config.get(differing[0])))
            net.load_parameters(prefix + '.params', ctx=contexts)
            if not dist:
                checkpoint.load_trainer_states(trainer, prefix + '.states', args.optimizer)
            elif workers.chief:
                worker.load_server_states(workers.kvstore, prefix + '.states')
            start_epoch, history, resumed_from = saved['epoch'], saved['history'], prefix
            sys.stderr.write('resuming from %s (epoch %d)\n' % (prefix, start_epoch))
    log = loop.MetricsLog(args.log if workers.chief else None)
    log.write(event='start', run=log_name, config=config, start_epoch=start_epoch,
              resumed_from=resumed_from)
    save_states = workers.states_saver()
    history = loop.fit(net, trainer, train_loader, test_loader, contexts, args.epochs,
                         seed=args.seed, start_epoch=start_epoch, history=history, log=log,
                         checkpoint_dir=args.checkpoint_dir if workers.chief else None,
                         keep=args.keep, meta=meta, target_accuracy=args.target_accuracy,
                         progress=not args.no_progress and workers.chief,
                         num_workers=workers.num_workers, save_states=save_states,
                         max_skips=args.max_skips)
    log.write(event='end', run=log_name, test_accuracy=history[-1]['test_accuracy'] if history else None)
    return history, trainer, resumed_from


def summary(history, config, started):
    final = history[-1] if history else {}
    return {'test_accuracy': final.get('test_accuracy'), 'test_loss': final.get('test_loss'),
            'epochs_run': len(history), 'history': history,
            'timings': {'train_seconds': final.get('elapsed'), 'wall_seconds': time.time() - started},
            'config': config, 'mxnag_version': __version__, 'mxnet_version': mx.__version__}


def new_model(name, classes, contexts, seed):
    net = models.get_model(name, classes)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    return net
