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
import json
import logging
import os
import sys
import time
from typing import Iterator, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from .. import __version__
from . import checkpoint, data, extras, finetune, loop, models, online, settings
from ..errors import MxnagError

log = logging.getLogger(__name__)
PIXELS = 28 * 28


def _class_list(spec):
    classes = data.parse_classes(spec)
    return list(classes) if classes else list(range(10))


def parse_line(line: str, known: set) -> Tuple[Optional[np.ndarray], Optional[int], Optional[str]]:
    """One line of the stdin source: ``(pixels uint8 (28, 28), label, None)``, or
    ``(None, None, reason)`` for a line to reject."""
    try:
        record = json.loads(line)
    except ValueError as err:
        return None, None, 'not JSON (%s)' % err
    if not isinstance(record, dict):
        return None, None, 'not a JSON object'
    pixels, label = record.get('pixels'), record.get('label')
    if not isinstance(pixels, list) or len(pixels) != PIXELS:
        return None, None, 'pixels: want a list of %d integers, got %s' % (
            PIXELS, 'a list of %d' % len(pixels) if isinstance(pixels, list) else type(pixels).__name__)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in pixels):
        return None, None, 'pixels: every value must be an integer in 0-255'
    if isinstance(label, bool) or not isinstance(label, int):
        return None, None, 'label: want an integer, got %r' % (label,)
    if label not in known:
        return None, None, 'label %d is not a class of this stream (%s)' % (
            label, ','.join(str(c) for c in sorted(known)))
    return np.array(pixels, np.uint8).reshape(28, 28), label, None


def _mnist_source(images, labels, seed, start) -> Iterator[Tuple[np.ndarray, int]]:
    order = np.random.RandomState(seed).permutation(len(labels))
    for i in order[start:]:
        yield images[i], int(labels[i])


class Stream:
    """The state of one stream run that is not the learner's: classes, data, counters."""

    def __init__(self, args, optimizer=None):
        self.args = args
        self.optimizer = optimizer or args.optimizer
        self.context = mx.cpu()
        splits = data.load(args.dataset, args.data_dir)
        self.train_images, self.train_labels = splits['train']
        self.test_images, self.test_labels = splits['test']
        self.new_classes = _class_list(args.classes)
        if args.pretrained:
            self.net, meta = finetune.load_pretrained(args.pretrained, [self.context])
            self.old_classes = _class_list(meta['config'].get('classes'))
            if len(self.old_classes) != meta['num_classes']:
                raise MxnagError('%s: %d outputs for classes %s'
                                 % (args.pretrained, meta['num_classes'], self.old_classes),
                                 ('pretrained',))
        else:
            self.old_classes = []
            if args.model not in models.MXNAG_MODELS:
                models.gluoncv_model_zoo()
            self.net = models.get_model(args.model, len(self.new_classes), hybridize=False)
            mx.random.seed(args.seed)
            self.net.initialize(mx.init.Xavier(), ctx=[self.context])
        self.classes = self.old_classes + [c for c in self.new_classes if c not in self.old_classes]
        self.index = {c: k for k, c in enumerate(self.classes)}
        if args.pretrained:
            online.grow_output(self.net, len(self.classes), [self.context], seed=args.seed)
        self.net.hybridize()
        self.old_before = self.accuracy(self.old_classes) if self.old_classes else None
        replay = None
        if args.replay or args.reservoir:
            kept_x = kept_y = None
            if args.replay and self.old_classes:
                pick = np.flatnonzero(np.isin(self.train_labels, self.old_classes))
                pick = np.random.RandomState([args.seed, 1]).choice(
                    pick, min(args.replay, len(pick)), replace=False)
                kept_x = data.normalize(self.train_images[pick], args.dataset)
                kept_y = np.array([self.index[c] for c in self.train_labels[pick]], np.float32)
            replay = online.ReplayMemory(kept_x, kept_y, args.reservoir, (1, 28, 28),
                                         seed=args.seed)
        if args.features_lr_mult != 1.0:  # the output layer learns at the full rate
            head = set(getattr(self.net, models.output_layer_name(self.net)).collect_params().values())
            for param in self.net.collect_params().values():
                if param not in head:
                    param.lr_mult = args.features_lr_mult
        opt = loop.make_optimizer(self.optimizer, args.lr, loop.parse_opt_args(args.opt_arg))
        trainer = gluon.Trainer(self.net.collect_params(), opt, kvstore=None)
        self.learner = online.OnlineLearner(self.net, trainer, self.context, replay,
                                            replay_per_update=args.replay_batch, window=args.window)
        self.position = 0  # source items consumed (examples, or lines of stdin)
        self.rejected = 0
        self.config = dict(settings.config_of(args), optimizer=self.optimizer,
                           classes=','.join(str(c) for c in self.new_classes),
                           model_classes=self.classes)

    def accuracy(self, classes) -> Optional[float]:
        """Test accuracy on the test images of ``classes`` (None for none)."""
        if not classes:
            return None
        pick = np.isin(self.test_labels, classes)
        labels = np.array([self.index[c] for c in self.test_labels[pick]])
        return online.evaluate_classes(self.net, data.normalize(self.test_images[pick],
                                                                self.args.dataset),
                                       labels, self.context)

    def learn(self, images: np.ndarray, labels: List[int], predictions=None, arrival=None):
        x = data.normalize(images, self.args.dataset)
        y = np.array([self.index[c] for c in labels], np.float32)
        return self.learner.learn(x, y, predictions, arrival)


def run(args, optimizer: Optional[str] = None, quiet: bool = False, out=None) -> dict:
    """One stream run of ``args`` (the ``stream`` recipe's settings) with ``optimizer``
    (default ``args.optimizer``); returns the results (see the recipe's doc)."""
    started = time.time()
    stream = Stream(args, optimizer)
    learner = stream.learner
    metrics_log = loop.MetricsLog(args.log, None if quiet else args.tensorboard)
    last_checkpoint = time.time()
    if args.resume:
        prefix, meta = checkpoint.newest_to_resume(args.checkpoint_dir, stream.config,
                                                   settings.RESUME_KEYS)
        if prefix is None:
            raise MxnagError('resume: no good checkpoint in %s' % args.checkpoint_dir,
                             ('resume', 'checkpoint_dir'))
        meta = learner.restore(prefix, stream.optimizer)
        stream.position, stream.rejected = meta['position'], meta['rejected']
        stream.old_before = meta['old_classes_test_accuracy_before']
        log.info('resuming from %s (%d examples learned)', prefix, learner.seen)
    metrics_log.write(event='start', config=stream.config, position=stream.position)

    def save():
        prefix = checkpoint.epoch_prefix(args.checkpoint_dir, learner.updates)
        learner.save(prefix, {'config': stream.config, 'position': stream.position,
                              'mxnag_version': __version__,
                              'rejected': stream.rejected, 'model': args.model,
                              'num_classes': len(stream.classes), 'epoch': learner.updates,
                              'old_classes_test_accuracy_before': stream.old_before})
        checkpoint.prune(args.checkpoint_dir, args.keep)

    logged = [len(learner.curve)]

    def log_points():
        """A 'stream' record for each new point of the curve (the live log, TensorBoard)."""
        m = learner.metrics()
        for examples, accuracy in learner.curve[logged[0]:]:
            metrics_log.write(event='stream', examples=examples,
                              prequential_accuracy=m['prequential_accuracy'],
                              window_accuracy=accuracy,
                              latency_ms_p50=m['update_latency_ms']['p50'],
                              latency_ms_p95=m['update_latency_ms']['p95'],
                              latency_ms_p99=m['update_latency_ms']['p99'],
                              examples_per_second=m['examples_per_second'])
        logged[0] = len(learner.curve)

    def after_update():
        nonlocal last_checkpoint
        if len(learner.curve) > logged[0]:
            log_points()
        if args.checkpoint_dir and (learner.updates % args.checkpoint_every == 0 or
                                    time.time() - last_checkpoint >= args.checkpoint_seconds):
            save()
            last_checkpoint = time.time()

    batch = args.arrival_batch
    if args.source == 'mnist':
        pick = np.flatnonzero(np.isin(stream.train_labels, stream.new_classes))
        images, labels = stream.train_images[pick], stream.train_labels[pick]
        bar = None
        if not args.no_progress and not quiet:
            tqdm = extras.require('tqdm', 'progress bars (unless no_progress)', ('no_progress',)).tqdm
            bar = tqdm(total=len(labels), initial=stream.position, unit='example', mininterval=1.0)
        source = _mnist_source(images, labels, args.seed, stream.position)
        while True:
            chunk = [item for _, item in zip(range(batch), source)]
            if not chunk:
                break
            arrival = time.perf_counter()
            stream.learn(np.stack([image for image, _ in chunk]), [label for _, label in chunk],
                         arrival=arrival)
            stream.position += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            after_update()
        if bar is not None:
            bar.close()
    else:
        known = set(stream.classes)
        out = out or sys.stdout
        buffer_images, buffer_labels, buffer_predictions = [], [], []
        skip = stream.position
        for line in sys.stdin:
            if skip:  # a resumed stream: these lines were consumed before
                skip -= 1
                continue
            stream.position += 1
            arrival = time.perf_counter()
            image, label, reason = parse_line(line, known)
            if reason is not None:
                stream.rejected += 1
                log.warning('line %d rejected: %s', stream.position, reason)
                continue
            prediction = int(learner.predict(data.normalize(image[None], args.dataset))[0])
            out.write(json.dumps({'line': stream.position, 'prediction': stream.classes[prediction],
                                  'label': label}) + '\n')
            out.flush()
            buffer_images.append(image)
            buffer_labels.append(label)
            buffer_predictions.append(prediction)
            if len(buffer_labels) == batch:
                stream.learn(np.stack(buffer_images), buffer_labels, np.array(buffer_predictions),
                             arrival)
                buffer_images, buffer_labels, buffer_predictions = [], [], []
                after_update()
        if buffer_labels:  # the end of the input: learn what is left
            stream.learn(np.stack(buffer_images), buffer_labels, np.array(buffer_predictions))
    log_points()
    if args.checkpoint_dir:
        save()
    result = dict(learner.metrics(), config=stream.config, rejected=stream.rejected,
                  test_accuracy=stream.accuracy(stream.classes),
                  old_classes_test_accuracy_before=stream.old_before,
                  old_classes_test_accuracy=stream.accuracy(stream.old_classes),
                  new_classes_test_accuracy=stream.accuracy(
                      [c for c in stream.new_classes if c not in stream.old_classes]),
                  seconds=time.time() - started)
    metrics_log.write(event='evaluation', examples=learner.seen,
                      test_accuracy=result['test_accuracy'],
                      old_classes_test_accuracy=result['old_classes_test_accuracy'],
                      new_classes_test_accuracy=result['new_classes_test_accuracy'])
    metrics_log.write(event='end', examples=learner.seen)
    return result


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
    lines = ['| optimizer | prequential accuracy | test accuracy (all classes) | old classes '
             '(before -> after) | new classes | update latency p50 / p99 ms |',
             '|---|---:|---:|---:|---:|---:|']
    for name, r in runs.items():
        before = r['old_classes_test_accuracy_before']
        old = ('%.2f%% -> %.2f%%' % (100 * before, 100 * r['old_classes_test_accuracy'])
               if before is not None else '-')
        lines.append('| %s | %.2f%% | %.2f%% | %s | %.2f%% | %.1f / %.1f |' % (
            name, 100 * r['prequential_accuracy'], 100 * r['test_accuracy'], old,
            100 * r['new_classes_test_accuracy'], r['update_latency_ms']['p50'],
            r['update_latency_ms']['p99']))
    table = '\n'.join(lines)
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
    ax.set_title('Stream of classes %s, window %d' % (args.classes, args.window))
    ax.legend()
    ax.grid(alpha=0.3)
    checkpoint.write_file(os.path.join(args.out_dir, 'stream_compare.png'),
                          lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)
    return {'runs': runs, 'table': table}
