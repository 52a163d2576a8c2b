"""The toolkit's optional dependencies: GluonCV (zoo models), tqdm (progress bars) and
matplotlib (the sweep's plot) come with the ``recipes`` extra, tensorboardX (TensorBoard
event files) with the ``tensorboard`` extra; none comes with ``mxnag[cpu]``."""
import importlib

from ..errors import MxnagError

INSTALL = "pip install 'mxnag[recipes]'"


class MissingExtra(MxnagError):
    """A module of an optional extra is not installed; the message says how to get it."""


def install(extra: str = 'recipes') -> str:
    """The command that installs ``extra`` (``pip install 'mxnag[recipes]'``)."""
    return "pip install 'mxnag[%s]'" % extra


def missing(what: str, err: ImportError, arguments=(), extra: str = 'recipes') -> MissingExtra:
    """The error for ``what`` (e.g. 'GluonCV models') failing to import with ``err``;
    ``arguments``: the settings ``what`` names; ``extra``: the extra that brings it."""
    module = getattr(err, 'name', None) or str(err)
    return MissingExtra('no module %s for %s: %s (the %s extra)' % (module, what, install(extra), extra),
                        arguments)


def require(module: str, what: str, arguments=(), extra: str = 'recipes'):
    """``import module``, or MissingExtra saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(what, err, arguments, extra) from None
