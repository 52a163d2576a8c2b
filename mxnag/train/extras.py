"""The toolkit's optional dependencies: GluonCV (zoo models), tqdm (progress bars) and
matplotlib (the sweep's plot) come with the ``recipes`` extra, not with ``mxnag[cpu]``."""
import importlib

from ..errors import MxnagError

INSTALL = "pip install 'mxnag[recipes]'"


class MissingExtra(MxnagError):
    """A module of the ``recipes`` extra is not installed; the message says how to get it."""


def missing(what: str, err: ImportError, arguments=()) -> MissingExtra:
    """The error for ``what`` (e.g. 'GluonCV models') failing to import with ``err``;
    ``arguments``: the settings ``what`` names."""
    module = getattr(err, 'name', None) or str(err)
    return MissingExtra('no module %s for %s: %s (the recipes extra)' % (module, what, INSTALL),
                        arguments)


def require(module: str, what: str, arguments=()):
    """``import module``, or MissingExtra saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(what, err, arguments) from None
