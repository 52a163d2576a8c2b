"""The mxnag optimizers; importing this package registers them with MXNet."""
from .adanag import AdaNAG
from .adan import Adan

__all__ = ['AdaNAG', 'Adan']
