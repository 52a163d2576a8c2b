"""The run's metrics as TensorBoard scalars, written while it runs (``tensorboard --logdir
DIR`` shows them live), with tensorboardX: TensorBoard's event files without TensorFlow.
tensorboardX is the optional ``tensorboard`` extra (``pip install 'mxnag[tensorboard]'``).

``TensorBoardLog.record`` takes the records of the JSON-lines metrics log
(``loop.MetricsLog``) and writes their numbers under these tags:

- ``batch``: ``train/loss``, ``train/accuracy``, ``train/images_per_sec``; and ``skip``:
  ``train/skipped_steps_total``, ``train/consecutive_skips``; at the global batch step
  ``(epoch - 1) * batches_per_epoch + batch``.
- ``epoch``: ``test/loss``, ``test/accuracy``, ``train/learning_rate``, ``epoch/train_loss``,
  ``epoch/train_accuracy``, ``epoch/images_per_sec``, ``epoch/seconds``,
  ``epoch/skipped_steps``, ``epoch/elapsed``; at step ``epoch``.
- ``stream``: ``stream/prequential_accuracy``, ``stream/window_accuracy``,
  ``stream/latency_ms_p50``, ``stream/latency_ms_p95``, ``stream/latency_ms_p99``,
  ``stream/examples_per_second``; and ``evaluation``: ``evaluation/test_accuracy``,
  ``evaluation/old_classes_test_accuracy``, ``evaluation/new_classes_test_accuracy``; at
  the step ``examples`` (examples seen).

Any other numeric field of these events goes under the event's prefix (``train/``,
``epoch/``, ``stream/``, ``evaluation/``) by its own name; fields that are not numbers
(strings, booleans, None, lists), the position fields (``epoch``, ``batch``,
``examples``) and ``time`` are left out, and so are other events (``start``, ``end``).

The loop logs the last batch of every epoch, so ``batches_per_epoch`` is learnt from the
first epoch when not given; a resumed run's batches are held until their epoch's end
tells it (or pass ``batches_per_epoch``).

Example::

    with TensorBoardLog('runs/tb/lenet') as tb:
        tb.record({'event': 'batch', 'epoch': 1, 'batch': 50, 'loss': 0.4, 'accuracy': 0.9,
                   'images_per_sec': 5000.0})
"""
import itertools
import logging
import numbers
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import extras
from ..errors import MxnagError, WriteError

logger = logging.getLogger(__name__)

# event -> (prefix of its fields' tags, tags of fields named otherwise)
_TAGS: Dict[str, Tuple[str, Dict[str, str]]] = {
    'batch': ('train/', {}),
    'skip': ('train/', {'skipped_total': 'train/skipped_steps_total',
                        'consecutive': 'train/consecutive_skips'}),
    'epoch': ('epoch/', {'test_loss': 'test/loss', 'test_accuracy': 'test/accuracy',
                         'learning_rate': 'train/learning_rate'}),
    'stream': ('stream/', {}),
    'evaluation': ('evaluation/', {}),
}
_POSITION = frozenset(('event', 'epoch', 'batch', 'examples', 'time'))
_FILES = itertools.count()  # event files of one process in one second get distinct names


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class TensorBoardLog:
    """Writes scalars to a TensorBoard event file in ``directory`` (made if missing; one
    directory per run: TensorBoard shows each folder under ``--logdir`` as a run).

    Every ``scalar`` and ``record`` is flushed to the file before it returns, so a running
    TensorBoard sees it at its next reload. ``batches_per_epoch``: the batch records'
    global step (learnt from the first epoch when None). Raises ``MxnagError`` (one line:
    ``pip install 'mxnag[tensorboard]'``) without tensorboardX, ``WriteError`` when the
    file cannot be written. A context manager: ``close()`` on exit.
    """

    def __init__(self, directory: str, batches_per_epoch: Optional[int] = None) -> None:
        extras.require('tensorboardX', 'TensorBoard logs (tensorboard)', ('tensorboard',),
                       extra='tensorboard')
        # tensorboardX's own synchronous writer: SummaryWriter queues events for a thread,
        # and its flush() does not wait for the queue, so "flushed" would not mean "on disk"
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        if batches_per_epoch is not None and (not isinstance(batches_per_epoch, int)
                                              or batches_per_epoch < 1):
            raise MxnagError('batches_per_epoch must be a positive integer or None, got %r'
                             % (batches_per_epoch,), ('batches_per_epoch',))
        self.directory = directory
        self.batches_per_epoch = batches_per_epoch
        self._event, self._summary = Event, scalar
        self._epoch, self._last_batch = 0, 0  # the epoch of the latest batch records, its last batch
        self._held: List[Tuple[int, int, str, float]] = []  # (epoch, batch, tag, value)
        self._closed = False
        try:
            os.makedirs(directory, exist_ok=True)
            self._writer = EventsWriter(os.path.join(directory, 'events'),
                                        '.%d.%d' % (os.getpid(), next(_FILES)))
            self._writer.flush()  # the run appears in TensorBoard at once
        except OSError as err:
            raise WriteError(directory, err.strerror or err) from None
        self.path: str = self._writer._file_name

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Write ``value`` under ``tag`` at ``step`` and flush it."""
        self._add(tag, value, step)
        self.flush()

    def record(self, event_record: Mapping[str, Any]) -> None:
        """Write the numbers of one metrics-log record (see the module's table) and flush.
        Records of other events, or without their position (``epoch``, ``batch``,
        ``examples``), are ignored."""
        event = event_record.get('event')
        if event not in _TAGS:
            return
        prefix, renamed = _TAGS[event]
        scalars = [(renamed.get(name, prefix + name), float(value))
                   for name, value in event_record.items()
                   if name not in _POSITION and _is_number(value)]
        if event in ('batch', 'skip'):
            epoch, batch = event_record.get('epoch'), event_record.get('batch')
            if not (_is_number(epoch) and _is_number(batch)):
                return
            self._batches(int(epoch), int(batch), scalars)
        else:
            position = event_record.get('epoch' if event == 'epoch' else 'examples')
            if not _is_number(position):
                return
            if event == 'epoch':
                self._epoch_ended(int(position))
            for tag, value in scalars:
                self._add(tag, value, int(position))
        self.flush()

    def flush(self) -> None:
        """Write what is buffered to the event file."""
        if not self._closed:
            try:
                self._writer.flush()
            except OSError as err:
                raise WriteError(self.path, err.strerror or err) from None

    def close(self) -> None:
        """Flush and close the event file; later calls do nothing. Batch records still held
        (a resumed run's epoch that never ended, without ``batches_per_epoch``) are
        dropped with a warning: their global step is unknown."""
        if self._closed:
            return
        if self._held:
            logger.warning('%s: %d TensorBoard scalars of epoch %d left out: batches_per_epoch '
                           'unknown', self.directory, len(self._held), self._held[0][0])
            self._held = []
        self.flush()
        self._closed = True
        try:
            self._writer.close()
        except OSError as err:
            raise WriteError(self.path, err.strerror or err) from None

    def __enter__(self) -> 'TensorBoardLog':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _add(self, tag: str, value: float, step: int) -> None:
        if self._closed:
            raise MxnagError('%s: the TensorBoard log is closed' % self.directory)
        event = self._event(wall_time=time.time(), step=int(step),
                            summary=self._summary(tag, float(value)))
        try:
            self._writer.write_event(event)
        except OSError as err:
            raise WriteError(self.path, err.strerror or err) from None

    def _batches(self, epoch: int, batch: int, scalars: List[Tuple[str, float]]) -> None:
        if epoch != self._epoch:
            self._epoch_ended(self._epoch)
            self._epoch, self._last_batch = epoch, 0
        self._last_batch = max(self._last_batch, batch)
        if epoch > 1 and self.batches_per_epoch is None:
            self._held += [(epoch, batch, tag, value) for tag, value in scalars]
            return
        for tag, value in scalars:
            self._add(tag, value, self._step(epoch, batch))

    def _epoch_ended(self, epoch: int) -> None:
        """The loop logs an epoch's last batch: its index is the number of batches."""
        if self.batches_per_epoch is None and epoch == self._epoch and self._last_batch:
            self.batches_per_epoch = self._last_batch
        if self.batches_per_epoch is not None:
            held, self._held = self._held, []
            for epoch_, batch, tag, value in held:
                self._add(tag, value, self._step(epoch_, batch))

    def _step(self, epoch: int, batch: int) -> int:
        return (epoch - 1) * (self.batches_per_epoch or 0) + batch
