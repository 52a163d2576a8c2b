"""A stream run (``recipes/mnist_stream.py``): a classifier, pretrained or not, learns the
examples of new classes as they arrive, in real time, predicting each before it learns it.

``run(args)`` does one stream: the model (the checkpoint's, its output layer grown to the
classes the stream brings, or a new one), the replay memory (``args.replay`` training
images of the checkpoint's classes, and a reservoir of the stream's own), the source
(``mnist``: the training images of ``args.classes`` in a seeded order, once; ``stdin``:
one JSON object a line, a prediction a line on stdout), checkpoints every
``checkpoint_every`` updates or ``checkpoint_seconds`` seconds, and the results.
``compare(args)`` runs the same stream once per optimizer and writes a table and a plot.

Classes are the data set's labels (digits); the model's output ``k`` is the ``k``-th of
the checkpoint's classes followed by the stream's new ones.
"""
import base64
import binascii
import json
import logging
import os
import sys
import time
from typing import List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from .. import __version__
from . import (checkpoint, data, extras, factories, finetune, images, loop, models, online,
               run as batch, settings, sources, tasks)
from ..errors import MxnagError

log = logging.getLogger(__name__)
PIXELS = 28 * 28
SOURCE_KINDS = ('mnist', 'data', 'stdin')  # or a data source's spec, e.g. folder:PATH


def parse_line(line: str, known, channels: int = 1, base: str = '.', numbered=(), grow=False
               ) -> Tuple[Optional[np.ndarray], Optional[str], Optional[str]]:
    """One line of the stdin source: ``(image uint8 HxWxC, class name, None)``, or
    ``(None, None, reason)`` for a line to reject. A line is a JSON object with a
    ``label`` (a class name, or its number) and one of ``pixels`` (784 integers 0-255: a
    28x28 grey image), ``image`` (the path of an image file, relative to ``base``) or
    ``png_base64`` (an encoded image, base64); ``known``: the stream's class names;
    ``numbered``: the data source's class names, which a number may name instead;
    ``grow``: a label not in ``known`` is a new class's name (else the line is rejected)."""
    try:
        record = json.loads(line)
    except ValueError as err:
        return None, None, 'not JSON (%s)' % err
    if not isinstance(record, dict):
        return None, None, 'not a JSON object'
    label = record.get('label')
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        return None, None, 'label: want a class name or number, got %r' % (label,)
    name = str(label)
    if name not in known and isinstance(label, int) and 0 <= label < len(numbered):
        name = numbered[label]  # a class number of the data source
    if grow and name not in known and not name.strip():
        return None, None, 'label: a class name cannot be empty'
    if name not in known and not grow:
        return None, None, 'label %s is not a class of this stream (%s)' % (
            json.dumps(label), ','.join(sorted(known, key=_class_order)))
    if 'pixels' in record:
        image, reason = _pixels(record['pixels'])
    elif 'image' in record or 'png_base64' in record:
        image, reason = _encoded(record, channels, base)
    else:
        return None, None, 'no image: want pixels, image (a path) or png_base64'
    return (None, None, reason) if reason else (image, name, None)


def _class_order(name):
    return (0, int(name), '') if name.isdigit() else (1, 0, name)


def _pixels(pixels):
    if not isinstance(pixels, list) or len(pixels) != PIXELS:
        return None, 'pixels: want a list of %d integers, got %s' % (
            PIXELS, 'a list of %d' % len(pixels) if isinstance(pixels, list) else type(pixels).__name__)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in pixels):
        return None, 'pixels: every value must be an integer in 0-255'
    return np.array(pixels, np.uint8).reshape(28, 28, 1), None


def _encoded(record, channels, base):
    try:
        if 'image' in record:
            path = record['image']
            if not isinstance(path, str):
                return None, 'image: want a path, got %r' % (path,)
            where = os.path.join(base, path)
            with open(where, 'rb') as f:
                blob = f.read()
        else:
            where = 'png_base64'
            blob = base64.b64decode(record['png_base64'], validate=True)
        return sources.decode(blob, where, channels), None
    except (OSError, ValueError, TypeError, binascii.Error, data.DataError) as err:
        return None, str(err) if isinstance(err, data.DataError) else '%s (%s)' % (
            'image: cannot read %s' % record.get('image') if 'image' in record else 'png_base64: not base64',
            getattr(err, 'strerror', None) or err)


def _as_written(name):
    """A class as the stream's lines write it: a number where the classes are numbers."""
    return int(name) if name.isdigit() else name


def open_source(args):
    """The stream's data source: ``args.source`` when it names one (``folder:PATH``, ...),
    else ``args.data`` or the MNIST family's ``args.dataset``."""
    if args.source not in SOURCE_KINDS and args.source.partition(':')[0] not in sources.KINDS:
        raise MxnagError("source: %r is not mnist, stdin or a data source (folder:PATH, rec:PREFIX, "
                         "cifar10:PATH, ...)" % args.source, ('source',))
    spec = args.source if args.source not in SOURCE_KINDS else (args.data or args.dataset)
    source = sources.parse(spec, args.data_dir, args.val_fraction, args.seed, args.download)
    return sources.holdout(source, args.seed) if args.holdout else source


class Stream:
    """The state of one stream run that is not the learner's: classes, data, counters.

    Classes are known by name: the model's outputs are the checkpoint's classes (its
    recorded class names) followed by the stream's new ones; an example of the source
    has the name of its class there."""

    def __init__(self, args, optimizer=None):
        self.args = args
        self.optimizer = optimizer or args.optimizer
        self.context = mx.cpu()
        self.source = open_source(args)
        names = self.source.class_names
        if args.tasks:
            self.groups = tasks.parse(args.tasks, names)
            self.new_classes = [c for group in self.groups for c in group]
        else:
            picked = data.parse_classes(args.classes, len(names))
            self.new_classes = [names[c] for c in picked] if picked else list(names)
        meta = None
        if args.pretrained:
            self.net, meta = finetune.load_pretrained(args.pretrained, [self.context])
            self.old_classes = _pretrained_classes(meta, names, args.pretrained)
        else:
            self.old_classes = []
            if args.model not in models.MXNAG_MODELS:
                models.gluoncv_model_zoo()
            self.net = models.get_model(args.model, len(self.new_classes), hybridize=False)
            mx.random.seed(args.seed)
            self.net.initialize(mx.init.Xavier(), ctx=[self.context])
        self.classes = self.old_classes + [c for c in self.new_classes if c not in self.old_classes]
        self.index = {c: k for k, c in enumerate(self.classes)}
        if not args.tasks:  # one task: the classes the stream brings
            self.groups = [[c for c in self.new_classes if c not in self.old_classes]]
        self.task_rows: List[List[Optional[float]]] = []  # accuracies per group after each task
        if meta and meta.get('input'):  # grey data for an RGB model, or the reverse
            self.source = sources.with_channels(self.source, meta['input']['shape'][0])
        size = batch.input_size(args, self.source, meta)
        mean, std = batch.normalization(args, self.source, meta)
        self.transform = images.Transform(size, 'none', False, mean, std)
        self.input_shape = (len(mean),) + tuple(size)
        if args.pretrained:
            online.grow_output(self.net, len(self.classes), [self.context], seed=args.seed)
        self.net.hybridize()
        self.net(mx.nd.zeros((1,) + self.input_shape, ctx=self.context))  # no deferred shapes
        self.old_before = self.accuracy(self.old_classes) if self.old_classes else None
        self.learner = self._learner(args)
        self.grown: List[str] = []  # classes added by --grow
        self.position = 0  # source items consumed (examples, or lines of stdin)
        self.rejected = 0
        self.config = dict(settings.config_of(args), optimizer=self.optimizer,
                           classes=','.join(self.new_classes), model_classes=self.classes)

    def _learner(self, args):
        replay = None
        if args.replay or args.reservoir:
            kept_x = kept_y = None
            pick = self.examples_of(self.source.train, self.old_classes) if args.replay else []
            if args.replay and self.old_classes and not len(pick):
                log.warning('replay: %s has no training images of the checkpoint\'s classes (%s); '
                            'nothing of them is replayed', self.source.spec, ','.join(self.old_classes))
            elif args.replay and self.old_classes:
                pick = np.random.RandomState([args.seed, 1]).choice(
                    pick, min(args.replay, len(pick)), replace=False)
                kept_x = self.prepare([self.source.train.image(i) for i in pick])
                kept_y = np.array([self.index[self.name_of(self.source.train, i)] for i in pick],
                                  np.float32)
            logits = len(self.classes) if args.method == 'der++' else 0
            # what the model says of them now, every output (the new classes' too: as DER
            # stores an example's whole output; it holds their logits down on old classes)
            kept_z = online.logits_of(self.net, kept_x, self.context) \
                if logits and kept_x is not None else None
            replay = online.ReplayMemory(kept_x, kept_y, args.reservoir, self.input_shape,
                                         seed=args.seed, balanced=args.memory == 'balanced',
                                         logits=logits, kept_logits=kept_z)
        if args.features_lr_mult != 1.0:  # the output layer learns at the full rate
            head = set(getattr(self.net, models.output_layer_name(self.net)).collect_params().values())
            for param in self.net.collect_params().values():
                if param not in head:
                    param.lr_mult = args.features_lr_mult
        opt = factories.make_optimizer(self.optimizer, args.lr, factories.parse_opt_args(args.opt_arg))
        trainer = gluon.Trainer(self.net.collect_params(), opt, kvstore=None)
        learner = online.OnlineLearner(self.net, trainer, self.context, replay,
                                       replay_per_update=args.replay_batch, window=args.window,
                                       method=args.method, alpha=args.der_alpha, beta=args.der_beta)
        learner.seen_classes.update(range(len(self.old_classes)))  # the checkpoint's: seen
        return learner

    def grow(self, name: str) -> None:
        """Add class ``name`` (the model's next output) while the stream runs: the output
        layer and its optimizer states keep the rows of the classes it knows."""
        self.classes = self.classes + [name]
        self.grown.append(name)
        self.index[name] = len(self.classes) - 1
        self.config['model_classes'] = self.classes
        self.learner.grow(len(self.classes), seed=self.args.seed + len(self.classes))
        log.info('class %s added: output %d', json.dumps(name), self.index[name])

    def eval_groups(self):
        """The groups of classes measured after each task: the checkpoint's classes (if
        any), then the stream's tasks."""
        return ([self.old_classes] if self.old_classes else []) + self.groups

    def end_task(self, t: int) -> None:
        """After task ``t``: the test accuracy on every group seen so far."""
        groups = self.eval_groups()[:t + 1 + bool(self.old_classes)]
        self.task_rows.append([self.accuracy(group) for group in groups])
        log.info('after task %d: %s', t, ', '.join(
            '%s %s' % ('+'.join(g), '-' if a is None else '%.4f' % a)
            for g, a in zip(groups, self.task_rows[-1])))

    def name_of(self, split, i):
        return self.source.class_names[split.labels[i]]

    def examples_of(self, split, names):
        """Indices of ``split``'s examples of the classes ``names``."""
        wanted = [k for k, name in enumerate(self.source.class_names) if name in names]
        return np.flatnonzero(np.isin(split.labels, wanted))

    def prepare(self, pictures) -> np.ndarray:
        """uint8 HxWxC images -> the network's standardised float32 input."""
        if len(pictures) and all(p.shape[:2] == self.transform.size for p in pictures):
            return self.transform.standardise(np.stack(pictures))
        return np.stack([self.transform(p) for p in pictures])

    def accuracy(self, classes) -> Optional[float]:
        """Test accuracy on the test images of ``classes`` (None for none)."""
        if not classes:
            return None
        test = self.source.test
        pick = self.examples_of(test, classes)
        if not len(pick):  # the source has no test images of these classes
            return None
        labels = np.array([self.index[self.name_of(test, i)] for i in pick])
        pictures = test.images[pick] if test.images is not None else [test.image(i) for i in pick]
        return online.evaluate_classes(self.net, self.prepare(pictures), labels, self.context)

    def learn(self, pictures, names: List[str], predictions=None, arrival=None):
        x = self.prepare(pictures)
        y = np.array([self.index[c] for c in names], np.float32)
        return self.learner.learn(x, y, predictions, arrival)


def _pretrained_classes(meta, names, path):
    """The class names of a checkpoint's outputs: recorded, or (older checkpoints) its
    classes setting over this source's names."""
    recorded = (meta.get('input') or {}).get('class_names')
    if recorded:
        classes = list(recorded)
    elif meta.get('zoo_file'):
        raise MxnagError('%s: a model-zoo file names no classes; a stream goes on from an mxnag '
                         'checkpoint (fine-tune the zoo model with finetune.py first)' % path,
                         ('pretrained',))
    else:
        picked = data.parse_classes(meta['config'].get('classes'), len(names))
        classes = [names[c] for c in picked] if picked else list(names)
    if len(classes) != meta['num_classes']:
        raise MxnagError('%s: %d outputs for classes %s' % (path, meta['num_classes'], classes),
                         ('pretrained',))
    return classes


def run(args, optimizer: Optional[str] = None, quiet: bool = False, out=None) -> dict:
    """One stream run of ``args`` (the ``stream`` recipe's settings) with ``optimizer``
    (default ``args.optimizer``); returns the results (see the recipe's doc)."""
    started = time.time()
    stream = Stream(args, optimizer)
    if args.resume:
        _resume(stream, args)
    progress = _Progress(stream, args, loop.MetricsLog(args.log, None if quiet else args.tensorboard))
    progress.log.write(event='start', config=stream.config, position=stream.position)
    if args.source == 'stdin':
        _learn_stdin(stream, args, out or sys.stdout, progress.after_update)
    else:
        _learn_source(stream, args, quiet, progress.after_update)
    progress.log_points()
    if args.checkpoint_dir:
        progress.save()
    if len(stream.task_rows) < len(stream.groups):  # no --tasks: the one task ends here
        stream.end_task(len(stream.groups) - 1)
    result = dict(stream.learner.metrics(), config=stream.config, rejected=stream.rejected,
                  tasks=tasks.summary(stream.eval_groups(), stream.task_rows),
                  class_names=stream.classes, grown_classes=stream.grown,
                  test_accuracy=stream.accuracy(stream.classes),
                  old_classes_test_accuracy_before=stream.old_before,
                  old_classes_test_accuracy=stream.accuracy(stream.old_classes),
                  new_classes_test_accuracy=stream.accuracy(
                      [c for c in stream.new_classes if c not in stream.old_classes]),
                  seconds=time.time() - started)
    result['class_il_accuracy'] = result['tasks']['class_il_accuracy']
    if progress.baseline is not None:
        result['bare_step_latency_ms'] = progress.baseline.latency()
        result['latency_p99_ratio'] = (result['update_latency_ms']['p99'] /
                                       result['bare_step_latency_ms']['p99'])
    progress.log.write(event='evaluation', examples=stream.learner.seen,
                       test_accuracy=result['test_accuracy'],
                       old_classes_test_accuracy=result['old_classes_test_accuracy'],
                       new_classes_test_accuracy=result['new_classes_test_accuracy'])
    progress.log.write(event='end', examples=stream.learner.seen)
    return result


class _Progress:
    """What a stream does after each update: a 'stream' record in the metrics ``log`` for
    each new point of the curve (the live log, TensorBoard), and a checkpoint every
    ``checkpoint_every`` updates or ``checkpoint_seconds``."""

    def __init__(self, stream, args, metrics_log):
        self.stream, self.args, self.log = stream, args, metrics_log
        self.logged = len(stream.learner.curve)
        self.last_checkpoint = time.time()
        self.baseline = None
        if args.baseline_every:
            self.baseline = online.BareSteps(stream.net, stream.context, stream.optimizer,
                                             stream.input_shape, len(stream.classes),
                                             args.arrival_batch + _replayed(args),
                                             opt_args=factories.parse_opt_args(args.opt_arg))

    def save(self):
        stream, learner, args = self.stream, self.stream.learner, self.args
        prefix = checkpoint.epoch_prefix(args.checkpoint_dir, learner.updates)
        learner.save(prefix, {'config': stream.config, 'position': stream.position,
                              'mxnag_version': __version__,
                              'rejected': stream.rejected, 'model': args.model,
                              'num_classes': len(stream.classes), 'epoch': learner.updates,
                              'input': {'shape': list(stream.input_shape),
                                        'mean': [float(m) for m in stream.transform.mean.ravel()],
                                        'std': [float(v) for v in stream.transform.std.ravel()],
                                        'class_names': list(stream.classes)},
                              'old_classes_test_accuracy_before': stream.old_before,
                              'task_rows': stream.task_rows})
        checkpoint.prune(args.checkpoint_dir, args.keep)
        self.last_checkpoint = time.time()

    def log_points(self):
        learner = self.stream.learner
        m = learner.metrics()
        for examples, accuracy in learner.curve[self.logged:]:
            self.log.write(event='stream', examples=examples,
                           prequential_accuracy=m['prequential_accuracy'],
                           window_accuracy=accuracy,
                           latency_ms_p50=m['update_latency_ms']['p50'],
                           latency_ms_p95=m['update_latency_ms']['p95'],
                           latency_ms_p99=m['update_latency_ms']['p99'],
                           examples_per_second=m['examples_per_second'])
        self.logged = len(learner.curve)

    def after_update(self):
        learner, args = self.stream.learner, self.args
        if self.baseline is not None and learner.updates % args.baseline_every == 0 and \
                self.baseline.classes == len(self.stream.classes):
            self.baseline.step()
        if len(learner.curve) > self.logged:
            self.log_points()
        if args.checkpoint_dir and (learner.updates % args.checkpoint_every == 0 or
                                    time.time() - self.last_checkpoint >= args.checkpoint_seconds):
            self.save()


def _replayed(args):
    """Replayed examples in an update: der++ draws twice."""
    if not (args.replay or args.reservoir):
        return 0
    per_draw = args.arrival_batch if args.replay_batch is None else args.replay_batch
    return per_draw * (2 if args.method == 'der++' else 1)


def _resume(stream, args):
    """Continue ``stream`` from the newest good checkpoint in ``args.checkpoint_dir``."""
    learner = stream.learner
    prefix, meta = checkpoint.newest_to_resume(args.checkpoint_dir, stream.config,
                                               settings.RESUME_KEYS)
    if prefix is None:
        raise MxnagError('resume: no good checkpoint in %s' % args.checkpoint_dir,
                         ('resume', 'checkpoint_dir'))
    saved = meta['input']['class_names']
    if saved[:len(stream.classes)] != stream.classes:
        raise MxnagError('resume: %s has classes %s, this stream %s' % (
            prefix + '.json', ','.join(saved), ','.join(stream.classes)), ('resume',))
    for name in saved[len(stream.classes):]:  # classes the stream grew (--grow)
        stream.grow(name)
    meta = learner.restore(prefix, stream.optimizer)
    stream.position, stream.rejected = meta['position'], meta['rejected']
    stream.old_before = meta['old_classes_test_accuracy_before']
    stream.task_rows = meta.get('task_rows', [])
    log.info('resuming from %s (%d examples learned)', prefix, learner.seen)


def _learn_source(stream, args, quiet, after_update):
    """Learn the training images of the stream's new classes once, in arrival batches: in
    one seeded order, or (``--tasks``) task after task, each in a seeded order of its own,
    the accuracy on every group so far measured after each."""
    train = stream.source.train
    if args.tasks:
        orders = tasks.orders(train.labels, stream.source.class_names, stream.groups, args.seed)
    else:
        pick = stream.examples_of(train, stream.new_classes)
        orders = [pick[np.random.RandomState(args.seed).permutation(len(pick))]]
    bar = None
    if not args.no_progress and not quiet:
        tqdm = extras.require('tqdm', 'progress bars (unless no_progress)', ('no_progress',)).tqdm
        bar = tqdm(total=sum(map(len, orders)), initial=stream.position, unit='example',
                   mininterval=1.0)
    names = stream.source.class_names
    begin = 0
    for t, order in enumerate(orders):
        for start in range(max(stream.position - begin, 0), len(order), args.arrival_batch):
            chunk = order[start:start + args.arrival_batch]
            arrival = time.perf_counter()
            stream.learn([train.image(i) for i in chunk], [names[train.labels[i]] for i in chunk],
                         arrival=arrival)
            stream.position += len(chunk)
            if args.tasks and stream.position == begin + len(order):
                stream.end_task(t)
            if bar is not None:
                bar.update(len(chunk))
            after_update()
        begin += len(order)
    if bar is not None:
        bar.close()


def _learn_stdin(stream, args, out, after_update):
    """Predict each line of stdin (a prediction a line on ``out``), learn them in arrival
    batches; bad lines are rejected with a logged reason."""
    learner, known = stream.learner, set(stream.classes)
    pictures, names, predictions = [], [], []
    skip = stream.position
    channels = stream.input_shape[0]
    for line in sys.stdin:
        if skip:  # a resumed stream: these lines were consumed before
            skip -= 1
            continue
        stream.position += 1
        arrival = time.perf_counter()
        image, name, reason = parse_line(line, known, channels, numbered=stream.source.class_names,
                                         grow=args.grow)
        if reason is None and image.shape[2] != channels:
            reason = 'a %d-channel image; this stream\'s have %d' % (image.shape[2], channels)
        if reason is not None:
            stream.rejected += 1
            log.warning('line %d rejected: %s', stream.position, reason)
            continue
        if name not in known:  # --grow: a new class
            stream.grow(name)
            known.add(name)
        prediction = int(learner.predict(stream.prepare([image]))[0])
        out.write(json.dumps({'line': stream.position,
                              'prediction': _as_written(stream.classes[prediction]),
                              'label': _as_written(name)}) + '\n')
        out.flush()
        pictures.append(image)
        names.append(name)
        predictions.append(prediction)
        if len(names) == args.arrival_batch:
            stream.learn(pictures, names, np.array(predictions), arrival)
            pictures, names, predictions = [], [], []
            after_update()
    if names:  # the end of the input: learn what is left
        stream.learn(pictures, names, np.array(predictions), arrival)


def compare_table(runs) -> str:
    """Markdown: a row per optimizer's stream results (``runs``: {optimizer: results})."""
    lines = ['| optimizer | prequential accuracy | test accuracy (all classes) | old classes '
             '(before -> after) | new classes | update latency p50 / p99 ms | p99 / bare step |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for name, r in runs.items():
        before = r['old_classes_test_accuracy_before']
        old = ('%.2f%% -> %.2f%%' % (100 * before, 100 * r['old_classes_test_accuracy'])
               if before is not None else '-')
        ratio = r.get('latency_p99_ratio')
        lines.append('| %s | %.2f%% | %.2f%% | %s | %.2f%% | %.1f / %.1f | %s |' % (
            name, 100 * r['prequential_accuracy'], 100 * r['test_accuracy'], old,
            100 * r['new_classes_test_accuracy'], r['update_latency_ms']['p50'],
            r['update_latency_ms']['p99'], '%.2fx' % ratio if ratio else '-'))
    return '\n'.join(lines)


def compare(args) -> dict:
    """The same stream once per optimizer of ``args.compare`` (each at its own default
    learning rate unless ``args.lr``): ``{'runs': {optimizer: results}, 'table': markdown}``,
    written to ``args.out_dir`` as stream_compare.json/.md and stream_compare.png."""
    matplotlib = extras.require('matplotlib', 'the comparison plot')
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [name.strip() for name in args.compare.split(',') if name.strip()]
    runs = {}
    for name in names:
        log.info('stream with %s', name)
        runs[name] = run(args, optimizer=name, quiet=True)
    table = compare_table(runs)
    os.makedirs(args.out_dir, exist_ok=True)
    checkpoint.write_json(os.path.join(args.out_dir, 'stream_compare.json'), {'runs': runs})
    checkpoint.write_file(os.path.join(args.out_dir, 'stream_compare.md'),
                          lambda tmp: open(tmp, 'w').write(table + '\n'))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in runs.items():
        curve = np.array(r['prequential_curve']) if r['prequential_curve'] else np.zeros((0, 2))
        ax.plot(curve[:, 0], 100 * curve[:, 1], label=name)
    ax.set_xlabel('examples seen')
    ax.set_ylabel('windowed prequential accuracy (%)')
    ax.set_title('Stream of %s %s, window %d' % ('tasks' if args.tasks else 'classes',
                                                 args.tasks or args.classes, args.window))
    ax.legend()
    ax.grid(alpha=0.3)
    checkpoint.write_file(os.path.join(args.out_dir, 'stream_compare.png'),
                          lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)
    return {'runs': runs, 'table': table}
