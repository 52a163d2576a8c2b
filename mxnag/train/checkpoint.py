"""Checkpoints that a crash cannot corrupt.

A checkpoint with prefix ``P`` is three files: ``P.params`` (``net.save_parameters``, so
plain Gluon can read it), ``P.states`` (``trainer.save_states``, optional) and ``P.json``
(what the run was: model, classes, epoch, history, config, and the SHA-256 of the other
two). Each is written to a temporary file, flushed to disk and renamed; ``P.json`` goes
last and is the commit mark, so a kill at any moment leaves either the whole new
checkpoint or none of it, and a truncated or altered file is detected by its checksum.
"""
import glob
import hashlib
import json
import logging
import os
import re

from .. import states as state_files
from ..errors import MxnagError, WriteError
from ..files import atomic_write

logger = logging.getLogger(__name__)

# What a failed write raises: the OS, or MXNet's own file streams (a full disk during
# save_parameters is "FileStream.Write incomplete")
WRITE_FAILURES = (OSError,)
try:
    from mxnet.base import MXNetError
    WRITE_FAILURES += (MXNetError,)
except ImportError:  # pragma: no cover (mxnag needs MXNet; this module alone does not)
    pass


def write_file(path, write):
    """``atomic_write(path, write)``; a failure raises ``WriteError`` naming ``path``
    (the first line of the reason), the previous file at ``path`` left as it was."""
    try:
        atomic_write(path, write)
    except WRITE_FAILURES as err:
        raise WriteError(path, _reason(err)) from None


def _reason(err):
    """One line of why a write failed: the OS's words, or the end of MXNet's message
    ("...: FileStream.Write incomplete", which is all MXNet says of a full disk)."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return 'MXNet: %s; is the disk full?' % lines[-1].rsplit(': ', 1)[-1].strip()

FORMAT = 'mxnag-checkpoint-1'


def prefix_of(path):
    """``run/epoch-0003.params`` or ``run/epoch-0003`` -> ``run/epoch-0003``."""
    for ext in ('.params', '.json', '.states'):
        if path.endswith(ext):
            return path[:-len(ext)]
    return path


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def write_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write('\n')
    write_file(path, write)


def save(prefix, net, meta, trainer=None, save_states=None):
    """Write the checkpoint ``prefix`` (see the module doc); ``meta`` must be JSON-able.

    The optimizer states come from ``trainer.save_states``, or, where they live elsewhere
    (on the servers of a distributed kvstore), from ``save_states(path)``, which writes
    them to files named ``path`` + suffix atomically and returns their paths.
    """
    prefix = prefix_of(prefix)
    files = [prefix + '.params']
    write_file(files[0], net.save_parameters)
    if save_states is not None:
        files += save_states(prefix + '.states')
    elif trainer is not None:
        files.append(prefix + '.states')
        write_file(files[-1], trainer.save_states)
    record = dict(meta, format=FORMAT,
                  sha256={path[len(prefix) + 1:]: _sha256(path) for path in files})

    write_json(prefix + '.json', record)
    return prefix


def read_meta(prefix, need_states=False):
    """The verified metadata of checkpoint ``prefix``; raises MxnagError naming the file
    that is missing, truncated or altered."""
    prefix = prefix_of(prefix)
    meta_path = prefix + '.json'
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise MxnagError('%s: checkpoint not found (no %s)' % (prefix + '.params', meta_path)) from None
    except (OSError, ValueError) as err:
        raise MxnagError('%s: unreadable checkpoint metadata (%s)' % (meta_path, err)) from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise MxnagError('%s: not an mxnag checkpoint (format %r)'
                         % (meta_path, meta.get('format') if isinstance(meta, dict) else None))
    if need_states and not any(kind.startswith('states') for kind in meta['sha256']):
        raise MxnagError('%s: this checkpoint has no optimizer states' % meta_path)
    for kind in sorted(meta['sha256']):
        path = prefix + '.' + kind
        if not os.path.exists(path):
            raise MxnagError('%s: missing' % path)
        if _sha256(path) != meta['sha256'][kind]:
            raise MxnagError('%s: checksum mismatch (truncated or altered)' % path)
    return meta


def epoch_prefix(directory, epoch):
    return os.path.join(directory, 'epoch-%04d' % epoch)


def list_epochs(directory):
    """Checkpoint prefixes in ``directory`` (committed, i.e. with a .json), newest first."""
    found = []
    for path in glob.glob(os.path.join(directory, 'epoch-*.json')):
        match = re.search(r'epoch-(\d+)\.json$', path)
        if match:
            found.append((int(match.group(1)), path[:-len('.json')]))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def newest_good(directory, need_states=True):
    """``(prefix, meta)`` of the newest checkpoint in ``directory`` that verifies, and the
    list of ``(prefix, reason)`` skipped on the way; ``(None, None)`` if none is good."""
    skipped = []
    for prefix in list_epochs(directory):
        try:
            return prefix, read_meta(prefix, need_states), skipped
        except MxnagError as err:
            skipped.append((prefix, str(err)))
    return None, None, skipped


def newest_to_resume(directory, config, keys):
    """``(prefix, meta)`` of the newest checkpoint in ``directory`` that verifies and that
    a run of ``config`` can go on from (``(None, None)`` if none verifies); skipped
    damaged ones are logged. Raises MxnagError (naming the setting ``resume``) if it was
    written by another mxnag version or made with other values of ``keys`` (the
    settings' resume keys): the one resume of the batch recipes and the stream."""
    from .. import __version__
    prefix, meta, skipped = newest_good(directory)
    for bad, reason in skipped:
        logger.warning('skipping checkpoint %s: %s', bad, reason)
    if prefix is None:
        return None, None
    if meta.get('mxnag_version') != __version__:
        raise MxnagError('resume: %s was written by mxnag %s; this is mxnag %s'
                         % (prefix + '.json', meta.get('mxnag_version'), __version__), ('resume',))
    saved = meta.get('config', {})
    differing = [k for k in keys if saved.get(k) != config.get(k)]
    if differing:
        raise MxnagError('resume: %s was made with other settings (%s: %r, now %r)'
                         % (prefix + '.json', differing[0], saved.get(differing[0]),
                            config.get(differing[0])), ('resume',))
    return prefix, meta


def prune(directory, keep):
    """Delete all but the newest ``keep`` checkpoints in ``directory``."""
    for prefix in list_epochs(directory)[keep:]:
        os.remove(prefix + '.json')  # the commit mark first
        for path in glob.glob(glob.escape(prefix) + '.*'):
            os.remove(path)


def load_trainer_states(trainer, path, optimizer_name):
    """``trainer.load_states(path)``, after checking that the file holds the states of
    ``optimizer_name`` for parameters of the trainer's shapes (MXNet itself would swap in
    whatever optimizer the file holds and fail later, or silently, on a mismatch), and
    reading it through ``mxnag.states``, which refuses a file that would run code (MXNet
    unpickles anything). Raises MxnagError naming the file; the trainer is untouched then."""
    try:
        with open(path, 'rb') as f:
            blob = f.read()
    except OSError as err:
        raise MxnagError('%s: cannot read (%s)' % (path, err.strerror or err)) from None
    content = state_files.loads(blob, path)
    if not (isinstance(content, tuple) and len(content) == 2 and isinstance(content[0], dict)):
        raise MxnagError('%s: not a trainer state file (no optimizer in it)' % path)
    states, optimizer = content
    found = type(optimizer).__name__.lower()
    if found != optimizer_name.lower():
        raise MxnagError('%s: states of optimizer %r, not %r' % (path, found, optimizer_name))
    for index, state in states.items():
        param = trainer._params[index] if isinstance(index, int) and index < len(trainer._params) else None
        items = list(state) if isinstance(state, (tuple, list)) else [state]
        if getattr(optimizer, 'rule', None) is not None and items and hasattr(items[-1], 'shape'):
            items = items[:-1]  # an mxnag optimizer's step count (shape (2,)), not weight-shaped
        arrays = [s for s in items if hasattr(s, 'shape')]
        if getattr(optimizer, 'rule', None) is not None and len(arrays) == 2 * len(optimizer.rule.states):
            arrays = arrays[::2]  # 8-bit states: codes of the weight's shape, then their scales
        if param is None or any(a.shape != param.shape for a in arrays):
            raise MxnagError('%s: states for another model (parameter %r: %s, here %s)'
                             % (path, index, [a.shape for a in arrays],
                                None if param is None else param.shape))
    _set_trainer_states(trainer, blob, path)


def _set_trainer_states(trainer, blob, path):
    """What ``Trainer.load_states`` does (MXNet 1.9.1, gluon/trainer.py), each updater's
    copy read through ``mxnag.states`` (one copy per updater, as MXNet makes)."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    updaters = [trainer._kvstore._updater] if trainer._update_on_kvstore else trainer._updaters
    for updater in updaters:
        state_files.set_updater_states(updater, blob, path)
        updater.optimizer = updaters[0].optimizer
    trainer._optimizer = updaters[0].optimizer
    trainer._optimizer.param_dict = dict(enumerate(trainer._params))
