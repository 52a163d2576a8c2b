"""Optimizer state files read without running what they ask.

A ``.states`` file (``Trainer.save_states``, MXNet's ``Updater.get_states``, a kvstore
server's) is a pickle of ``(states, optimizer)``, and MXNet reads it with
``pickle.loads``, which calls whatever the file names: a crafted file runs code as the
user. ``loads`` admits only what optimizer states hold: dicts, tuples, lists and numbers
(pickle's own opcodes), ``bytearray`` (an NDArray's bytes), ``mxnet.ndarray.NDArray``,
the optimizer classes (subclasses of ``mx.optimizer.Optimizer``, mxnag's and MXNet's) and
MXNet's learning-rate schedulers, each from a module already imported (nothing is
imported on a file's behalf); the only calls admitted are those that make an empty
NDArray and a bytearray, and no class's attributes may be set. Anything else is refused
before it is called, naming it, as is a state file with an array that holds no data.

Shared by the training toolkit and the kvstore server: imports only what an optimizer's
unpickling does (MXNET-FACTS: a server's MXNet is half imported).
"""
import io
import pickle
import sys

from .errors import MxnagError


def _admitted(module, name):
    """The object ``module.name`` if optimizer states may hold it, else None."""
    if (module, name) == ('builtins', 'bytearray'):
        return bytearray
    if module.split('.')[0] not in ('mxnet', 'mxnag') or '.' in name or module not in sys.modules:
        return None
    found = getattr(sys.modules[module], name, None)
    if not isinstance(found, type):
        return None
    from mxnet.ndarray import NDArray
    from mxnet.optimizer import Optimizer
    kinds = [Optimizer]
    scheduler = sys.modules.get('mxnet.lr_scheduler')
    if scheduler is not None:
        kinds.append(scheduler.LRScheduler)
    if found is NDArray or issubclass(found, tuple(kinds)):
        return found
    return None


class _StatesUnpickler(pickle._Unpickler):  # noqa: SLF001 (the Python one: its opcodes can be checked)
    """``pickle``'s Python unpickler with every way of calling or changing something
    checked: classes come from ``_admitted``; a call (REDUCE) may only make an empty
    ``NDArray`` (``NDArray(None)``, as NDArray pickles itself) or a ``bytearray`` of
    bytes; NEWOBJ only makes instances of admitted classes; BUILD may not set attributes
    of a class (which would change it for the whole process)."""
    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def find_class(self, module, name):
        found = _admitted(module, name)
        if found is None:
            raise pickle.UnpicklingError(
                'it asks for %s.%s, which optimizer states never hold (a crafted or foreign '
                'file); refused, nothing of it ran' % (module, name))
        return found

    def load_reduce(self):
        args, func = self.stack[-1], self.stack[-2]
        from mxnet.ndarray import NDArray
        allowed = (func is NDArray and args == (None,)) or \
            (func is bytearray and len(args) == 1 and isinstance(args[0], bytes))
        if not allowed:
            raise pickle.UnpicklingError('it calls %s with %s, which optimizer states never do; '
                                         'refused' % (getattr(func, '__name__', func), _short(args)))
        pickle._Unpickler.load_reduce(self)  # noqa: SLF001
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self):
        if isinstance(self.stack[-2], type):
            raise pickle.UnpicklingError('it sets attributes of the class %s; refused'
                                         % self.stack[-2].__name__)
        pickle._Unpickler.load_build(self)  # noqa: SLF001
    dispatch[pickle.BUILD[0]] = load_build


def _short(value):
    text = repr(value)
    return text if len(text) < 60 else text[:57] + '...'


def _check_arrays(value, path, depth=0):
    """Every NDArray in ``value`` holds data (an empty one would crash MXNet's calls)."""
    from mxnet.ndarray import NDArray
    if depth > 20:
        raise MxnagError('%s: not a trainer state file (nested too deep)' % path)
    if isinstance(value, NDArray):
        if value.handle is None:
            raise MxnagError('%s: not a trainer state file (an array without data)' % path)
    elif isinstance(value, dict):
        for item in value.values():
            _check_arrays(item, path, depth + 1)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _check_arrays(item, path, depth + 1)


def loads(blob, path):
    """The unpickled content of state file ``path`` (its bytes ``blob``); ``MxnagError``
    naming the file when it is not a state file or asks for anything else."""
    try:
        content = _StatesUnpickler(io.BytesIO(blob)).load()
    except Exception as err:  # noqa: BLE001 (whatever a damaged or crafted file raises: one line)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise MxnagError('%s: not a trainer state file (%s)' % (path, reason)) from None
    states = content[0] if isinstance(content, tuple) and len(content) == 2 else content
    _check_arrays(states, path)
    return content


def read(path):
    """``loads`` of the file at ``path``."""
    try:
        with open(path, 'rb') as f:
            blob = f.read()
    except OSError as err:
        raise MxnagError('%s: cannot read (%s)' % (path, err.strerror or err)) from None
    return loads(blob, path)


def set_updater_states(updater, blob, path):
    """What MXNet's ``Updater.set_states(blob)`` does, through ``loads``: the updater's
    states (and optimizer, when the file has one), to be moved to the weights' contexts
    on their next update."""
    content = loads(blob, path)
    states, optimizer = content if isinstance(content, tuple) and len(content) == 2 else (content, None)
    if not isinstance(states, dict):
        raise MxnagError('%s: not a trainer state file (states are a %s, not a dict)'
                         % (path, type(states).__name__))
    updater.states = states
    if optimizer is not None:
        updater.optimizer = optimizer
    updater.states_synced = dict.fromkeys(states.keys(), False)
