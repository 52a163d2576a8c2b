"""Optimizer state files read without running what they ask.

A ``.states`` file (``Trainer.save_states``, MXNet's ``Updater.get_states``, a kvstore
server's) is a pickle of ``(states, optimizer)``, and MXNet reads it with
``pickle.loads``, which calls whatever the file names: a crafted file runs code as the
user. ``loads`` admits only what optimizer states hold: dicts, tuples, lists and numbers
(pickle's own opcodes), ``bytearray`` (an NDArray's bytes), ``mxnet.ndarray.NDArray``,
the optimizer classes (subclasses of ``mx.optimizer.Optimizer``, mxnag's and MXNet's) and
MXNet's learning-rate schedulers, each from a module already imported (nothing is
imported on a file's behalf). Anything else is refused before it is called, naming it.

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


class _StatesUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _admitted(module, name)
        if found is None:
            raise pickle.UnpicklingError(
                'it asks for %s.%s, which optimizer states never hold (a crafted or foreign '
                'file); refused, nothing of it ran' % (module, name))
        return found


def loads(blob, path):
    """The unpickled content of state file ``path`` (its bytes ``blob``); ``MxnagError``
    naming the file when it is not a state file or asks for anything else."""
    try:
        return _StatesUnpickler(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError,
            IndexError, KeyError) as err:
        raise MxnagError('%s: not a trainer state file (%s)' % (path, err)) from None


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
