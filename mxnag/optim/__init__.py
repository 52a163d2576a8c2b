"""The mxnag optimizers, one module each; importing this package imports every module of
it, which registers each optimizer with MXNet under its class name in lower case
(``'adanag'``, ``'adan'``, ``'nadamw'``). Adding an optimizer is adding its module."""
import importlib
import pkgutil

from .base import MxnagOptimizer, StepRule

__all__ = []
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != 'base':
        for _name, _value in vars(importlib.import_module('.' + _module, __name__)).items():
            if isinstance(_value, type) and issubclass(_value, MxnagOptimizer) and \
                    _value is not MxnagOptimizer and _value.__module__ == __name__ + '.' + _module:
                globals()[_name] = _value
                __all__.append(_name)
__all__ += ['MxnagOptimizer', 'StepRule']


def optimizers():
    """{registered name: class} of every mxnag optimizer."""
    return {cls.__name__.lower(): cls for cls in MxnagOptimizer.__subclasses__()}
