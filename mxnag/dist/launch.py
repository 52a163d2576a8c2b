"""Start a ps-lite cluster (scheduler, servers, workers) for MXNet's distributed kvstore.

    mxnag launch -n 2 -s 1 -- python recipes/mnist_pretrain.py --kvstore dist_sync ...
    python -m mxnag.dist.launch -n 4 -s 2 --hostfile hosts -- python train.py ...

MXNet's ``tools/launch.py`` is not in the wheel; this is its replacement. Processes run
locally, or over ssh on the hosts of ``--hostfile`` (one host per line, servers and
workers assigned round-robin; the scheduler runs here). Every line a process prints is
forwarded with its role and rank in front. The launcher exits 0 only when every worker
exits 0; it exits non-zero, killing every process it started, as soon as any process
fails, when the cluster has not formed within ``--form-timeout`` seconds, or when the
whole job exceeds ``--timeout``. Servers run ``python -m mxnag.dist.server``, which fails
loudly when it cannot unpickle the workers' optimizer. The prefix ``[worker i]`` is the
launch order; the kvstore rank (``kv.rank``) is assigned by the scheduler and may differ.
Remote hosts need the same Python environment at the same path, and the same working
directory (a shared file system for data and checkpoints).
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

FORMED = 'the scheduler is connected to'


def free_port():
    with socket.socket() as sock:
        sock.bind(('', 0))
        return sock.getsockname()[1]


class Cluster:
    """The processes of one job; ``run()`` returns the exit status of the job."""

    def __init__(self, num_workers, num_servers, command, hosts=None, port=None,
                 form_timeout=60.0, timeout=None, ssh='ssh', python=sys.executable,
                 interface=None, out=sys.stdout, scheduler_host=None):
        self.num_workers, self.num_servers = num_workers, num_servers
        self.command, self.hosts = list(command), list(hosts or [])
        self.port = port or free_port()
        self.form_timeout, self.timeout = form_timeout, timeout
        self.ssh, self.python, self.out = shlex.split(ssh), python, out
        local = not self.hosts
        self.root = scheduler_host or ('127.0.0.1' if local else
                                       socket.gethostbyname(socket.gethostname()))
        self.interface = interface or ('lo' if local else None)
        self.procs = []  # (name, Popen)
        self.formed = threading.Event()
        self.lock = threading.Lock()

    def env(self, role, host):
        # mxnag.dist.server sets DMLC_ROLE itself, after importing mxnet (see its doc)
        env = {'MXNAG_DMLC_ROLE' if role == 'server' else 'DMLC_ROLE': role,
               'DMLC_PS_ROOT_URI': self.root,
               'DMLC_PS_ROOT_PORT': str(self.port), 'DMLC_NUM_SERVER': str(self.num_servers),
               'DMLC_NUM_WORKER': str(self.num_workers)}
        if host in (None, '127.0.0.1', 'localhost'):
            env['DMLC_NODE_HOST'] = '127.0.0.1'
        else:
            env['DMLC_NODE_HOST'] = socket.gethostbyname(host)
        if self.interface:
            env['DMLC_INTERFACE'] = self.interface
        if role == 'scheduler':
            env['PS_VERBOSE'] = '1'  # it then reports when every node has connected
        return env

    def start(self, name, role, argv, host=None):
        env = self.env(role, host)
        if host is None:
            full_env = {k: v for k, v in os.environ.items() if not k.startswith('DMLC_')}
            cmd, full_env = argv, dict(full_env, **env)
        else:  # ssh: the same working directory and variables on the remote host
            remote = 'cd %s && env %s %s' % (
                shlex.quote(os.getcwd()),
                ' '.join('%s=%s' % (k, shlex.quote(v)) for k, v in env.items()),
                ' '.join(shlex.quote(a) for a in argv))
            cmd, full_env = self.ssh + [host, remote], dict(os.environ)
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append((name, proc))
        threading.Thread(target=self.forward, args=(name, proc), daemon=True).start()
        return proc

    def forward(self, name, proc):
        quiet = name == 'scheduler'  # its verbose ps-lite log is only watched
        for raw in iter(proc.stdout.readline, b''):
            line = raw.decode(errors='replace').rstrip('\n')
            if quiet:
                if FORMED in line:
                    self.formed.set()
                continue
            with self.lock:
                self.out.write('[%s] %s\n' % (name, line))
                self.out.flush()

    def host(self, i):
        return self.hosts[i % len(self.hosts)] if self.hosts else None

    def run(self):
        started = time.time()
        server = [self.python, '-m', 'mxnag.dist.server']
        try:
            self.start('scheduler', 'scheduler', [self.python, '-c', 'import mxnet'])
            for i in range(self.num_servers):
                self.start('server %d' % i, 'server', server, self.host(i))
            workers = [self.start('worker %d' % i, 'worker', self.command, self.host(i))
                       for i in range(self.num_workers)]
            while True:
                time.sleep(0.1)
                failed = [(n, p.returncode) for n, p in self.procs if p.poll() not in (None, 0)]
                if failed:
                    return self.fail('%s exited with status %d' % failed[0])
                if all(p.poll() == 0 for p in workers):
                    self.stop(grace=10.0)
                    return 0
                elapsed = time.time() - started
                if not self.formed.is_set() and elapsed > self.form_timeout:
                    return self.fail('the cluster did not form within %gs (scheduler %s:%d)'
                                     % (self.form_timeout, self.root, self.port))
                if self.timeout and elapsed > self.timeout:
                    return self.fail('the job exceeded --timeout %gs' % self.timeout)
        except BaseException:
            self.stop(grace=0.0)
            raise

    def fail(self, reason):
        sys.stderr.write('mxnag launch: %s; stopping all processes\n' % reason)
        self.stop(grace=0.0)
        return 1

    def stop(self, grace):
        """Give the processes ``grace`` seconds to exit by themselves, then kill their
        process groups; returns when none is left."""
        deadline = time.time() + grace
        while time.time() < deadline and any(p.poll() is None for _, p in self.procs):
            time.sleep(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc in self.procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            end = time.time() + 5.0
            while time.time() < end and any(p.poll() is None for _, p in self.procs):
                time.sleep(0.05)
        for _, proc in self.procs:
            try:  # the group may outlive its leader
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def read_hostfile(path):
    try:
        with open(path) as f:
            hosts = [line.split('#')[0].strip() for line in f]
    except OSError as err:
        raise SystemExit('mxnag launch: error: --hostfile %s: %s' % (path, err.strerror))
    hosts = [h for h in hosts if h]
    if not hosts:
        raise SystemExit('mxnag launch: error: --hostfile %s lists no host' % path)
    return hosts


def main(argv=None):
    parser = argparse.ArgumentParser(prog='mxnag launch', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('-n', '--num-workers', type=int, required=True)
    parser.add_argument('-s', '--num-servers', type=int, default=1)
    parser.add_argument('--hostfile', help='hosts to run servers and workers on, over ssh')
    parser.add_argument('--port', type=int, help="scheduler's port (default: a free one)")
    parser.add_argument('--form-timeout', type=float, default=60.0,
                        help='seconds for every node to connect (default 60)')
    parser.add_argument('--timeout', type=float, help='seconds for the whole job (default: none)')
    parser.add_argument('--ssh', default='ssh -o BatchMode=yes',
                        help="remote shell for --hostfile (default '%(default)s')")
    parser.add_argument('--interface', help='network interface for ps-lite (DMLC_INTERFACE)')
    parser.add_argument('--scheduler-host',
                        help="address the hosts reach this machine at (default: its hostname's)")
    parser.add_argument('command', nargs=argparse.REMAINDER, help='-- the worker command')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('no worker command given (put it after --)')
    if args.num_workers < 1 or args.num_servers < 1:
        parser.error('--num-workers and --num-servers must be >= 1')
    hosts = read_hostfile(args.hostfile) if args.hostfile else None
    cluster = Cluster(args.num_workers, args.num_servers, command, hosts, args.port,
                      args.form_timeout, args.timeout, args.ssh, interface=args.interface,
                      scheduler_host=args.scheduler_host)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return cluster.run()


if __name__ == '__main__':
    sys.exit(main())
