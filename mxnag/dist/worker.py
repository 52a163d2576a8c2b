"""What a worker of a distributed (ps-lite) kvstore needs besides MXNet: a check that the
servers really run the optimizer, and the servers' optimizer states in checkpoints.

Rules the recipes follow (see the README): ``--batch-size`` is the global batch; each of
the ``n`` workers computes the gradient of its ``1/n`` slice of every global batch and
steps with the global batch size, so the servers, which sum the workers' gradients, apply
the mean gradient of the global batch: the same step as one process with that batch, at
the same learning rate.
"""
import os

from . import server
from ..errors import MxnagError

KINDS = ('dist_sync', 'dist_device_sync', 'dist_async')
PROBE_KEY_BASE = 2 ** 30  # far from the Trainer's parameter indices


def is_distributed(kvstore):
    return kvstore is not None and 'dist' in getattr(kvstore, 'type', str(kvstore))


def _probe_keys(num_servers):
    """One small key per server: ps-lite places a small array of key k on server
    ``(k * 9973) % num_servers`` (MXNet 1.9.1, kvstore_dist.h)."""
    keys, covered = [], set()
    k = PROBE_KEY_BASE
    while len(covered) < num_servers:
        if (k * 9973) % num_servers not in covered:
            covered.add((k * 9973) % num_servers)
            keys.append(k)
        k += 1
    return keys


def verify_server_optimizer(kvstore):
    """Raise MxnagError unless every server applies an optimizer to what it receives.

    A server that could not unpickle the optimizer only adds up the pushed gradients (MXNet
    prints the error there and goes on): the workers would train to the end and save a
    wrong model. Each worker pushes ones to a probe key per server and pulls it back: a
    plain sum is a whole number from 1 to num_workers, an optimizer step is not.
    """
    from mxnet import nd
    num_servers = int(os.environ.get('DMLC_NUM_SERVER', '1'))
    for key in _probe_keys(num_servers):
        kvstore.init(key, nd.zeros((1,)))
        kvstore.push(key, nd.ones((1,)))
        out = nd.zeros((1,))
        kvstore.pull(key, out=out)
        value = float(out.asscalar())
        if value == round(value) and 1 <= value <= kvstore.num_workers:
            raise MxnagError('the kvstore servers only sum the gradients: they could not load '
                             'the optimizer (start them with the workers\' Python environment, '
                             'with mxnag installed; mxnag launch does)')


def save_server_states(kvstore, prefix):
    """Have every server write its optimizer states to ``<prefix>.server<rank>``; returns
    the paths. Call from one worker only, after a synchronised step."""
    prefix = os.path.abspath(prefix)
    kvstore._send_command_to_servers(server.CONTROLLER, server.SAVE_STATES + prefix)
    num_servers = int(os.environ.get('DMLC_NUM_SERVER', '1'))
    paths = [server.state_path(prefix, r) for r in range(num_servers)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MxnagError('%s: a server did not write its optimizer states (is the checkpoint '
                         'directory shared by every host?)' % missing[0])
    return paths


def load_server_states(kvstore, prefix):
    """Have every server read back its states from ``<prefix>.server<rank>``."""
    prefix = os.path.abspath(prefix)
    num_servers = int(os.environ.get('DMLC_NUM_SERVER', '1'))
    for r in range(num_servers):
        if not os.path.exists(server.state_path(prefix, r)):
            raise MxnagError('%s: missing (checkpoint of a run with another number of servers?)'
                             % server.state_path(prefix, r))
    kvstore._send_command_to_servers(server.CONTROLLER, server.LOAD_STATES + prefix)
