"""mxnag: Nesterov-momentum optimizers with adaptive learning rates for MXNet Gluon.

``import mxnag`` registers the optimizers ``'adanag'``, ``'adan'`` and ``'nadamw'`` with MXNet, so
``gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 2e-3})`` works.

A distributed kvstore server imports this package while ``mxnet`` is only half
imported: nothing here may import more of MXNet than the optimizers need.
"""
__version__ = '0.2.0'  # 0.2: step counts are optimizer states (0.1 checkpoints are refused)

try:
    import mxnet  # noqa: F401
except ImportError as err:
    raise ImportError(
        "mxnag needs Apache MXNet 1.9.1, which did not import (%s): install "
        "'mxnag[cpu]' for the CPU build or 'mxnag[cu112]' for the CUDA 11.2 build" % err) from None
except AttributeError as err:  # numpy >= 1.24 removed np.bool, which mxnet 1.9.1 uses
    raise ImportError(
        "mxnet 1.9.1 needs numpy<1.24 (%s): pip install 'numpy<1.24'" % err) from None

from .optim import *  # noqa: E402,F401,F403  (registers every mxnag optimizer)
from .optim import __all__ as _optimizers  # noqa: E402

__all__ = list(_optimizers) + ['__version__']
