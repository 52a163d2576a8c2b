"""Faults injected on purpose: non-finite gradients, kills during training and during
checkpoint writes, damaged and foreign files, and random hyperparameters (hypothesis)."""
import hashlib
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import mxnag  # noqa: F401
import mxnag.states
from mxnag.train import checkpoint, data, loop, models
from mxnag.errors import MxnagError, TrainingError
from conftest import ROOT

STEPS_PER_EPOCH = 10


class ListLoader:
    """Fixed batches; the batches listed in ``poison`` get a NaN (or Inf) pixel."""

    def __init__(self, batches, poison=(), value=np.nan):
        self.batches, self.poison, self.value, self.epoch = batches, set(poison), value, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            if (self.epoch, i) in self.poison:
                x = x.copy()
                x[0, 0, 0, 0] = self.value
            yield mx.nd.array(x), mx.nd.array(y)


def make_batches(seed=0, n=STEPS_PER_EPOCH):
    rng = np.random.RandomState(seed)
    return [(rng.randn(16, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 16)) for _ in range(n)]


def train(loader, epochs=2, optimizer='adanag', max_skips=10, amp_scaler=False, log=None):
    net = models.get_model('mlp')
    mx.random.seed(1)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), optimizer, {'learning_rate': 0.01})
    if amp_scaler:  # MXNet's AMP loss scaler, as amp.init_trainer attaches it
        from mxnet.contrib.amp.loss_scaler import LossScaler
        trainer._amp_loss_scaler = LossScaler()
        trainer._amp_original_scale = trainer._scale
    test = ListLoader(make_batches(9, 2))
    history = loop.fit(net, trainer, loader, test, [mx.cpu()], epochs, progress=False,
                         max_skips=max_skips, log=log)
    return net, trainer, history


def weights(net):
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize('optimizer', ['adanag', 'adan', 'sgd'])
@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_steps_are_skipped_without_touching_anything(optimizer, value, tmp_path):
    """Poisoned batches 3 and 7 of epoch 1 and 2 of epoch 2: the run ends exactly as a run
    that never saw those batches, with finite optimizer states."""
    batches = make_batches()
    poison = {(0, 3), (0, 7), (1, 2)}
    log = loop.MetricsLog(str(tmp_path / 'log.jsonl'))
    net, trainer, history = train(ListLoader(batches, poison, value), optimizer=optimizer, log=log)
    assert [h['skipped_steps'] for h in history] == [2, 1]

    class Without(ListLoader):
        def __iter__(self):
            for i, batch in enumerate(self.batches):
                if (self.epoch, i) not in poison:
                    yield mx.nd.array(batch[0]), mx.nd.array(batch[1])
    clean, _, _ = train(Without(batches), optimizer=optimizer)
    for a, b in zip(weights(net), weights(clean)):
        np.testing.assert_array_equal(a, b)
    for state in trainer._updaters[0].states.values():
        for array in (state if isinstance(state, (tuple, list)) else [state]):
            if array is not None:
                assert np.isfinite(array.asnumpy()).all()
    assert (tmp_path / 'log.jsonl').read_text().count('"event": "skip"') == 3


def test_too_many_consecutive_skips_stop_the_run():
    """The library names its argument (max_skips); the recipes' option is checked in
    test_recipes.test_too_many_skips_stop_the_recipe_with_exit_1."""
    poison = {(0, i) for i in range(2, 6)}
    with pytest.raises(TrainingError, match=r'epoch 1, batch 6: 4 steps in a row .* max_skips 3') as info:
        train(ListLoader(make_batches(), poison), max_skips=3)
    assert '--max-skips' not in str(info.value) and info.value.arguments == ('max_skips',)


def test_amp_loss_scaler_skips_overflow_and_guard_counts_it():
    net, trainer, history = train(ListLoader(make_batches(), {(0, 4)}, np.inf), epochs=1,
                                  amp_scaler=True)
    assert history[0]['skipped_steps'] == 1
    assert trainer._amp_loss_scaler.loss_scale == 2.0 ** 15  # halved once
    assert all(np.isfinite(w).all() for w in weights(net))


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path):
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    first = checkpoint.save(checkpoint.epoch_prefix(str(tmp_path), 1), net, {'epoch': 1})

    def crash(path):
        with open(path, 'wb') as f:
            f.write(b'half a file')
        raise KeyboardInterrupt('killed mid-write')
    net.save_parameters, original = crash, net.save_parameters
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(checkpoint.epoch_prefix(str(tmp_path), 2), net, {'epoch': 2})
    net.save_parameters = original
    assert sorted(os.listdir(tmp_path)) == ['epoch-0001.json', 'epoch-0001.params']
    prefix, meta, skipped = checkpoint.newest_good(str(tmp_path), need_states=False)
    assert prefix == first and meta['epoch'] == 1 and skipped == []


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete'])
def test_damaged_checkpoint_is_named_and_skipped(tmp_path, damage):
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    for epoch in (1, 2):
        checkpoint.save(checkpoint.epoch_prefix(str(tmp_path), epoch), net, {'epoch': epoch})
    path = tmp_path / 'epoch-0002.params'
    if damage == 'truncate':
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == 'flip':
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        path.write_bytes(bytes(raw))
    else:
        path.unlink()
    with pytest.raises(MxnagError, match='epoch-0002.params: (checksum mismatch|missing)'):
        checkpoint.read_meta(str(tmp_path / 'epoch-0002'))
    prefix, meta, skipped = checkpoint.newest_good(str(tmp_path), need_states=False)
    assert meta['epoch'] == 1 and skipped[0][0].endswith('epoch-0002')


def test_foreign_state_files_are_refused(tmp_path):
    def trainer_for(model, optimizer):
        net = models.get_model(model)
        net.initialize()
        net(mx.nd.zeros((1, 1, 28, 28)))
        trainer = gluon.Trainer(net.collect_params(), optimizer)
        x = mx.nd.random.normal(shape=(4, 1, 28, 28))
        with mx.autograd.record():
            loss = net(x).sum()
        loss.backward()
        trainer.step(4)
        return trainer
    trainer_for('mlp', 'adanag').save_states(str(tmp_path / 'mlp.states'))
    with pytest.raises(MxnagError, match="states of optimizer 'adanag', not 'adan'"):
        checkpoint.load_trainer_states(trainer_for('mlp', 'adan'), str(tmp_path / 'mlp.states'), 'adan')
    with pytest.raises(MxnagError, match='states for another model'):
        checkpoint.load_trainer_states(trainer_for('lenet', 'adanag'), str(tmp_path / 'mlp.states'), 'adanag')
    (tmp_path / 'junk.states').write_bytes(b'\x80\x04junk')
    with pytest.raises(MxnagError, match='not a trainer state file'):
        checkpoint.load_trainer_states(trainer_for('mlp', 'adanag'), str(tmp_path / 'junk.states'), 'adanag')


class _RunsCode:
    """Unpickles as a call of os.system: what a crafted .states file can ask of pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ('touch %s' % self.marker,)


def _crafted_states(path, marker):
    """A state file whose optimizer slot runs a shell command when unpickled."""
    path.write_bytes(pickle.dumps(({0: (mx.nd.ones((2,)), mx.nd.ones((2,)))}, _RunsCode(marker))))


def test_a_state_file_that_would_run_code_is_refused_and_nothing_of_it_runs(tmp_path):
    """load_trainer_states (and so every resume) reads state files through
    mxnag.states, which admits only what optimizer states hold; MXNet's own
    Trainer.load_states would run the command."""
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    trainer = gluon.Trainer(net.collect_params(), 'adanag')
    marker = tmp_path / 'ran'
    _crafted_states(tmp_path / 'crafted.states', marker)
    with pytest.raises(MxnagError, match=r'crafted.states: not a trainer state file \(it asks for '
                                         r'posix.system, which optimizer states never hold'):
        checkpoint.load_trainer_states(trainer, str(tmp_path / 'crafted.states'), 'adanag')
    assert not marker.exists()
    for module, name in [('builtins', 'eval'), ('subprocess', 'Popen'), ('mxnet.base', '_LIB'),
                         ('mxnag.dist.launch', 'main'), ('numpy.core.multiarray', 'scalar'),
                         ('mxnet.optimizer.optimizer', 'Optimizer.__init__')]:
        with pytest.raises(MxnagError, match='it asks for %s.%s' % (module, name.replace('.', r'\.'))):
            mxnag.states.loads(b'\x80\x04\x8c%c%s\x8c%c%s\x93.' % (len(module), module.encode(),
                                                                 len(name), name.encode()), 'x.states')
    from mxnet.optimizer.optimizer import Updater  # the server's path: its updater untouched
    updater = Updater(mx.optimizer.create('adanag'))
    with pytest.raises(MxnagError, match='it asks for posix.system'):
        mxnag.states.set_updater_states(updater, (tmp_path / 'crafted.states').read_bytes(), 'x')
    assert updater.states == {} and not marker.exists()


def _ops(*parts):
    """A pickle (protocol 4) from opcodes and values: str -> its SHORT_BINUNICODE."""
    out = pickle.PROTO + b'\x04'
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
            out += pickle.SHORT_BINUNICODE + bytes([len(data)]) + data
        else:
            out += part
    return out + pickle.STOP


def _global(module, name):
    return (module, name, pickle.STACK_GLOBAL)


@pytest.mark.parametrize('name, blob, reason', [
    ('a class changed for the whole process',
     _ops(*_global('mxnet.lr_scheduler', 'CosineScheduler'), pickle.NONE, pickle.EMPTY_DICT, 'base_lr',
          pickle.BINFLOAT + struct.pack('>d', 1e6), pickle.SETITEM, pickle.TUPLE2, pickle.BUILD),
     'it sets attributes of the class CosineScheduler'),
    ('an NDArray of a pointer', _ops(*_global('mxnet.ndarray.ndarray', 'NDArray'), pickle.BININT1 + b'\x05',
                                     pickle.TUPLE1, pickle.REDUCE), 'it calls NDArray with (5,)'),
    ('a huge bytearray', _ops(*_global('builtins', 'bytearray'), pickle.LONG1 + b'\x05' + (10 ** 11).to_bytes(5, 'little'),
                              pickle.TUPLE1, pickle.REDUCE), 'it calls bytearray with (100000000000,)'),
    ('an array without data', _ops(pickle.EMPTY_DICT, pickle.BININT1 + b'\x00',
                                   *_global('mxnet.ndarray.ndarray', 'NDArray'), pickle.NONE, pickle.TUPLE1,
                                   pickle.REDUCE, pickle.EMPTY_DICT, 'handle', pickle.NONE, pickle.SETITEM,
                                   pickle.BUILD, pickle.SETITEM), 'an array without data'),
    ('junk array bytes', _ops(*_global('mxnet.ndarray.ndarray', 'NDArray'), pickle.NONE, pickle.TUPLE1,
                              pickle.REDUCE, pickle.EMPTY_DICT, 'handle', *_global('builtins', 'bytearray'),
                              pickle.SHORT_BINBYTES + b'\x04junk', pickle.TUPLE1, pickle.REDUCE,
                              pickle.SETITEM, pickle.BUILD), 'not a trainer state file'),
])
def test_crafted_state_files_that_would_crash_or_change_things_are_refused(name, blob, reason):
    from mxnet import lr_scheduler
    with pytest.raises(MxnagError) as caught:
        mxnag.states.loads(blob, 'x.states')
    assert str(caught.value).startswith('x.states: not a trainer state file (') and reason in str(caught.value)
    assert '\n' not in str(caught.value)
    assert not hasattr(lr_scheduler.CosineScheduler, 'base_lr')


def test_resume_refuses_a_crafted_state_file_with_one_line(tmp_path, mnist_dir):
    """A checkpoint whose .states (and checksum) an attacker replaced: --resume ends with
    exit status 2 and one line, and the command in the file never runs."""
    args = [sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'mnist_pretrain.py'),
            '--model', 'mlp', '--shots', 10, '--epochs', 1, '--data-dir', mnist_dir,
            '--no-progress', '--checkpoint-dir', tmp_path / 'run']
    args = [str(a) for a in args]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    marker = tmp_path / 'ran'
    states = tmp_path / 'run' / 'epoch-0001.states'
    _crafted_states(states, marker)
    meta_path = tmp_path / 'run' / 'epoch-0001.json'
    meta = json.loads(meta_path.read_text())
    meta['sha256']['states'] = hashlib.sha256(states.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    proc = subprocess.run(args + ['--resume'], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count('\n') == 0, proc.stderr
    assert 'epoch-0001.states: not a trainer state file (it asks for posix.system' in proc.stderr
    assert not marker.exists()


def test_checkpoint_of_another_mxnag_version_is_refused(tmp_path, mnist_dir):
    args = [sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'mnist_pretrain.py'),
            '--model', 'mlp', '--shots', 10, '--epochs', 1, '--data-dir', mnist_dir,
            '--no-progress', '--checkpoint-dir', tmp_path]
    args = [str(a) for a in args]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    meta_path = tmp_path / 'epoch-0001.json'
    meta_path.write_text(meta_path.read_text().replace('"mxnag_version": "%s"' % mxnag.__version__,
                                                       '"mxnag_version": "0.0.1"'))
    proc = subprocess.run(args + ['--resume', '--epochs', '2'], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'written by mxnag 0.0.1' in proc.stderr


KILL_ARGS = ['--model', 'mlp', '--shots', 150, '--epochs', 8, '--batch-size', 25, '--optimizer',
             'adan', '--lr-schedule', 'cosine', '--no-progress', '--keep', 2]


def _wait_for_new_file(directory, before, proc, timeout=120):
    """Wait until `directory` holds a name not in `before` (an epoch's checkpoint, or its
    temporary file, appeared) or `proc` ended. True if a new name appeared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if set(os.listdir(directory)) - before:
            return True
        time.sleep(0.01)
    return False


def test_killed_at_random_moments_and_resumed_equals_uninterrupted(tmp_path, mnist_dir):
    """SIGKILL at 3 random moments of training (seeded: each a random delay of up to one
    epoch after the run's next checkpoint appears, so it lands anywhere in an epoch or its
    checkpoint write, however fast the machine), each followed by --resume: the final weights
    are bit for bit those of a run that was never interrupted."""
    def cmd(directory, resume):
        args = [sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'mnist_pretrain.py')]
        args += [str(a) for a in KILL_ARGS] + ['--data-dir', mnist_dir, '--checkpoint-dir', str(directory)]
        return args + (['--resume'] if resume else [])
    subprocess.run(cmd(tmp_path / 'clean', False), check=True, capture_output=True, timeout=300)
    epoch_s = (os.path.getmtime(tmp_path / 'clean' / 'epoch-0008.json')
               - os.path.getmtime(tmp_path / 'clean' / 'epoch-0007.json'))
    killed_dir = tmp_path / 'killed'
    killed_dir.mkdir()
    rng = random.Random(20261126)
    kills = 0
    for attempt in range(12):
        before = set(os.listdir(killed_dir))
        proc = subprocess.Popen(cmd(killed_dir, attempt > 0), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if kills < 3 and _wait_for_new_file(killed_dir, before, proc):
            time.sleep(rng.uniform(0.0, epoch_s))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        if proc.wait(timeout=300) == 0:
            break
    assert kills == 3 and proc.returncode == 0, (kills, proc.returncode)
    final = {k: v.asnumpy() for k, v in mx.nd.load(str(tmp_path / 'killed' / 'epoch-0008.params')).items()}
    clean = {k: v.asnumpy() for k, v in mx.nd.load(str(tmp_path / 'clean' / 'epoch-0008.params')).items()}
    assert all(np.array_equal(final[k], clean[k]) for k in clean)


WRITER = textwrap.dedent('''
    import sys, mxnet as mx
    from mxnag.train import checkpoint, models
    net = models.get_model('seed-cnn')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    for epoch in range(1, 100000):
        checkpoint.save(checkpoint.epoch_prefix(sys.argv[1], epoch), net, {'epoch': epoch})
        checkpoint.prune(sys.argv[1], 2)
        print(epoch, flush=True)
''')


@pytest.mark.parametrize('delay', [0.3, 0.55, 0.8])
def test_killed_during_checkpoint_writes_leaves_a_good_one(tmp_path, delay):
    """A process writing 6.6 MB checkpoints back to back, SIGKILLed at random moments."""
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    proc.stdout.readline()  # the first checkpoint is complete
    time.sleep(delay)
    proc.kill()
    proc.wait()
    prefix, meta, skipped = checkpoint.newest_good(str(tmp_path), need_states=False)
    assert prefix is not None and skipped == []
    committed = checkpoint.list_epochs(str(tmp_path))
    assert committed[0] == prefix  # every committed checkpoint verifies


def test_image_and_label_counts_that_disagree(tmp_path, monkeypatch):
    from test_data import write_idx
    rng = np.random.default_rng(0)
    for split, n in (('train', 6), ('t10k', 4)):
        write_idx(tmp_path / ('%s-images-idx3-ubyte.gz' % split), rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / ('%s-labels-idx1-ubyte.gz' % split), rng.integers(0, 10, (n - 1,)))
    info = data.DATASETS['mnist']._replace(sha256={k: None for k in data.DATASETS['mnist'].sha256})
    monkeypatch.setitem(data.DATASETS, 'mnist', info)
    with pytest.raises(data.DataError, match=r'train-images-idx3-ubyte.gz and .*train-labels-idx1-ubyte.gz '
                                             r'disagree: \(6, 28, 28\) images, \(5,\) labels'):
        data.load('mnist', str(tmp_path), download=False)



def test_a_failed_write_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    """MXNet's own words for a full disk during save_parameters become one line naming the
    file; the run's message adds the last checkpoint that is intact."""
    from mxnag.errors import WriteError
    from mxnag.train import run, settings
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    ck = tmp_path / 'ck'
    trainer = gluon.Trainer(net.collect_params(), 'adanag')
    checkpoint.save(checkpoint.epoch_prefix(str(ck), 1), net, {'epoch': 1}, trainer)

    def disk_full(path):
        with open(path, 'wb') as f:
            f.write(b'part of it')
        raise mx.base.MXNetError('Traceback (most recent call last):\n  File "local_filesys.cc", '
                                 'line 38\nMXNetError: Check failed: std: :fwrite(ptr, 1, size, fp_) '
                                 '== size: FileStream.Write incomplete')
    net.save_parameters = disk_full
    args = settings.namespace(checkpoint_dir=str(ck))
    with pytest.raises(TrainingError) as info:
        with run.writing(args):
            checkpoint.save(checkpoint.epoch_prefix(str(ck), 2), net, {'epoch': 2}, trainer)
    assert str(info.value) == ('%s: cannot write (MXNet: FileStream.Write incomplete; is the disk '
                               'full?); the last intact checkpoint is %s'
                               % (ck / 'epoch-0002.params', ck / 'epoch-0001'))
    assert sorted(os.listdir(ck)) == ['epoch-0001.json', 'epoch-0001.params',
                                      'epoch-0001.states']  # no temporary file left
    with pytest.raises(WriteError, match='^/dev/full: cannot write \\(No space left on device\\)$'):
        loop.MetricsLog('/dev/full').write(event='start')
    with pytest.raises(TrainingError, match='no checkpoint of this run is intact'):
        with run.writing(settings.namespace()):
            loop.MetricsLog('/dev/full').write(event='start')


def test_disk_full_during_a_run_ends_it_with_one_line(tmp_path, mnist_dir):
    """A real full disk: a 1.5 MB tmpfs holds the first checkpoint of an MLP (1.3 MB) but
    not the second. Needs root and mount(8); skipped where the tmpfs cannot be mounted."""
    full = tmp_path / 'full'
    full.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1536k', 'tmpfs', str(full)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip('cannot mount a tmpfs here: %s' % mounted.stderr.strip())
    try:
        proc = subprocess.run(
            [sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'mnist_pretrain.py'),
             '--model', 'mlp', '--shots', '10', '--epochs', '3', '--no-progress', '--data-dir', mnist_dir,
             '--checkpoint-dir', str(full / 'ck'), '--out', str(tmp_path / 'r.json')],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
        assert lines[0] == ('mnist_pretrain.py: stopped: %s: cannot write (MXNet: FileStream.Write '
                            'incomplete; is the disk full?); the last intact checkpoint is %s'
                            % (full / 'ck' / 'epoch-0002.params', full / 'ck' / 'epoch-0001'))
        assert sorted(os.listdir(full / 'ck')) == ['epoch-0001.json', 'epoch-0001.params',
                                                    'epoch-0001.states']
        assert checkpoint.read_meta(str(full / 'ck' / 'epoch-0001'), need_states=True)['epoch'] == 1
        assert not (tmp_path / 'r.json').exists()
    finally:
        subprocess.run(['umount', str(full)], check=True)
