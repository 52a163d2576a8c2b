"""Distributed training on loopback: mxnag launch, mxnag.dist.server, the recipes' workers.
Every process runs under a timeout; no test leaves a process behind."""
import os
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import MNIST_DIR, ROOT

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')),
    reason='MNIST not found at %s' % MNIST_DIR)
WORKER = os.path.join(ROOT, 'tests', 'dist_worker.py')
ENV = dict(os.environ, MNIST_DIR=MNIST_DIR, PYTHONWARNINGS='ignore')


def launch(*args, timeout=240):
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', 'mxnag.dist.launch'] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    return proc, time.time() - start


def leftovers(marker):
    out = subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and 'ps -eo' not in line]


def params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def test_two_workers_match_one_process_and_each_other(tmp_path):
    """2 workers + 1 server, dist_sync, 100 steps of adanag on an MNIST subset."""
    (tmp_path / 'dist').mkdir()
    (tmp_path / 'single').mkdir()
    proc, _ = launch('-n', 2, '-s', 1, '--', sys.executable, WORKER, tmp_path / 'dist', 'dist_sync', 4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.count('of 2 done, 25 steps per epoch') == 2
    subprocess.run([sys.executable, WORKER, str(tmp_path / 'single'), 'device', '4'], check=True,
                   env=ENV, timeout=240, capture_output=True)
    rank0, rank1 = params(tmp_path / 'dist' / 'rank0.params'), params(tmp_path / 'dist' / 'rank1.params')
    single = params(tmp_path / 'single' / 'rank0.params')
    for name in single:
        np.testing.assert_array_equal(rank0[name], rank1[name])
        np.testing.assert_allclose(rank0[name], single[name], rtol=1e-4, atol=1e-6)
        assert not np.allclose(single[name], 0)


@pytest.mark.parametrize('states', ['float32', 'state8'])
def test_server_states_in_checkpoints_resume_exactly(tmp_path, states):
    """The servers' optimizer states (8-bit codes and scales with state_bits=8) in the
    checkpoints: a run resumed from epoch 1 ends with the uninterrupted run's weights."""
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir()
    proc, _ = launch('-n', 2, '-s', 2, '--', sys.executable, WORKER, a, 'dist_sync', 3, 'checkpoint',
                     states)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(os.listdir(a / 'ck'))[:5] == ['epoch-0001.json', 'epoch-0001.params',
                                                'epoch-0001.states.server0',
                                                'epoch-0001.states.server1', 'epoch-0002.json']
    (b / 'ck').mkdir(parents=True)
    for name in os.listdir(a / 'ck'):
        if name.startswith('epoch-0001'):
            os.link(a / 'ck' / name, b / 'ck' / name)
    proc, _ = launch('-n', 2, '-s', 2, '--', sys.executable, WORKER, b, 'dist_sync', 3,
                     'checkpoint', 'resume', states)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert 'resuming from' in proc.stdout
    first, resumed = params(a / 'rank0.params'), params(b / 'rank1.params')
    assert all(np.array_equal(first[k], resumed[k]) for k in first)
    if states == 'state8':  # the servers kept 8-bit codes (the 784x128 weight)
        from mxnag import states as state_files
        content = state_files.read(str(a / 'ck' / 'epoch-0001.states.server0'))
        kept = content[0] if isinstance(content, tuple) else content
        dtypes = {str(a.dtype) for s in kept.values() for a in (s if isinstance(s, tuple) else [s])}
        assert "<class 'numpy.uint8'>" in dtypes, dtypes


KILLED_WORKER = textwrap.dedent('''
    import os, time, mxnet as mx
    kv = mx.kv.create('dist_sync')
    kv.init(3, mx.nd.zeros((2,)))
    for i in range(100000):
        if kv.rank == 1 and i == 20:
            os.kill(os.getpid(), 9)
        kv.push(3, mx.nd.ones((2,)))
        out = mx.nd.zeros((2,))
        kv.pull(3, out=out)
        out.wait_to_read()
        time.sleep(0.01)  # mxnag-test-killed-worker
''')


def test_killed_worker_fails_the_job_and_leaves_no_process():
    proc, seconds = launch('-n', 2, '-s', 1, '--', sys.executable, '-c', KILLED_WORKER)
    assert proc.returncode != 0
    assert 'exited with status -9' in proc.stderr and seconds < 60
    assert leftovers('mxnag-test-killed-worker') == [] and leftovers('mxnag.dist.server') == []


UNPICKLABLE = textwrap.dedent('''
    import mxnet as mx
    @mx.optimizer.register
    class OnlyHere(mx.optimizer.SGD):  # defined in __main__: no server can unpickle it
        pass
    kv = mx.kv.create('dist_sync')
    kv.set_optimizer(mx.optimizer.create('onlyhere', learning_rate=0.1))
    kv.init(3, mx.nd.zeros((2,)))
    kv.push(3, mx.nd.ones((2,)))
    print('finished with a wrong model')
''')


def test_server_that_cannot_unpickle_the_optimizer_fails_the_job():
    proc, seconds = launch('-n', 2, '-s', 1, '--timeout', 120, '--', sys.executable, '-c', UNPICKLABLE)
    assert proc.returncode != 0 and seconds < 60
    assert "cannot unpickle the workers' optimizer (AttributeError" in proc.stdout
    assert 'finished with a wrong model' not in proc.stdout
    assert leftovers('mxnag.dist.server') == []


def test_cluster_that_does_not_form_times_out():
    proc, seconds = launch('-n', 3, '-s', 1, '--form-timeout', 8, '--', sys.executable, '-c',
                           'import time; time.sleep(60)  # never joins the cluster')
    assert proc.returncode != 0 and 'did not form within 8s' in proc.stderr
    assert seconds < 40 and leftovers('never joins the cluster') == []


def test_worker_detects_servers_that_only_sum(tmp_path):
    """Servers started MXNet's way (import mxnet), by another launcher, cannot unpickle an
    optimizer from __main__ and only sum: mxnag's workers refuse to train on them."""
    port = str(9300 + os.getpid() % 500)
    base = dict(ENV, DMLC_PS_ROOT_URI='127.0.0.1', DMLC_PS_ROOT_PORT=port, DMLC_NUM_SERVER='1',
                DMLC_NUM_WORKER='1', DMLC_NODE_HOST='127.0.0.1', DMLC_INTERFACE='lo')
    worker = textwrap.dedent('''
        import mxnet as mx
        from mxnag.dist import worker
        @mx.optimizer.register
        class OnlyHere(mx.optimizer.SGD):
            pass
        kv = mx.kv.create('dist_sync')
        kv.set_optimizer(mx.optimizer.create('onlyhere', learning_rate=0.1))
        worker.verify_server_optimizer(kv)
    ''')
    procs = [subprocess.Popen([sys.executable, '-c', 'import mxnet'], env=dict(base, DMLC_ROLE=role),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for role in ('scheduler', 'server')]
    try:
        proc = subprocess.run([sys.executable, '-c', worker], env=dict(base, DMLC_ROLE='worker'),
                              capture_output=True, text=True, timeout=120)
    finally:
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert proc.returncode != 0
    assert 'servers only sum the gradients' in proc.stderr


def test_hostfile_runs_nodes_through_the_remote_shell(tmp_path):
    """--hostfile with a stand-in for ssh that runs the remote command here."""
    fake_ssh = tmp_path / 'fake-ssh'
    fake_ssh.write_text('#!/bin/sh\necho "$1" >> %s\nshift\nexec sh -c "$*"\n' % (tmp_path / 'hosts-used'))
    fake_ssh.chmod(0o755)
    (tmp_path / 'hosts').write_text('localhost\n# a comment\n127.0.0.1\n')
    (tmp_path / 'out').mkdir()
    proc, _ = launch('-n', 2, '-s', 1, '--hostfile', tmp_path / 'hosts', '--ssh', fake_ssh,
                     '--scheduler-host', '127.0.0.1', '--interface', 'lo', '--',
                     sys.executable, WORKER, tmp_path / 'out', 'dist_sync', 1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted((tmp_path / 'hosts-used').read_text().split()) == ['127.0.0.1', 'localhost', 'localhost']
    assert (tmp_path / 'out' / 'rank1.params').exists()


def test_pretrain_recipe_on_two_workers_writes_once(tmp_path):
    proc, _ = launch('-n', 2, '-s', 1, '--', sys.executable, os.path.join(ROOT, 'recipes', 'mnist_pretrain.py'),
                     '--kvstore', 'dist_sync', '--model', 'mlp', '--shots', 20, '--batch-size', 20,
                     '--epochs', 2, '--data-dir', MNIST_DIR, '--no-progress', '--out', tmp_path / 'r.json',
                     '--save', tmp_path / 'ckpt.params', '--log', tmp_path / 'log.jsonl')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.count('test accuracy') == 2  # both workers finished
    import json
    meta = json.loads((tmp_path / 'ckpt.json').read_text())
    assert sorted(meta['sha256']) == ['params', 'states.server0']
    log = (tmp_path / 'log.jsonl').read_text().splitlines()
    assert sum('"event": "epoch"' in line for line in log) == 2  # rank 0 alone logs


# Run as the cluster's worker: the launcher is its parent; the launcher's children (the
# scheduler, the server, this worker) and their descendants are the cluster. Prints each
# process's listening TCP sockets as JSON, found through /proc (no tool needed).
LISTENERS = textwrap.dedent('''
    import json, os
    import mxnet as mx

    kv = mx.kv.create('dist_sync')  # returns once every node has connected (ps-lite barrier)
    kv.init(3, mx.nd.zeros((2,)))
    kv.push(3, mx.nd.ones((2,)))
    out = mx.nd.zeros((2,))
    kv.pull(3, out=out)
    out.wait_to_read()

    def parent(pid):
        with open('/proc/%d/stat' % pid) as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])

    launcher = os.getppid()
    pids = {launcher}
    while True:  # the launcher's descendants
        more = set()
        for name in os.listdir('/proc'):
            if name.isdigit():
                try:
                    if parent(int(name)) in pids:
                        more.add(int(name))
                except (OSError, IndexError):
                    pass
        if more <= pids:
            break
        pids |= more

    inodes = {}  # socket inode -> pid
    for pid in pids:
        fd_dir = '/proc/%d/fd' % pid
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith('socket:['):
                inodes[target[8:-1]] = pid

    listening = []
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == '0A' and inode in inodes:
                    pid = inodes[inode]
                    with open('/proc/%d/cmdline' % pid) as c:
                        cmd = c.read().replace('\\0', ' ').strip()[:80]
                    listening.append({'table': table, 'local': local, 'pid': pid, 'cmd': cmd})
    print('LISTENERS ' + json.dumps({'launcher': launcher, 'processes': sorted(pids),
                                     'listening': listening}))
''')
LOOPBACK = {'/proc/net/tcp': {'0100007F'},  # 127.0.0.1 as /proc writes it
            '/proc/net/tcp6': {'00000000000000000000000001000000',   # ::1
                               '0000000000000000FFFF00000100007F'}}  # ::ffff:127.0.0.1


def test_local_cluster_listens_on_the_loopback_only():
    """MXNet's kvstore servers unpickle whatever a worker sends: a local cluster must not be
    reachable from other hosts. Every listening socket of the launcher's processes is on
    127.0.0.1 (a node bound to 0.0.0.0 shows as 00000000 and fails)."""
    import json
    proc, _ = launch('-n', 1, '-s', 1, '--timeout', 120, '--', sys.executable, '-c', LISTENERS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if 'LISTENERS ' in line)
    found = json.loads(line.split('LISTENERS ', 1)[1])
    assert len(found['processes']) >= 4, found  # the launcher, scheduler, server and worker
    listening = found['listening']
    # every ps-lite node (scheduler, server, worker) binds a socket of its own
    assert len({s['pid'] for s in listening}) >= 3, found
    for sock in listening:
        address = sock['local'].split(':')[0]
        assert address in LOOPBACK[sock['table']], sock
