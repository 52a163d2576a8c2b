"""`mxnag.train.tensorboard`: the metrics log's records as TensorBoard scalars, read back
with TensorBoard's own event reader (EventAccumulator); visible before the file is
closed (a live `tensorboard --logdir` sees a run while it runs); without tensorboardX one
line saying which extra to install."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip('tensorboardX', reason='tensorboardX not installed (the test extra)')
event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator',
    reason='tensorboard not installed (the test extra)')

from mxnag.errors import MxnagError  # noqa: E402
from mxnag.train.tensorboard import TensorBoardLog  # noqa: E402

# values exact in float32 (TensorBoard keeps scalars as float32)
RECORDS = [
    {'event': 'start', 'run': 'lenet', 'config': {'lr': 0.001}, 'start_epoch': 0, 'time': 1.5},
    {'event': 'batch', 'epoch': 1, 'batch': 50, 'loss': 2.5, 'accuracy': 0.25,
     'images_per_sec': 1000.0, 'time': 2.0},
    {'event': 'skip', 'epoch': 1, 'batch': 60, 'skipped_total': 1, 'consecutive': 1, 'time': 2.5},
    {'event': 'batch', 'epoch': 1, 'batch': 100, 'loss': 1.5, 'accuracy': 0.5,
     'images_per_sec': 1024.0, 'time': 3.0},
    {'event': 'epoch', 'epoch': 1, 'train_loss': 2.0, 'train_accuracy': 0.375, 'test_loss': 1.25,
     'test_accuracy': 0.625, 'learning_rate': 0.0009765625, 'seconds': 4.0, 'elapsed': 4.0,
     'images_per_sec': 1600.0, 'skipped_steps': 1, 'time': 3.5},
    {'event': 'batch', 'epoch': 2, 'batch': 50, 'loss': 0.75, 'accuracy': 0.75,
     'images_per_sec': 2048.0},
    {'event': 'batch', 'epoch': 2, 'batch': 100, 'loss': 0.5, 'accuracy': 0.875,
     'images_per_sec': 2000.0},
    {'event': 'epoch', 'epoch': 2, 'train_loss': 0.625, 'train_accuracy': 0.8125, 'test_loss': 0.5,
     'test_accuracy': 0.9375, 'learning_rate': 0.00048828125, 'seconds': 3.0, 'elapsed': 7.0,
     'images_per_sec': 1800.0, 'skipped_steps': 0},
    {'event': 'stream', 'examples': 160, 'prequential_accuracy': 0.5, 'window_accuracy': 0.75,
     'latency_ms_p50': 6.5, 'latency_ms_p95': 8.25, 'latency_ms_p99': 9.125,
     'examples_per_second': 2400.0, 'optimizer': 'adanag'},
    {'event': 'stream', 'examples': 320, 'prequential_accuracy': 0.625, 'window_accuracy': 0.875,
     'latency_ms_p50': 6.0, 'latency_ms_p95': 8.0, 'latency_ms_p99': 9.0,
     'examples_per_second': 2500.0},
    {'event': 'evaluation', 'examples': 320, 'test_accuracy': 0.96875,
     'old_classes_test_accuracy': 0.984375, 'new_classes_test_accuracy': 0.953125},
    # junk: unknown events, no position, fields that are not numbers
    {'event': 'checkpoint', 'path': 'runs/x', 'loss': 3.0},
    {'event': 'batch', 'loss': 3.0},
    {'event': 'batch', 'epoch': 1, 'batch': 'ten', 'loss': 3.0},
    {'event': 'stream', 'examples': None, 'prequential_accuracy': 0.5},
    {'event': 'batch', 'epoch': 2, 'batch': 10, 'loss': 'nan', 'accuracy': None, 'ok': True,
     'sizes': [1, 2]},
    {'loss': 1.0},
    {'event': 'end', 'run': 'lenet', 'test_accuracy': 0.9375},
]

EXPECTED = {
    'train/loss': [(50, 2.5), (100, 1.5), (150, 0.75), (200, 0.5)],
    'train/accuracy': [(50, 0.25), (100, 0.5), (150, 0.75), (200, 0.875)],
    'train/images_per_sec': [(50, 1000.0), (100, 1024.0), (150, 2048.0), (200, 2000.0)],
    'train/skipped_steps_total': [(60, 1.0)],
    'train/consecutive_skips': [(60, 1.0)],
    'test/loss': [(1, 1.25), (2, 0.5)],
    'test/accuracy': [(1, 0.625), (2, 0.9375)],
    'train/learning_rate': [(1, 0.0009765625), (2, 0.00048828125)],
    'epoch/train_loss': [(1, 2.0), (2, 0.625)],
    'epoch/train_accuracy': [(1, 0.375), (2, 0.8125)],
    'epoch/seconds': [(1, 4.0), (2, 3.0)],
    'epoch/elapsed': [(1, 4.0), (2, 7.0)],
    'epoch/images_per_sec': [(1, 1600.0), (2, 1800.0)],
    'epoch/skipped_steps': [(1, 1.0), (2, 0.0)],
    'stream/prequential_accuracy': [(160, 0.5), (320, 0.625)],
    'stream/window_accuracy': [(160, 0.75), (320, 0.875)],
    'stream/latency_ms_p50': [(160, 6.5), (320, 6.0)],
    'stream/latency_ms_p95': [(160, 8.25), (320, 8.0)],
    'stream/latency_ms_p99': [(160, 9.125), (320, 9.0)],
    'stream/examples_per_second': [(160, 2400.0), (320, 2500.0)],
    'evaluation/test_accuracy': [(320, 0.96875)],
    'evaluation/old_classes_test_accuracy': [(320, 0.984375)],
    'evaluation/new_classes_test_accuracy': [(320, 0.953125)],
}


def read(directory):
    """{tag: [(step, value), ...]} as TensorBoard reads the folder's event files."""
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={'scalars': 0})
    accumulator.Reload()
    return scalars(accumulator)


def scalars(accumulator):
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()['scalars']}


def test_records_read_back_with_tensorboards_reader(tmp_path):
    with TensorBoardLog(str(tmp_path / 'run')) as tb:
        for record in RECORDS:
            tb.record(record)
        tb.scalar('custom/value', 0.125, 7)
    assert read(tmp_path / 'run') == dict(EXPECTED, **{'custom/value': [(7, 0.125)]})
    files = os.listdir(tmp_path / 'run')
    assert len(files) == 1 and '.tfevents.' in files[0]


def test_a_resumed_run_places_its_batches_once_its_epoch_ends(tmp_path):
    """Starting at epoch 3, the number of batches per epoch is unknown until epoch 3's
    record (its last batch: 100); with batches_per_epoch given they are written at once."""
    records = [{'event': 'batch', 'epoch': 3, 'batch': 50, 'loss': 0.5},
               {'event': 'batch', 'epoch': 3, 'batch': 100, 'loss': 0.25}]
    epoch = {'event': 'epoch', 'epoch': 3, 'test_accuracy': 0.5}
    with TensorBoardLog(str(tmp_path / 'learnt')) as tb:
        for record in records:
            tb.record(record)
        assert read(tmp_path / 'learnt') == {}
        tb.record(epoch)
        tb.record({'event': 'batch', 'epoch': 4, 'batch': 50, 'loss': 0.125})
        assert read(tmp_path / 'learnt') == {'train/loss': [(250, 0.5), (300, 0.25), (350, 0.125)],
                                             'test/accuracy': [(3, 0.5)]}
    with TensorBoardLog(str(tmp_path / 'given'), batches_per_epoch=100) as tb:
        for record in records:
            tb.record(record)
        assert read(tmp_path / 'given') == {'train/loss': [(250, 0.5), (300, 0.25)]}
    with pytest.raises(MxnagError, match='batches_per_epoch'):
        TensorBoardLog(str(tmp_path / 'bad'), batches_per_epoch=0)


def test_events_are_visible_before_close(tmp_path):
    """A live TensorBoard reloads the file as it grows: each record is on disk when
    ``record`` returns, the writer still open."""
    tb = TensorBoardLog(str(tmp_path))
    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'scalars': 0})
    accumulator.Reload()
    assert scalars(accumulator) == {}  # the run exists at once, no scalars yet
    tb.record(RECORDS[1])
    accumulator.Reload()
    assert scalars(accumulator) == {tag: EXPECTED[tag][:1] for tag in
                                    ('train/loss', 'train/accuracy', 'train/images_per_sec')}
    tb.record(RECORDS[8])
    tb.scalar('custom/value', 1.0, 3)
    accumulator.Reload()  # incremental, as TensorBoard's reload
    seen = scalars(accumulator)
    assert seen['train/loss'] == [(50, 2.5)]
    assert seen['stream/latency_ms_p99'] == [(160, 9.125)]
    assert seen['custom/value'] == [(3, 1.0)]
    tb.close()
    tb.close()  # a second close does nothing
    with pytest.raises(MxnagError, match='closed'):
        tb.scalar('custom/value', 2.0, 4)


HIDE_TENSORBOARDX = '''
import sys
sys.modules['tensorboardX'] = None  # `import tensorboardX` raises ImportError
from mxnag.errors import MxnagError
from mxnag.train.tensorboard import TensorBoardLog
try:
    TensorBoardLog(sys.argv[1])
except MxnagError as err:
    print(err)
else:
    print('no error')
'''


def test_without_tensorboardx_the_error_says_which_extra_to_install(tmp_path):
    proc = subprocess.run([sys.executable, '-c', HIDE_TENSORBOARDX, str(tmp_path / 'tb')],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "no module tensorboardX for TensorBoard logs (tensorboard): "
        "pip install 'mxnag[tensorboard]' (the tensorboard extra)"]
    assert not (tmp_path / 'tb').exists()  # nothing written
