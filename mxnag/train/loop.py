"""Training and evaluation with ``gluon.Trainer``: accuracy and cross-entropy, a live
progress bar, a JSON-lines metrics log, the non-finite step guard, checkpoints every
epoch, exact resume and early stop (contexts, optimizers and schedules are made by
``mxnag.train.factories``).

Reproducibility: the data order of epoch ``e`` depends only on ``(seed, e)`` and MXNet's
RNG is re-seeded from ``(seed, e)`` when the epoch starts, so a run resumed from the
checkpoint of epoch ``e`` continues exactly as the uninterrupted run (on CPU).
"""
import json
import os
import time

import mxnet as mx
from mxnet import autograd, gluon

from .. import kernels, optim  # noqa: F401  (optim registers the mxnag optimizers)
from . import checkpoint, extras
from ..errors import TrainingError, WriteError

# what the loop's callers make its parts with (defined in factories, their home before)
from .factories import (SCHEDULES, make_lr_scheduler, make_optimizer,  # noqa: E402,F401
                        parse_contexts, parse_opt_args)


class MetricsLog:
    """Appends one JSON object per line and flushes it, so the log can be followed live
    (``tail -f``) or plotted mid-run; with ``tensorboard`` (a folder) the same records go
    to TensorBoard's event files too (``mxnag.train.tensorboard``)."""

    def __init__(self, path, tensorboard=None, batches_per_epoch=None):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.tensorboard = None
        if tensorboard:
            from .tensorboard import TensorBoardLog
            self.tensorboard = TensorBoardLog(tensorboard, batches_per_epoch)

    def write(self, **record):
        if self.tensorboard is not None:
            self.tensorboard.record(record)
        if self.path:
            try:
                with open(self.path, 'a') as f:
                    f.write(json.dumps(dict(record, time=round(time.time(), 3))) + '\n')
            except OSError as err:
                raise WriteError(self.path, err.strerror or err) from None


class NonFiniteGuard:
    """Applies ``trainer.step`` only where the loss and every gradient are finite.

    A step with a NaN or Inf loss or gradient is skipped, weights and optimizer states
    untouched (the gradients are overwritten by the next backward pass), logged and
    counted; more than ``max_consecutive`` skips in a row raise ``TrainingError``.

    With an mxnag optimizer the check costs no host synchronisation: MXNet's
    ``multi_all_finite`` of each device's gradients and losses goes into one flag (an
    NDArray), which the optimizer's update reads (``set_finite_flag``): the step is
    skipped on the device, without advancing the parameters' step counts. The flags are
    read where the loop synchronises anyway (``settle``: every 50 batches and at the end
    of an epoch), and only then are skips logged and a run of too many stopped: at most
    one such interval after the limit was crossed (the steps after it were applied or
    skipped as their own gradients said). Other optimizers, MXNet's AMP loss scaling
    (the Trainer itself skips overflowing steps and halves the scale: the guard counts
    those) and distributed kvstores (the workers cannot agree to skip: a non-finite step
    stops the job at once) read the flag on the host every step, as before.
    """

    def __init__(self, trainer, max_consecutive=10, log=None, distributed=False):
        self.trainer, self.max_consecutive = trainer, max_consecutive
        self.log, self.distributed = log, distributed
        self.scaler = getattr(trainer, '_amp_loss_scaler', None)
        self.params = [p for p in trainer._params if p.grad_req != 'null']
        self.total = self.consecutive = 0
        optimizer = trainer._optimizer
        self.on_device = (self.scaler is None and not distributed
                          and hasattr(optimizer, 'set_finite_flag'))
        self.pending = []  # (epoch, batch, flag NDArray) not yet read
        self._by_context = None

    def finite_flag(self, losses):
        """1.0 (float32, on the first device) when every gradient and loss is finite:
        ``mxnag.kernels.all_finite`` on each device, multiplied together. No host read."""
        if self._by_context is None:  # the gradient arrays stay the same from step to step
            grads = {}
            for array in [g for p in self.params for g in p.list_grad()]:
                grads.setdefault(array.context, []).append(array)
            self._by_context = grads
        by_context = {context: list(arrays) for context, arrays in self._by_context.items()}
        for loss in losses:
            by_context.setdefault(loss.context, []).append(loss)
        flag = None
        for arrays in by_context.values():
            part = kernels.all_finite(arrays)
            flag = part if flag is None else flag * part.as_in_context(flag.context)
        return flag

    def step(self, losses, batch_size, epoch, batch):
        """Step where finite. Returns the step's flag: an NDArray (1 applied, 0 skipped)
        on the device path, else True/False."""
        if self.on_device:
            flag = self.finite_flag(losses)
            self.trainer._optimizer.set_finite_flag(flag)
            self.trainer.step(batch_size)
            self.pending.append((epoch, batch, flag))
            return flag
        if self.scaler is not None:
            self.trainer.step(batch_size)
            applied = not self.scaler._next_loss_scale < self.scaler._loss_scale
        else:
            applied = float(self.finite_flag(losses).asscalar()) == 1.0
            if applied:
                self.trainer.step(batch_size)
            elif self.distributed:
                raise TrainingError('epoch %d, batch %d: non-finite loss or gradient on a '
                                    'distributed run; stopping (resume from the last checkpoint)'
                                    % (epoch, batch))
        self._count(epoch, batch, applied)
        return applied

    def settle(self):
        """Read the flags of the steps since the last call (one wait for the device),
        log the skips among them and stop a run of too many; returns the applied flags."""
        if not self.pending:
            return []
        values = mx.nd.concat(*[flag.as_in_context(self.pending[0][2].context)
                                for _, _, flag in self.pending], dim=0).asnumpy()
        pending, self.pending = self.pending, []
        applied = [bool(v == 1.0) for v in values]
        for (epoch, batch, _), ok in zip(pending, applied):
            self._count(epoch, batch, ok)
        return applied

    def _count(self, epoch, batch, applied):
        if applied:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.log:
            self.log.write(event='skip', epoch=epoch, batch=batch, skipped_total=self.total,
                           consecutive=self.consecutive)
        if self.consecutive > self.max_consecutive:
            raise TrainingError('epoch %d, batch %d: %d steps in a row had a non-finite loss or '
                                'gradient (limit max_skips %d); stopping'
                                % (epoch, batch, self.consecutive, self.max_consecutive),
                                ('max_skips',))


class _BatchMetrics(gluon.HybridBlock):
    """``[summed loss, correct predictions]`` of a batch, both 0 where ``applied`` is 0 (the
    loss may then be NaN): one cached graph instead of a dozen operator calls a batch."""

    def hybrid_forward(self, F, out, label, loss, applied):  # noqa: N802 (Gluon's name)
        loss_sum = F.where(applied, F.sum(loss).reshape((1,)), F.zeros_like(applied))
        correct = F.sum(F.argmax(out, axis=1) == label).reshape((1,)) * applied
        return F.concat(loss_sum, correct, dim=0)


class _NoBar:
    """What ``fit`` calls on a progress bar, doing nothing (no progress: no tqdm needed)."""

    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


def _split(x, y, contexts):
    return (gluon.utils.split_and_load(x, contexts, even_split=False),
            gluon.utils.split_and_load(y, contexts, even_split=False))


def evaluate(net, loader, contexts):
    """``{'accuracy': ..., 'loss': ...}`` (mean cross-entropy) of ``net`` over ``loader``."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    total_loss = mx.nd.zeros(1, ctx=contexts[0])
    correct = mx.nd.zeros(1, ctx=contexts[0])
    count = 0
    for x, y in loader:
        xs, ys = _split(x, y, contexts)
        for a, b in zip(xs, ys):
            out = net(a)
            total_loss += loss_fn(out, b).sum().as_in_context(contexts[0])
            correct += (out.argmax(axis=1) == b.astype(out.dtype)).sum().as_in_context(contexts[0])
        count += x.shape[0]
    return {'accuracy': float(correct.asscalar()) / count, 'loss': float(total_loss.asscalar()) / count}


def fit(net, trainer, train_loader, test_loader, contexts, epochs, *, seed=0, start_epoch=0,
        history=None, log=None, checkpoint_dir=None, keep=3, meta=None, target_accuracy=None,
        progress=True, num_workers=1, save_states=None, max_skips=10):
    """Train ``net`` from ``start_epoch`` to ``epochs``, evaluating on ``test_loader``
    after each epoch; returns the history (one dict per epoch).

    With ``checkpoint_dir`` it writes a checkpoint after every epoch (``meta`` plus the
    epoch and history; optimizer states by ``save_states`` if given, see
    ``checkpoint.save``), keeping the newest ``keep``. With ``target_accuracy`` it stops
    after the first epoch whose test accuracy reaches it. With ``num_workers`` > 1 each
    batch is this worker's slice of a global batch ``num_workers`` times larger, and the
    step is normalised by the global batch. Steps with a non-finite loss or gradient are
    skipped (see ``NonFiniteGuard``: with an mxnag optimizer on the device, without a
    host read; ``max_skips`` in a row stop the run, detected at the next progress point,
    every 50 batches); each epoch's record counts them under ``skipped_steps``, and its
    loss and accuracy leave them out. The loop reads values on the host only every 50
    batches and at the end of an epoch.
    """
    tqdm = extras.require('tqdm', 'progress bars').tqdm if progress else None
    log = log or MetricsLog(None)
    step = _Step(net, trainer, contexts, NonFiniteGuard(trainer, max_skips, log, distributed=num_workers > 1),
                 num_workers)
    history = list(history or [])
    elapsed = history[-1]['elapsed'] if history else 0.0
    for epoch in range(start_epoch, epochs):
        if target_accuracy is not None and history and history[-1]['test_accuracy'] >= target_accuracy:
            break
        mx.random.seed(seed * 100003 + epoch)
        train_loader.epoch = epoch
        skips_before = step.guard.total
        bar = tqdm(total=len(train_loader), desc='epoch %d/%d' % (epoch + 1, epochs),
                   unit='batch', dynamic_ncols=True, mininterval=1.0) if progress else _NoBar()
        train_loss, train_accuracy, seen, seconds = step.epoch(train_loader, epoch, bar, log)
        bar.close()
        elapsed += seconds
        test = evaluate(net, test_loader, contexts)
        record = {'epoch': epoch + 1, 'train_loss': train_loss, 'train_accuracy': train_accuracy,
                  'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
                  'learning_rate': trainer.learning_rate, 'seconds': seconds, 'elapsed': elapsed,
                  'images_per_sec': seen / seconds,
                  'skipped_steps': step.guard.total - skips_before}
        history.append(record)
        log.write(event='epoch', **record)
        if progress:
            tqdm.write('epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f  (%.1f s, %.0f img/s)'
                       % (epoch + 1, epochs, train_loss, train_accuracy, test['accuracy'],
                          seconds, seen / seconds))
        if checkpoint_dir:
            checkpoint.save(checkpoint.epoch_prefix(checkpoint_dir, epoch + 1), net,
                            dict(meta or {}, epoch=epoch + 1, history=history), trainer,
                            save_states)
            checkpoint.prune(checkpoint_dir, keep)
    return history


class _Step:
    """One epoch of training steps: forward, backward, the guarded step, and the loss and
    accuracy of the applied batches summed on the device, read every 50 batches."""

    def __init__(self, net, trainer, contexts, guard, num_workers):
        self.net, self.trainer, self.contexts, self.guard = net, trainer, contexts, guard
        self.num_workers = num_workers
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.loss_fn.hybridize(static_alloc=True, static_shape=True)
        self.batch_metrics = _BatchMetrics()
        self.batch_metrics.hybridize(static_alloc=True, static_shape=True)
        self.ones = mx.nd.ones((1,), ctx=contexts[0])

    def epoch(self, loader, epoch, bar, log):
        """Train on every batch of ``loader``: ``(loss, accuracy, images, seconds)`` of the
        batches whose steps applied."""
        start = time.time()
        sums = mx.nd.zeros(2, ctx=self.contexts[0])  # loss summed over the applied batches, correct
        applied_batches = []  # sizes of the batches whose steps applied, known when settled
        sizes = []  # sizes of the batches not yet settled
        for batch, (x, y) in enumerate(loader):
            flag, outs, ys, losses = self._forward_backward_step(x, y, epoch, batch)
            bar.update(1)
            if flag is False:
                continue
            applied = self.ones if flag is True else flag
            for o, b, loss in zip(outs, ys, losses):
                sums += self.batch_metrics(o, b, loss, applied.as_in_context(o.context)) \
                    .as_in_context(self.contexts[0])
            (applied_batches if flag is True else sizes).append(x.shape[0])
            if batch % 50 == 49 or batch + 1 == len(loader):
                applied_batches += [size for size, ok in zip(sizes, self.guard.settle()) if ok]
                sizes = []
                mean_loss, accuracy, seen = _means(sums, applied_batches, empty=0.0)
                rate = seen / (time.time() - start)
                bar.set_postfix(loss='%.4f' % mean_loss, acc='%.4f' % accuracy, img_s='%.0f' % rate)
                log.write(event='batch', epoch=epoch + 1, batch=batch + 1, loss=mean_loss,
                          accuracy=accuracy, images_per_sec=rate)
        applied_batches += [size for size, ok in zip(sizes, self.guard.settle()) if ok]
        train_loss, train_accuracy, seen = _means(sums, applied_batches)
        return train_loss, train_accuracy, seen, time.time() - start

    def _forward_backward_step(self, x, y, epoch, batch):
        xs, ys = _split(x, y, self.contexts)
        with autograd.record():
            outs = [self.net(a) for a in xs]
            losses = [self.loss_fn(o, b) for o, b in zip(outs, ys)]
            if self.guard.scaler is not None:  # MXNet's AMP: backward of the scaled loss
                from mxnet.contrib import amp
                with amp.scale_loss(losses, self.trainer) as scaled:
                    autograd.backward(scaled)
        if self.guard.scaler is None:
            autograd.backward(losses)
        flag = self.guard.step(losses, x.shape[0] * self.num_workers, epoch + 1, batch + 1)
        return flag, outs, ys, losses


def _means(sums, applied_batches, empty=float('nan')):
    """(mean loss, accuracy, images) of the applied batches (``empty`` where none applied)."""
    seen = sum(applied_batches)
    total_loss, correct = sums.asnumpy()
    if not seen:
        return empty, empty, 0
    return float(total_loss) / seen, float(correct) / seen, seen


def epochs_to_reach(history, accuracy):
    """``(epoch, elapsed seconds)`` when test accuracy first reached ``accuracy``, or
    ``(None, None)``."""
    for record in history:
        if record['test_accuracy'] >= accuracy:
            return record['epoch'], record['elapsed']
    return None, None
