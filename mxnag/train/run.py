"""One training run as the recipes make it, as library code: the arguments checked, the
data prepared, the network trained with checkpoints and resume, the results summarised.
``args`` is a namespace of the settings in ``mxnag.train.settings`` (parsed by
``mxnag.train.cli`` or built by ``settings.namespace``); errors name the setting, as
``MxnagError`` (bad input) or ``TrainingError`` (training stopped)."""
import contextlib
import logging
import os
import re
import tempfile
import time

import mxnet as mx
import numpy as np

from .. import __version__
from ..dist import worker
from . import (checkpoint, data, extras, factories, finetune, images, loop, models, settings,
               sources)
from ..errors import MxnagError, TrainingError, WriteError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


def check_args(args):
    """Checks of ``args`` that a setting's type cannot express; raises MxnagError naming
    the setting."""
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise MxnagError('target_accuracy: must be in (0, 1], got %r' % args.target_accuracy,
                         ('target_accuracy',))
    if args.resume and not args.checkpoint_dir:
        raise MxnagError('resume: needs checkpoint_dir', ('resume', 'checkpoint_dir'))
    kinds = ('device', 'local', 'none') + worker.KINDS
    if args.kvstore not in kinds:
        raise MxnagError('kvstore: %r is not one of %s' % (args.kvstore, ', '.join(kinds)),
                         ('kvstore',))


def _checkpoint_files(prefix):
    prefix = checkpoint.prefix_of(prefix)
    return [prefix + ext for ext in ('.params', '.states', '.json')]


def check_outputs(args):
    """Before anything is trained or written: no two outputs of the run are one file, no
    output is a file of the checkpoint the run reads, and every output's folder can be
    created and written in. Raises MxnagError naming the settings."""
    taken = [s for s in settings.of(args.recipe) if s.output and getattr(args, s.name)]
    owner = {}  # real path -> (setting, path as given)
    input_name = next((s.name for s in taken if s.output == 'input-checkpoint'), None)

    def claim(name, path):
        real = os.path.realpath(path)
        if real in owner:
            other, other_path = owner[real]
            if other == name:
                return
            if other == input_name:
                raise MxnagError('%s writes %s, a file of the checkpoint that %s reads'
                                 % (name, path, other), (name, other))
            raise MxnagError('%s writes %s, which %s writes too' % (name, path, other),
                             (name, other))
        owner[real] = (name, path)
    # the input first, so that an output is named as the one that would overwrite it
    for s in sorted(taken, key=lambda s: s.output != 'input-checkpoint'):
        value = getattr(args, s.name)
        if s.output in ('checkpoint', 'input-checkpoint'):
            for path in _checkpoint_files(value):
                claim(s.name, path)
        elif s.output == 'file':
            if os.path.isdir(value):
                raise MxnagError('%s: %s is a folder, not a file' % (s.name, value), (s.name,))
            claim(s.name, value)
    folders = [(s.name, os.path.dirname(os.path.abspath(getattr(args, s.name))))
               for s in taken if s.output in ('file', 'checkpoint')]
    for s in taken:
        if s.output != 'folder':
            continue
        directory = getattr(args, s.name)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise MxnagError('%s: %s is a file, not a folder' % (s.name, directory), (s.name,))
        real_dir = os.path.realpath(directory)
        for real, (name, path) in owner.items():  # the run's epoch-NNNN.* files there
            if os.path.dirname(real) == real_dir and re.match(r'epoch-\d+\.', os.path.basename(real)):
                raise MxnagError('%s: %s holds %s, a name of its own checkpoints'
                                 % (s.name, directory, path), (s.name, name))
        folders.append((s.name, os.path.abspath(directory)))
    for name, folder in folders:  # nothing is created here: the writes make their folders
        existing = folder
        while not os.path.isdir(existing):
            if os.path.lexists(existing):
                raise MxnagError('%s: cannot create the folder %s (%s is a file)'
                                 % (name, folder, existing), (name,))
            existing = os.path.dirname(existing)
        try:
            fd, probe = tempfile.mkstemp(prefix='.mxnag-write-check.', dir=existing)
            os.close(fd)
            os.remove(probe)
        except OSError as err:
            what = 'write in' if existing == folder else 'create'
            raise MxnagError('%s: cannot %s the folder %s (%s)' % (name, what, folder, err.strerror or err),
                             (name,)) from None


def last_intact(args):
    """The newest checkpoint this run can go on from, for a message after a failed write:
    the final checkpoint it saved, else the newest in its checkpoint folder that verifies."""
    for s in settings.of(args.recipe):
        value = getattr(args, s.name)
        if value and s.output == 'checkpoint':
            try:
                checkpoint.read_meta(value)
                return checkpoint.prefix_of(value)
            except MxnagError:
                pass
    for s in settings.of(args.recipe):
        value = getattr(args, s.name)
        if value and s.output == 'folder' and os.path.isdir(value):
            prefix = checkpoint.newest_good(value)[0]
            if prefix:
                return prefix
    return None


@contextlib.contextmanager
def writing(args):
    """A failed write in the block (``WriteError``) becomes a ``TrainingError`` naming the
    file and the last checkpoint of the run that is intact."""
    try:
        yield
    except WriteError as err:
        intact = last_intact(args)
        raise TrainingError('%s; %s' % (err, 'the last intact checkpoint is %s' % intact if intact
                                         else 'no checkpoint of this run is intact')) from None


class Workers:
    """This process's place among the workers: ``kvstore`` (an ``mx.kv.KVStore`` for the
    dist kinds, else the kvstore name or None), ``rank`` and ``num_workers``."""

    def __init__(self, kind):
        self.kvstore, self.rank, self.num_workers = (None if kind == 'none' else kind), 0, 1
        if kind in worker.KINDS:
            if 'DMLC_ROLE' not in os.environ:
                raise MxnagError('kvstore %s: not in a ps-lite cluster (no DMLC_ROLE); '
                                 'start the job with mxnag launch' % kind, ('kvstore',))
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
    if args.model and args.model not in models.MXNAG_MODELS:
        models.gluoncv_model_zoo()  # says now, not after loading the data, if GluonCV is missing
    if not args.no_progress:
        extras.require('tqdm', 'progress bars (unless no_progress)', ('no_progress',))
    if args.tensorboard:  # says now, before the data is loaded
        extras.require('tensorboardX', 'TensorBoard logs', ('tensorboard',), extra='tensorboard')
    contexts = factories.parse_contexts(args.ctx)
    if args.amp:
        if any(ctx.device_type != 'gpu' for ctx in contexts):
            raise MxnagError("amp: needs GPU contexts (MXNet's CPU build has no float16 "
                             'Dense or Convolution)', ('amp',))
        from mxnet.contrib import amp
        amp.init()  # before any network is built: it patches MXNet's operators
    workers = Workers(args.kvstore)
    if workers.chief:  # rank 0 alone writes
        check_outputs(args)
    pretrained = finetune.pretrained_meta(args.pretrained, args.model) \
        if getattr(args, 'pretrained', None) else None
    return (contexts, workers) + load_data(args, workers=workers, pretrained=pretrained)


def load_data(args, workers=None, pretrained=None, source=None):
    """``(train_loader, test_loader, num_classes)`` for the data settings of ``args`` (the
    source, its classes and shots, input size, transforms, normalisation); with
    ``workers``, the training loader yields this worker's slice of each batch. The
    loaders also carry ``input_shape``, ``mean``, ``std`` and ``class_names``.
    ``pretrained``: the metadata of the checkpoint a run fine-tunes, whose input size and
    normalisation are the defaults then. ``source``: the data (default ``open_source(args)``)."""
    source = source or open_source(args)
    if pretrained and pretrained.get('input'):  # grey data for an RGB model, or the reverse
        source = sources.with_channels(source, pretrained['input']['shape'][0])
    classes = data.parse_classes(args.classes, source.num_classes)
    train_split = select(source.train, classes, args.shots, args.seed)
    test_split = select(source.test, classes, None, args.seed)
    for split, what in ((train_split, 'training'), (test_split, 'test')):
        if not len(split):
            raise MxnagError('classes: %s has no %s examples of classes %s'
                             % (source.spec, what, args.classes), ('classes',))
    size = input_size(args, source, pretrained)
    augment = args.augment if args.augment != 'auto' else \
        images.default_augment(source.spec.split(':')[0], size)
    mean, std = normalization(args, source, pretrained)
    train_transform, test_transform = (images.Transform(size, augment, training, mean, std)
                                       for training in (True, False))
    shard = (workers.rank, workers.num_workers) if workers else (0, 1)
    if args.max_bad_images and shard[1] > 1:  # a worker skipping a step leaves dist_sync waiting
        raise MxnagError('max_bad_images: skipping images needs one process; distributed workers '
                         'would not step together', ('max_bad_images',))
    bad_images = images.BadImages(args.max_bad_images)
    if len(source.unreadable) > args.max_bad_images:
        raise MxnagError('%s: does not decode (%d of the images measured do not; max_bad_images is %d)'
                         % (source.unreadable[0], len(source.unreadable), args.max_bad_images),
                         ('max_bad_images',))
    for where in source.unreadable:
        bad_images.add(where, '%s: does not decode' % where)
    # the last partial batch is dropped (each epoch reshuffles, so every example is used):
    # a step on a handful of examples can throw an adaptive optimizer far off (seen here:
    # LeNet on digits 0-4 fell from 99.7% to 88.6% test accuracy on a final batch of 4)
    batch_size = min(args.batch_size, len(train_split))
    if source.in_memory and augment == 'none' and tuple(source.size) == tuple(size) and \
            source.channels == len(mean):  # standardised once, batched by fancy indexing
        train = images.ArrayLoader(train_transform.standardise(train_split.images),
                                   train_split.labels, batch_size, seed=args.seed,
                                   last_batch='discard', shard=shard)
        test = images.ArrayLoader(test_transform.standardise(test_split.images),
                                  test_split.labels, 1000, shuffle=False)
    else:
        train = images.ImageLoader(train_split, train_transform, batch_size, seed=args.seed,
                                   last_batch='discard', shard=shard, workers=args.workers,
                                   bad_images=bad_images)
        test = images.ImageLoader(test_split, test_transform, 256, shuffle=False, seed=args.seed,
                                  workers=args.workers, bad_images=bad_images)
    names = [source.class_names[c] for c in classes] if classes else list(source.class_names)
    for loader in (train, test):
        loader.mean, loader.std, loader.class_names = list(mean), list(std), names
    return train, test, len(names)


def open_source(args):
    """The ``sources.Source`` of ``args.data`` (or of ``args.dataset``, the MNIST family's
    name), ``DataError`` naming what is wrong with it."""
    if args.data and args.dataset != 'mnist':
        raise MxnagError('data: give it or dataset, not both', ('data', 'dataset'))
    return sources.parse(args.data or args.dataset, args.data_dir, args.val_fraction, args.seed,
                         args.download)


def select(split, classes, shots, seed):
    """The examples of ``classes`` (relabelled from 0 in their order), ``shots`` of each."""
    if classes is None and shots is None:
        return split
    keep, labels = data.subset(np.arange(len(split)), split.labels, classes, shots, seed)
    chosen = split.subset(keep)
    chosen.labels = labels
    return chosen


def input_size(args, source, pretrained=None):
    """(height, width) of the network's input: ``args.input_size``, else the pretrained
    model's, else the data's where all its images share one, else the model's kind's."""
    if args.input_size:
        return (args.input_size, args.input_size)
    if pretrained and pretrained.get('input'):
        return tuple(pretrained['input']['shape'][1:])
    if source.size:
        return tuple(source.size)
    model = args.model or ''
    return (32, 32) if model.startswith('cifar_') else (28, 28) if model in models.MXNAG_MODELS else (224, 224)


def normalization(args, source, pretrained=None):
    """(mean, std) per channel, 0-1 scale, as ``args.normalize`` says."""
    choice = args.normalize
    if choice == 'auto' and pretrained and pretrained.get('input'):
        return tuple(pretrained['input']['mean']), tuple(pretrained['input']['std'])
    if choice == 'none':
        return (0.0,) * source.channels, (1.0,) * source.channels
    if choice == 'imagenet':
        if source.channels != 3:
            raise MxnagError('normalize: imagenet needs 3-channel images, %s has %d'
                             % (source.spec, source.channels), ('normalize',))
        return sources.IMAGENET_MEAN, sources.IMAGENET_STD
    return source.mean, source.std


def train(net, args, train_loader, test_loader, contexts, config, log_name, workers=None):
    """Train ``net`` (initialised, on ``contexts``) as ``args`` say: optimizer, schedule,
    checkpoints, resume; on a distributed kvstore as one of ``workers``. Returns
    ``(history, trainer, resumed_from)``."""
    workers = workers or Workers(args.kvstore)
    opt_args = factories.parse_opt_args(args.opt_arg)
    lr = args.lr
    if lr is None:  # the optimizer's own default
        lr = factories.make_optimizer(args.optimizer, None, opt_args).learning_rate
    scheduler = factories.make_lr_scheduler(args.lr_schedule, lr, len(train_loader), args.epochs,
                                         args.warmup_epochs, args.lr_step_epochs, args.lr_factor)
    optimizer = factories.make_optimizer(args.optimizer, lr, opt_args, scheduler)
    net(mx.nd.zeros((1,) + tuple(train_loader.input_shape), ctx=contexts[0]))  # deferred initialisation
    # Per-parameter multipliers by index: a kvstore server gets the optimizer pickled,
    # without the Trainer's param_dict, and would ignore lr_mult/wd_mult otherwise.
    params = list(net.collect_params().values())
    optimizer.set_lr_mult({i: p.lr_mult for i, p in enumerate(params) if p.lr_mult != 1.0})
    optimizer.set_wd_mult({i: p.wd_mult for i, p in enumerate(params) if p.wd_mult != 1.0})
    dist = workers.distributed
    trainer = mx.gluon.Trainer(params, optimizer, kvstore=workers.kvstore)
    if args.amp:  # dynamic loss scaling; loop.fit counts its skips
        from mxnet.contrib import amp
        amp.init_trainer(trainer)
    if dist:  # the servers get the optimizer once, so with the global batch's normalisation
        optimizer.rescale_grad = trainer._scale / train_loader.batch_size
        trainer._init_kvstore()
        worker.verify_server_optimizer(workers.kvstore)
    meta = {'model': args.model, 'num_classes': config['num_classes'], 'config': config,
            'mxnag_version': __version__, 'input': input_meta(train_loader)}
    start_epoch, history, resumed_from = 0, [], None
    if args.resume:
        prefix, saved = checkpoint.newest_to_resume(args.checkpoint_dir, config, settings.RESUME_KEYS)
        if prefix is not None:
            net.load_parameters(prefix + '.params', ctx=contexts)
            if not dist:
                checkpoint.load_trainer_states(trainer, prefix + '.states', args.optimizer)
            elif workers.chief:
                worker.load_server_states(workers.kvstore, prefix + '.states')
            start_epoch, history, resumed_from = saved['epoch'], saved['history'], prefix
            logger.info('resuming from %s (epoch %d)', prefix, start_epoch)
    log = loop.MetricsLog(args.log if workers.chief else None,
                          args.tensorboard if workers.chief else None, len(train_loader))
    with writing(args):
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


def input_meta(loader):
    """What a checkpoint records of its input, for fine-tuning to feed it the same way:
    shape (CxHxW), per-channel mean and std, class names."""
    return {'shape': list(loader.input_shape), 'mean': list(getattr(loader, 'mean', ())),
            'std': list(getattr(loader, 'std', ())), 'class_names': getattr(loader, 'class_names', None)}


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
