"""A kvstore server (``python -m mxnag.dist.server``) for ``mxnag launch``.

MXNet's own server (what ``import mxnet`` runs when ``DMLC_ROLE=server``) prints and
ignores an exception when it cannot unpickle the workers' optimizer, and then only sums
gradients: the workers finish with exit status 0 and a wrong model. This server exits
with status 3 and one clear line instead, so the launcher fails the job. It also answers
two commands of mxnag's workers: write its optimizer states to a file and read them back
(with updates on the servers, the states live here; ``Trainer.save_states`` cannot
reach them).
"""
import os
import pickle
import sys

from .. import states
from ..errors import MxnagError
from ..files import atomic_write

# MXNet's servers pass only command 0 (the "controller" command, which carries the
# pickled optimizer) to Python; mxnag's own commands ride on it, told apart by a prefix
# that a protocol-0 pickle never starts with. Body after the prefix: a path prefix.
CONTROLLER = 0
SAVE_STATES = 'mxnag:save-states:'  # write <prefix>.server<rank>
LOAD_STATES = 'mxnag:load-states:'  # read <prefix>.server<rank>
EXIT_UNPICKLE = 3  # also: a state file it refuses to read


def state_path(prefix, rank):
    return '%s.server%d' % (prefix, rank)


def main():
    # The launcher passes the role as MXNAG_DMLC_ROLE: with DMLC_ROLE=server, importing
    # mxnet (which importing this package does) would start MXNet's own server.
    role = os.environ.get('MXNAG_DMLC_ROLE')
    if role != 'server' or 'DMLC_ROLE' in os.environ:
        sys.exit('mxnag.dist.server: start it with MXNAG_DMLC_ROLE=server and no DMLC_ROLE '
                 '(mxnag launch does)')
    import mxnet as mx
    from mxnet.kvstore.kvstore_server import KVStoreServer
    os.environ['DMLC_ROLE'] = role
    kvstore = mx.kv.create('dist')

    class Server(KVStoreServer):
        def _controller(self):
            def controller(cmd_id, cmd_body, _):
                save = cmd_body.startswith(SAVE_STATES.encode())
                if save or cmd_body.startswith(LOAD_STATES.encode()):
                    prefix = cmd_body.decode()[len(SAVE_STATES if save else LOAD_STATES):]
                    path = state_path(prefix, kvstore.rank)
                    if save:
                        blob = kvstore._updater.get_states(dump_optimizer=True)

                        def write(tmp):
                            with open(tmp, 'wb') as f:
                                f.write(blob)
                        atomic_write(path, write)
                    else:  # MXNet would ignore an exception here: training on fresh states
                        try:  # and a crafted file would run code through MXNet's set_states
                            with open(path, 'rb') as f:
                                blob = f.read()
                            states.set_updater_states(kvstore._updater, blob, path)
                        except Exception as err:  # noqa: BLE001 (any failure must stop the job)
                            sys.stderr.write('mxnag.dist.server %d: %s\n' % (
                                kvstore.rank, err if isinstance(err, MxnagError) else
                                '%s: cannot read the optimizer states (%s)' % (path, err)))
                            sys.stderr.flush()
                            os._exit(EXIT_UNPICKLE)
                elif cmd_id == CONTROLLER:
                    try:
                        optimizer = pickle.loads(cmd_body)
                    except Exception as err:  # noqa: BLE001 (any failure must stop the job)
                        sys.stderr.write(
                            'mxnag.dist.server %d: cannot unpickle the workers\' optimizer (%s: %s); '
                            'servers must run with the workers\' Python environment\n'
                            % (kvstore.rank, type(err).__name__, err))
                        sys.stderr.flush()
                        os._exit(EXIT_UNPICKLE)
                    kvstore.set_optimizer(optimizer)
                else:
                    sys.stderr.write('mxnag.dist.server: unknown command %d\n' % cmd_id)
            return controller

    Server(kvstore).run()


if __name__ == '__main__':
    main()
