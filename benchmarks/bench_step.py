"""Time one optimizer step: mxnag's fused AdaNAG and Adan (32-bit and 8-bit states) next to
MXNet's own update operators, their memory floor (the same traffic without the maths),
PyTorch's Adam/NAdam and bitsandbytes' 8-bit Adam.

    python benchmarks/bench_step.py [--size N] [--rounds R] [--repeats N] [--json out.json]
                                    [--no-resnet] [--no-torch] [--no-bnb]

Two problems: one float32 tensor of ``--size`` elements, and the 161 trainable parameter
shapes of ResNet-50 (gluoncv's ``resnet50_v1b``). An MXNet step is timed from the Python
call to ``mx.nd.waitall()``: one step alone (its latency, with MXNet's dispatch and
engine round trip), and, in the rows marked "queued", the time per step of
``--queue`` steps issued back to back before one ``waitall`` (as a training loop issues
them: the dispatch of one step overlaps the previous one). PyTorch runs in a subprocess
(its OpenMP runtime stays out of MXNet's way), on the same shapes; its steps are
synchronous. bitsandbytes' ``Adam8bit`` (CPU) runs in the same subprocess when
bitsandbytes imports there and steps (the JSON's ``torch`` entry gives its version, or why
it is absent). The cases take turns: ``--rounds`` rounds of up to ``--repeats`` steps each
(fewer for slow cases), so that a change in the machine's load hits every case alike;
each number is the median over all its steps.

Two columns per row say what a step costs in memory, per parameter (element): "B
moved/param", the bytes one step reads plus writes by its rule (float32 weight and
gradient; a float32 state element is 4 bytes, an 8-bit one 1 byte plus a float32 scale per
block of 256, for tensors of at least 4096 elements; smaller tensors keep float32
states), and "state B/param", the optimizer state's memory as measured on the arrays the
optimizer actually holds after the run (mxnag's and MXNet's: the Updater's states, less
mxnag's float64 step counts, with a multi-precision master weight; PyTorch's and
bitsandbytes': the tensors of ``opt.state``, less scalar step tensors).

The floor of an update is the time its memory traffic takes without its maths: one pass
of ``mxnag_stream`` (``t += g`` for each array ``t`` the update writes, with the same
threads, over one array of the problem's total size) reads and writes exactly the
arrays the update reads and writes, e.g. 4 read and 3 written for AdaNAG or Adam. It is
timed with steps queued (the memory time, with the least dispatch), in turns with the
rest; it streams float32 arrays, so rows with 8-bit states have none. "GB/s" counts the
bytes of "B moved/param" once. A copy is shown for reference, as
a bandwidth familiar to compare with; being memcpy, it may or may not read the
destination before writing it (with non-temporal stores it does not), so it is no floor.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# Arrays of the parameter's size each update reads + writes (it reads all it writes);
# an mxnag rule reads the weight, the gradient and its states and writes the weight and
# its states (bytes_moved). Every array but the weight and the gradient is a state.
BYTES_MOVED = {  # name: (reads, writes)
    'adam': (4, 3), 'nadam': (4, 3), 'sgd_momentum': (3, 2), 'nag': (3, 2), 'copy': (1, 1),
}
# 8-bit states (bitsandbytes' blockwise rule, which mxnag's state_bits=8 follows): one
# byte per element and a float32 scale per block of BLOCK_8BIT elements, for tensors of at
# least MIN_8BIT_SIZE elements; smaller tensors keep float32 states.
BLOCK_8BIT = 256
MIN_8BIT_SIZE = 4096


def bytes_moved(algorithm, state_bytes=None):
    """(reads, writes) of one step of ``algorithm`` (an MXNet one, or an mxnag optimizer by
    name): in arrays of the parameter's size when ``state_bytes`` is None; else in bytes
    per parameter, the weight and the gradient float32 and each state element
    ``state_bytes`` bytes (4 for float32 states, ``state_element_bytes(n, 8)`` for 8-bit
    ones)."""
    if algorithm in BYTES_MOVED:
        reads, writes = BYTES_MOVED[algorithm]
        states = writes - 1
    else:
        from mxnag.optim import optimizers
        states = len(optimizers()[algorithm].rule.states)
        reads, writes = 2 + states, 1 + states
    if state_bytes is None:
        return reads, writes
    return (4 * (reads - states) + state_bytes * states,
            4 * (writes - states) + state_bytes * states)


def state_element_bytes(elements, bits=32):
    """Bytes per element of one state of a tensor of ``elements`` elements held in ``bits``
    bits: 4 (float32), or for 8 bits one byte of code per element and a float32 scale per
    block of 256 (1 + 4/256, rounded up to whole blocks) from 4096 elements on."""
    if bits == 32 or elements < MIN_8BIT_SIZE:
        return 4.0
    return (elements + 4 * math.ceil(elements / BLOCK_8BIT)) / elements


def traffic(algorithm, shapes, bits=32):
    """Bytes one step of ``algorithm`` reads plus writes, per parameter (element), over
    tensors of ``shapes`` whose states are held in ``bits`` bits (bytes_moved)."""
    sizes = [int(_prod(s)) for s in shapes]
    moved = sum(size * sum(bytes_moved(algorithm, state_element_bytes(size, bits)))
                for size in sizes)
    return moved / sum(sizes)


def state_nbytes(state, seen=None):
    """Bytes of the arrays of one parameter's optimizer state as MXNet's Updater holds it
    (an NDArray, None, or tuples of them, nested for a multi-precision master weight),
    less mxnag's step counts (the last array of a state tuple, float64 of shape (2,)); an
    array met twice (``seen``: ids of those counted) counts once."""
    import numpy
    seen = set() if seen is None else seen
    if state is None:
        return 0
    if isinstance(state, (tuple, list)):
        items = list(state)
        if items and _is_step_count(items[-1]):
            items = items[:-1]
        return sum(state_nbytes(item, seen) for item in items)
    if not hasattr(state, 'shape') or id(state) in seen:
        return 0
    seen.add(id(state))
    return int(_prod(state.shape)) * numpy.dtype(state.dtype).itemsize


def _is_step_count(array):
    import numpy
    return (hasattr(array, 'shape') and tuple(array.shape) == (2,)
            and numpy.dtype(array.dtype) == numpy.float64)


# PyTorch's side: a process that times its cases on request (one JSON line in: case and
# number of steps; one line out: the seconds of each step), so that its turns interleave
# with MXNet's; asked for 'memory', it replies each case's bytes of optimizer state.
# bitsandbytes' 8-bit Adam joins when asked for (argv[2]) and it imports and steps a
# small tensor with 8-bit states; otherwise the first line says why not.
TORCH_SCRIPT = r'''
import json, os, sys, time
replies = os.fdopen(os.dup(1), 'w')  # the replies; whatever a library prints goes to stderr
os.dup2(2, 1)
import torch
shapes = json.loads(sys.argv[1])
with_bnb = len(sys.argv) > 2 and json.loads(sys.argv[2])
torch.manual_seed(0)
threads = torch.get_num_threads()
makers = {
    'torch Adam (fused)': (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), threads),
    'torch NAdam (foreach)': (lambda p: torch.optim.NAdam(p, lr=1e-3, foreach=True), threads),
    'torch NAdam (for-loop)': (lambda p: torch.optim.NAdam(p, lr=1e-3, foreach=False), threads),
    # on a busy machine one thread can beat a team that waits for its slowest
    'torch Adam (fused, 1 thread)': (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 1),
}
info = {'torch_version': torch.__version__, 'threads': threads}


def bnb_adam8bit():
    """bitsandbytes' Adam8bit, once checked to step a CPU tensor with uint8 states."""
    import bitsandbytes as bnb
    probe = torch.zeros(4096)
    probe.grad = torch.ones(4096)
    opt = bnb.optim.Adam8bit([probe], lr=1e-3)
    opt.step()
    state = opt.state[probe]
    if state['state1'].dtype != torch.uint8 or state['state2'].dtype != torch.uint8 \
            or 'absmax1' not in state or not bool(probe.ne(0).all()):
        raise RuntimeError('Adam8bit did not step a CPU tensor with uint8 states')
    info['bitsandbytes'] = bnb.__version__
    return lambda p: bnb.optim.Adam8bit(p, lr=1e-3)


if with_bnb:
    try:
        makers['bnb Adam8bit'] = (bnb_adam8bit(), threads)
    except Exception as err:  # not installed, no CPU backend, ...
        info['bitsandbytes_absent'] = ('%s: %s' % (type(err).__name__, err)).strip()[:300]
else:
    info['bitsandbytes_absent'] = 'not asked for: --no-bnb'


def state_bytes(opt):
    """Bytes of the tensors of opt.state (less scalar step tensors; a tensor shared
    between parameters, as bitsandbytes' quantization map, counts once)."""
    seen = set()
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                seen.add((value.data_ptr(), value.numel() * value.element_size()))
    return sum(size for _, size in seen)


optimizers = {}
for name, (make, _) in makers.items():
    params = [torch.randn(s) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * 0.01
    optimizers[name] = make(params)
info['cases'] = list(makers)
print(json.dumps(info), file=replies, flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request.get('memory'):
        print(json.dumps({name: state_bytes(opt) for name, opt in optimizers.items()}),
              file=replies, flush=True)
        continue
    torch.set_num_threads(makers[request['case']][1])
    opt, times = optimizers[request['case']], []
    for _ in range(request['steps']):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    print(json.dumps(times), file=replies, flush=True)
'''


class TorchPeer:
    """PyTorch's cases (and bitsandbytes' when ``with_bnb`` and it works there) in a
    subprocess, timed a turn at a time (``steps``)."""

    def __init__(self, shapes, with_bnb=True):
        self.errors = tempfile.TemporaryFile('w+')  # a file: a full pipe would stall PyTorch
        self.process = subprocess.Popen(
            [sys.executable, '-c', TORCH_SCRIPT, json.dumps([list(s) for s in shapes]),
             json.dumps(bool(with_bnb))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
            universal_newlines=True)
        self.info = self._reply()
        self.cases = self.info.pop('cases')

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.errors.seek(0)
            error = self.errors.read().strip().splitlines()
            raise RuntimeError(error[-1] if error else 'the PyTorch process ended')
        return json.loads(line)

    def _ask(self, request):
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        return self._reply()

    def steps(self, case, count):
        """Seconds of each of ``count`` steps of ``case``."""
        return self._ask({'case': case, 'steps': count})

    def state_bytes(self):
        """Case -> bytes of its optimizer's state tensors now (step counts aside)."""
        return self._ask({'memory': True})

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.errors.close()


def torch_case(name):
    """(algorithm, state bits) of a case of the PyTorch process."""
    if name.startswith('bnb '):
        return 'adam', 8
    return ('nadam' if 'NAdam' in name else 'adam'), 32


def mxnet_steps(step, count, queue=1):
    """Seconds per step of ``count`` timings of ``step``: each from ``mx.nd.waitall()`` to
    ``mx.nd.waitall()`` around ``queue`` calls of ``step`` (divided by ``queue``)."""
    import mxnet as mx
    times = []
    for _ in range(count):
        mx.nd.waitall()
        start = time.perf_counter()
        for _ in range(queue):
            step()
        mx.nd.waitall()
        times.append((time.perf_counter() - start) / queue)
    return times


def resnet50_shapes():
    """The shapes of the 161 trainable parameters of gluoncv's resnet50_v1b."""
    import mxnet as mx
    from mxnag.train.models import gluoncv_model_zoo  # imports GluonCV with PyTorch hidden from it
    net = gluoncv_model_zoo().get_model('resnet50_v1b', pretrained=False)
    net.initialize(mx.init.Zero())
    net(mx.nd.zeros((1, 3, 32, 32)))
    shapes = [p.shape for p in net.collect_params().values() if p.grad_req != 'null']
    if len(shapes) != 161:
        raise RuntimeError('resnet50_v1b has %d trainable parameters, expected 161' % len(shapes))
    return shapes


class Problem:
    """Weights and gradients of the given shapes (float32, cpu), and ways to step them."""

    def __init__(self, shapes, seed=0):
        import mxnet as mx
        mx.random.seed(seed)
        self.shapes = shapes
        self.size = sum(int(_prod(s)) for s in shapes)
        self.weights = [mx.nd.random.normal(shape=s) for s in shapes]
        self.grads = [mx.nd.random.normal(shape=s) * 0.01 for s in shapes]

    def updater_step(self, optimizer):
        """A step of ``optimizer`` through MXNet's Updater with every parameter in one call,
        as gluon.Trainer makes it (aggregated when the optimizer's aggregate_num > 0); its
        ``state_bytes()`` gives the bytes of the states the Updater holds (state_nbytes)."""
        import mxnet as mx
        updater = mx.optimizer.get_updater(optimizer)
        indices = list(range(len(self.weights)))

        def step():
            updater(indices, self.grads, self.weights)

        def state_bytes():
            seen = set()
            return sum(state_nbytes(state, seen) for state in updater.states.values())
        step.state_bytes = state_bytes
        return step

    def adam_update_step(self):
        """MXNet's fused ``adam_update`` operator, one call per parameter."""
        import mxnet as mx
        states = [(mx.nd.zeros(s), mx.nd.zeros(s)) for s in self.shapes]

        def step():
            for w, g, (m, v) in zip(self.weights, self.grads, states):
                mx.nd.adam_update(w, g, m, v, out=w, lr=1e-3, rescale_grad=1.0)
        step.state_bytes = lambda: sum(state_nbytes(state) for state in states)
        return step

    def copy_steps(self):
        """Copies of the weights into other arrays: MXNet's ``copyto`` and, when built,
        mxnag's threaded copy (the same threads and dispatch as the fused updates)."""
        import mxnet as mx
        from mxnag.kernels import fused_cpu
        targets = [mx.nd.zeros(s) for s in self.shapes]
        steps = {'copy (MXNet copyto)': lambda: [w.copyto(t) for w, t in zip(self.weights, targets)]}
        if fused_cpu.available():
            steps['copy (mxnag threads)'] = lambda: [copy(w, t)
                                                    for w, t in zip(self.weights, targets)]
        return steps

    def floor_steps(self):
        """Writes -> a step of ``mxnag_stream`` that reads one array and reads and writes
        ``writes`` more, each of the problem's total size; {} without the fused library."""
        import mxnet as mx
        from mxnag.kernels import fused_cpu
        if not fused_cpu.available():
            return {}
        source = mx.nd.random.normal(shape=(self.size,)) * 1e-3
        steps = {}
        for writes in sorted({w for _, w in BYTES_MOVED.values() if w > 1}):
            targets = [mx.nd.zeros((self.size,)) for _ in range(writes)]
            steps[writes] = lambda targets=targets: stream(source, targets)
        return steps


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# The cases with 8-bit states (mxnag's state_bits=8), by the optimizer they run.
EIGHT_BIT = {'adanag': 'mxnag adanag (fused, 8-bit states)', 'adan': 'mxnag adan (fused, 8-bit states)'}
# The cases also timed with --queue steps queued.
QUEUED = ('mxnag adanag (fused)', EIGHT_BIT['adanag'], 'MXNet adam_update',
          'MXNet sgd momentum (aggregated)', 'copy (MXNet copyto)', 'copy (mxnag threads)')


def mxnet_cases(problem, queue):
    """Name -> (algorithm for the floor, step function, steps queued per timing, state
    bits), measured in this process, and name -> why a case is not measured (8-bit states
    while mxnag does not take ``state_bits=8``). A step function's ``state_bytes()`` gives
    its optimizer state's bytes (None for copies)."""
    import mxnet as mx
    import mxnag  # noqa: F401  (registers the optimizers)
    from mxnag.kernels import fused_cpu
    from mxnag.optim import optimizers
    cases, skipped = {}, {}
    if fused_cpu.available():
        for name in sorted(optimizers()):
            cases['mxnag %s (fused)' % name] = (name, problem.updater_step(
                mx.optimizer.create(name, learning_rate=1e-3)), 32)
        if len(problem.shapes) > 1:
            cases['mxnag adanag (fused, aggregate_num=4)'] = ('adanag', problem.updater_step(
                mx.optimizer.create('adanag', learning_rate=1e-3, aggregate_num=4)), 32)
            cases['mxnag adanag (fused, not aggregated)'] = ('adanag', problem.updater_step(
                mx.optimizer.create('adanag', learning_rate=1e-3, aggregate_num=0)), 32)
        for name, label in EIGHT_BIT.items():
            try:
                optimizer = mx.optimizer.create(name, learning_rate=1e-3, state_bits=8)
            except (TypeError, ValueError) as err:
                skipped[label] = 'state_bits=8 not accepted: %s' % str(err).split(';')[0]
                if label in QUEUED and queue > 1:
                    skipped['%s, %d queued' % (label, queue)] = skipped[label]
            else:
                cases[label] = (name, problem.updater_step(optimizer), 8)
    cases['mxnag adanag (composed, MXNAG_FUSED=0)'] = ('adanag', _composed(problem, 'adanag'), 32)
    cases['MXNet adam_update'] = ('adam', problem.adam_update_step(), 32)
    cases['MXNet nag (momentum 0.9)'] = ('nag', problem.updater_step(
        mx.optimizer.create('nag', learning_rate=1e-3, momentum=0.9)), 32)
    cases['MXNet nadam'] = ('nadam', problem.updater_step(
        mx.optimizer.create('nadam', learning_rate=1e-3)), 32)
    cases['MXNet sgd momentum (aggregated)'] = ('sgd_momentum', problem.updater_step(
        mx.optimizer.create('sgd', learning_rate=1e-3, momentum=0.9)), 32)
    for name, step in problem.copy_steps().items():
        cases[name] = ('copy', step, 32)
    cases = {name: (algorithm, step, 1, bits) for name, (algorithm, step, bits) in cases.items()}
    if queue > 1:
        for name in QUEUED:
            if name in cases:
                algorithm, step, _, bits = cases[name]
                cases['%s, %d queued' % (name, queue)] = (algorithm, step, queue, bits)
    return cases, skipped


def _composed(problem, name):
    """A step with the fused path switched off for its duration."""
    import mxnet as mx
    from mxnag import kernels
    inner = problem.updater_step(mx.optimizer.create(name, learning_rate=1e-3))

    def step():
        kernels.set_fused(False)
        try:
            inner()
        finally:
            kernels.set_fused(True)
    step.state_bytes = inner.state_bytes
    return step


def _bench_ops():
    """Build (cached like the fused operators) and load this benchmark's operators, unless
    this process has them already; returns the module that invokes them."""
    from mxnet.base import _LIB, MXNetError, c_str, check_call, mx_uint
    from mxnag.kernels import build, fused_cpu
    try:
        fused_cpu._op_handle('mxnag_stream')
    except MXNetError:  # not loaded yet
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'src', 'bench_ops.cc')
        path = build.build(source=source, stem='mxnag_bench')['path']
        check_call(_LIB.MXLoadLib(c_str(path), mx_uint(0)))
    return fused_cpu


def copy(src, dst):
    """``dst[:] = src`` with the fused operators' threads (operator ``mxnag_copy``)."""
    _bench_ops().invoke('mxnag_copy', [src], [], [], [dst])


def stream(source, targets):
    """``t += source`` for every float32 array ``t`` of ``targets`` (1 to 5, the shape of
    ``source``), in one pass with the fused operators' threads (operator
    ``mxnag_stream``): the memory traffic of an update that reads ``source`` and reads
    and writes ``targets``, without its maths (the benchmark's bandwidth floor)."""
    _bench_ops().invoke('mxnag_stream', [targets[0], source] + list(targets[1:]), ['targets'],
                        [str(len(targets))], [targets[0]])


# The name of the floor rows, by arrays read and written.
FLOOR = 'floor: read %d, write %d arrays (mxnag_stream, queued)'
# A case whose step takes longer than this gets fewer steps per round (at least one).
ROUND_SECONDS = 0.25


def run_problem(label, shapes, rounds, repeats, warmup, with_torch, queue, with_bnb=True):
    """Measure every case on ``shapes`` in turns; return rows with ratios, floors, bytes
    moved and state memory per parameter, and the cases not measured (``skipped``)."""
    problem = Problem(shapes)
    # name -> kind, arrays (read, written), state bits, algorithm, steps(count) -> seconds,
    # memory() -> bytes of optimizer state (None: not an optimizer)
    timers = {}
    cases, skipped = mxnet_cases(problem, queue)
    for name, (algorithm, step, queued, bits) in cases.items():
        timers[name] = dict(
            kind='copy' if algorithm == 'copy' else 'update', arrays=bytes_moved(algorithm),
            bits=bits, algorithm=algorithm, memory=getattr(step, 'state_bytes', None),
            steps=lambda count, step=step, queued=queued: mxnet_steps(step, count, queued))
    for writes, step in problem.floor_steps().items():
        timers[FLOOR % (writes + 1, writes)] = dict(
            kind='floor', arrays=(writes + 1, writes), bits=32, algorithm=None, memory=None,
            steps=lambda count, step=step: mxnet_steps(step, count, max(queue, 1)))
    peer, extra = None, {'skipped': True}
    if with_torch:
        try:
            peer = TorchPeer(shapes, with_bnb)
        except (OSError, RuntimeError, ValueError) as err:
            extra = {'error': str(err)}
        else:
            extra = peer.info
            for name in peer.cases:
                algorithm, bits = torch_case(name)
                timers[name] = dict(kind='update', arrays=bytes_moved(algorithm), bits=bits,
                                    algorithm=algorithm, memory=None,
                                    steps=lambda count, name=name: peer.steps(name, count))
    try:
        per_round = {}
        for name, timer in timers.items():  # warm up, and size each case's turns
            seconds = timer['steps'](max(1, warmup))[-1]
            per_round[name] = max(1, min(repeats, int(ROUND_SECONDS / max(seconds, 1e-9))))
        samples = {name: [] for name in timers}
        round_ms = {name: [] for name in timers}  # each round's median
        for _ in range(rounds):
            for name, timer in timers.items():
                times = timer['steps'](per_round[name])
                samples[name] += times
                round_ms[name].append(statistics.median(times) * 1e3)
        state_bytes = {name: timer['memory']() if timer['memory'] else None
                       for name, timer in timers.items()}
        if peer is not None:
            state_bytes.update(peer.state_bytes())
    finally:
        if peer is not None:
            peer.close()
    rows = {}
    for name, times in samples.items():
        timer = timers[name]
        (reads, writes), ms = timer['arrays'], statistics.median(times) * 1e3
        moved = (traffic(timer['algorithm'], shapes, timer['bits']) if timer['algorithm']
                 else 4.0 * (reads + writes))
        rows[name] = {'kind': timer['kind'], 'reads': reads, 'writes': writes,
                      'state_bits': timer['bits'] if timer['kind'] == 'update' else None,
                      'ms': ms, 'steps_timed': len(times),
                      'GBps': moved * problem.size / (ms * 1e-3) / 1e9,
                      'bytes_per_param': moved,
                      'state_bytes_per_param': (state_bytes[name] / problem.size
                                                if state_bytes.get(name) is not None else None),
                      'round_ms': round_ms[name]}
    reference = rows.get('mxnag adanag (fused)', {}).get('ms')
    for row in rows.values():
        # the floors stream float32 arrays: rows with 8-bit states move fewer bytes
        floor = (rows.get(FLOOR % (row['reads'], row['writes']))
                 if row['kind'] == 'update' and row['state_bits'] == 32 else None)
        row['floor_ms'] = floor['ms'] if floor else None
        row['x_floor'] = row['ms'] / floor['ms'] if floor else None
        row['x_adanag'] = row['ms'] / reference if reference else None
    return {'label': label, 'tensors': len(shapes), 'elements': problem.size, 'rounds': rounds,
            'torch': extra, 'rows': rows, 'skipped': skipped}


def format_table(result):
    """A markdown table of one problem's rows, then what was not measured and why."""
    def number(value):
        return '-' if value is None else '%.2f' % value
    lines = ['%s: %d tensor(s), %d float32 elements'
             % (result['label'], result['tensors'], result['elements']),
             '',
             '| step | median ms | x adanag (fused) | GB/s | B moved/param | state B/param '
             '| floor ms | x floor | steps timed |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, row in result['rows'].items():
        lines.append('| %s | %.2f | %s | %.1f | %s | %s | %s | %s | %d |'
                     % (name, row['ms'], number(row['x_adanag']), row['GBps'],
                        number(row.get('bytes_per_param')), number(row.get('state_bytes_per_param')),
                        number(row['floor_ms']), number(row['x_floor']), row['steps_timed']))
    notes = ['not measured: %s (%s)' % item for item in result.get('skipped', {}).items()]
    torch = result['torch']
    if torch.get('error'):
        notes.append('PyTorch: %s' % torch['error'])
    elif 'bitsandbytes' in torch:
        notes.append('bitsandbytes %s (CPU)' % torch['bitsandbytes'])
    elif 'bitsandbytes_absent' in torch:
        notes.append('bitsandbytes: not measured (%s)' % torch['bitsandbytes_absent'])
    return '\n'.join(lines + ([''] + notes if notes else []))


def round_ratios(rows, name, peers):
    """``name``'s time over the fastest of ``peers`` in each round (the cases take turns,
    so a round's numbers were measured under the same load): a list, or None."""
    peers = [rows[peer] for peer in peers if peer in rows]
    if name not in rows or not peers:
        return None
    return [mine / min(peer['round_ms'][k] for peer in peers)
            for k, mine in enumerate(rows[name]['round_ms'])]


def versus_torch(results):
    """adanag (32-bit and 8-bit states) on the single tensor against PyTorch's fused Adam
    (the faster of its two thread counts), round by round: {'one step alone'|'steps
    queued'[+ ', 8-bit states']: summary}."""
    rows = results.get('single', {}).get('rows', {})
    torch = _torch_fused_adam(rows)
    out = {}
    for suffix, name in (('', 'mxnag adanag (fused)'), (', 8-bit states', EIGHT_BIT['adanag'])):
        for label, key in (('one step alone', name), ('steps queued', _queued_name(rows, name))):
            ratios = round_ratios(rows, key, torch) if key else None
            if ratios:
                out[label + suffix] = {
                    'ratios': ratios, 'median': statistics.median(ratios), 'min': min(ratios),
                    'max': max(ratios), 'ahead': sum(r < 1 for r in ratios)}
    return out


# Ratios the issue sets a ceiling on, each with its ceiling (target_ratios, targets).
RATIO_TARGETS = {
    'adanag 8-bit 10M / torch fused Adam (one step alone)': 0.90,
    'adanag 8-bit 10M / torch fused Adam (steps queued)': 0.90,
    'adanag 8-bit / 32-bit state memory (10M)': 0.27,
    'adanag 32-bit 10M / torch fused Adam (one step alone)': 1.0,
    'adanag 32-bit 10M / torch fused Adam (steps queued)': 1.0,
}


def target_ratios(results):
    """The measured value of each ratio of RATIO_TARGETS (None where not measured): median
    times on the single tensor against the faster of PyTorch's fused Adam rows, state
    memory per parameter of adanag with 8-bit states against adanag's."""
    single = results.get('single', {}).get('rows', {})
    torch = [single[name]['ms'] for name in _torch_fused_adam(single)]

    def over_torch(row):
        return row['ms'] / min(torch) if row and torch else None
    fused, eight = single.get('mxnag adanag (fused)'), single.get(EIGHT_BIT['adanag'])
    memory = None
    if fused and eight and fused.get('state_bytes_per_param') and \
            eight.get('state_bytes_per_param') is not None:
        memory = eight['state_bytes_per_param'] / fused['state_bytes_per_param']
    return {
        'adanag 8-bit 10M / torch fused Adam (one step alone)': over_torch(eight),
        'adanag 8-bit 10M / torch fused Adam (steps queued)':
            over_torch(_queued(single, EIGHT_BIT['adanag'])),
        'adanag 8-bit / 32-bit state memory (10M)': memory,
        'adanag 32-bit 10M / torch fused Adam (one step alone)': over_torch(fused),
        'adanag 32-bit 10M / torch fused Adam (steps queued)':
            over_torch(_queued(single, 'mxnag adanag (fused)')),
    }


def targets(results, ratios=None):
    """The issue's targets, evaluated on the measured numbers (None where not measured);
    ``ratios``: target_ratios(results), when already computed."""
    out = {}
    ratios = target_ratios(results) if ratios is None else ratios
    single = results.get('single', {}).get('rows', {})
    fused = single.get('mxnag adanag (fused)')
    if fused:
        out['adanag 10M within 1.5x of its floor'] = (
            fused['x_floor'] <= 1.5 if fused['x_floor'] is not None else None)
        adam = single.get('MXNet adam_update')
        out['adanag 10M >= 4x faster than adam_update'] = adam['ms'] / fused['ms'] >= 4.0
    for name, ceiling in RATIO_TARGETS.items():
        if ratios.get(name) is not None or fused:
            out['%s <= %.2f' % (name, ceiling)] = (
                ratios[name] <= ceiling if ratios.get(name) is not None else None)
    resnet = results.get('resnet50', {}).get('rows', {})
    if 'mxnag adanag (fused)' in resnet:
        sgd = 'MXNet sgd momentum (aggregated)'
        out['resnet50 adanag no slower than sgd momentum (one step alone)'] = (
            resnet['mxnag adanag (fused)']['ms'] <= resnet[sgd]['ms'])
        if _queued(resnet, 'mxnag adanag (fused)') and _queued(resnet, sgd):
            out['resnet50 adanag no slower than sgd momentum (steps queued)'] = (
                _queued(resnet, 'mxnag adanag (fused)')['ms'] <= _queued(resnet, sgd)['ms'])
    epoch = results.get('epoch', {}).get('rows', {})
    if epoch:
        out['lenet epoch with adanag within 3% of sgd'] = epoch['adanag']['x_first'] <= 1.03
    return out


def _queued_name(rows, name):
    """The name of the row of ``name`` timed with steps queued, or None."""
    return next((key for key in rows if key.startswith(name + ', ') and key.endswith(' queued')), None)


def _queued(rows, name):
    """The row of ``name`` timed with steps queued, or None."""
    key = _queued_name(rows, name)
    return rows[key] if key else None


def _torch_fused_adam(rows):
    """The names of PyTorch's fused Adam rows (its default thread count and one thread)."""
    return [name for name in rows if name.startswith('torch Adam (fused')]


def cupy_cases(size, repeats, warmup):
    """The CUDA kernels of src/fused_cuda.cu run by CuPy on one float32 tensor of ``size``
    elements, timed with CUDA events, next to a device-to-device copy of the same bytes;
    {} without CuPy or a GPU. (The mx.rtc path launches the same kernels.)"""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return {}
    except Exception:  # noqa: BLE001  (no CuPy, no driver, no device)
        return {}
    from mxnag.kernels import cuda
    from mxnag.optim import optimizers
    rules = {cls.rule.name: cls.rule for cls in optimizers().values()}
    module = cupy.RawModule(code=cuda.source(*rules.values()))

    def timed(launch):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        times = []
        for i in range(warmup + repeats):
            start.record()
            launch()
            stop.record()
            stop.synchronize()
            if i >= warmup:
                times.append(cupy.cuda.get_elapsed_time(start, stop))
        return statistics.median(times)

    rows = {}
    src, dst = cupy.random.standard_normal(size, dtype=cupy.float32), cupy.empty(size, cupy.float32)
    rows['copy (cupy)'] = {'algorithm': 'copy', 'ms': timed(lambda: dst.__setitem__(Ellipsis, src))}
    shared = {'rescale_grad': 1.0, 'clip_gradient': None, 'beta1': 0.9, 'beta2': 0.999,
              'beta3': 0.99, 'epsilon': 1e-8}
    for algorithm, rule in sorted(rules.items()):
        kernel = module.get_function(cuda.kernel_name(rule, 'float32'))
        states = [cupy.zeros(size, cupy.float32) for _ in rule.states]
        coefs = {name: 1e-3 for name in rule.per_tensor}
        coefs.update(wd_into_grad=0.0, weight_scale=1.0, var_scale=1.0, sq_scale=1.0,
                     weight_divisor=1.0, first_step=0)
        args = tuple(cuda.kernel_arguments(rule, [(src, dst, states, None, size, coefs)], shared))
        grid, block = cuda.launch_shape([size])
        rows['CUDA %s (cupy)' % algorithm] = {
            'algorithm': algorithm, 'ms': timed(lambda: kernel(grid, block, args)),
            'state_bytes_per_param': sum(state.nbytes for state in states) / size}
    # a device copy writes without reading the destination: 2 arrays moved, the floor's rate
    copy_bandwidth = 2 * 4 * size / (rows['copy (cupy)']['ms'] * 1e-3)
    reference = rows.get('CUDA adanag (cupy)', {}).get('ms')
    for row in rows.values():
        reads, writes = bytes_moved(row.pop('algorithm'))
        moved = (reads + writes) * 4 * size
        floor_ms = moved / copy_bandwidth * 1e3
        copying = row is rows['copy (cupy)']
        row.setdefault('state_bytes_per_param', None)
        row.update(kind='copy' if copying else 'update', reads=reads, state_bits=None if copying else 32,
                   writes=writes, GBps=moved / (row['ms'] * 1e-3) / 1e9, steps_timed=repeats,
                   bytes_per_param=4.0 * (reads + writes),
                   floor_ms=floor_ms, x_floor=row['ms'] / floor_ms,
                   x_adanag=row['ms'] / reference if reference else None)
    return {'label': 'GPU (%s), floors at the copy bandwidth, %.0f GB/s' % (
                cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(), copy_bandwidth / 1e9),
            'tensors': 1, 'elements': size, 'copy_bandwidth_GBps': copy_bandwidth / 1e9,
            'torch': {}, 'rows': rows}


def machine():
    """What the numbers were measured on, with the load before the run."""
    info = {'python': platform.python_version(), 'machine': platform.machine(),
            'cpus': os.cpu_count(), 'load_average': os.getloadavg()}
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        info['cpu'] = platform.processor()
    import mxnet as mx
    from mxnag.kernels import fused_cpu
    info['mxnet'] = mx.__version__
    info['fused_cpu'] = fused_cpu.available()
    info['fused_threads'] = fused_cpu.probe()
    return info


def epoch_seconds(model, optimizers, data_dir, repeats):
    """Median seconds of one MNIST training epoch of ``model`` per optimizer (batch 128,
    the recipes' engine), the optimizers alternating so that load drifts hit all alike."""
    import statistics
    from mxnag.train import data, sweep
    splits = data.load('mnist', data_dir)
    images, labels = data.normalize(splits['train'][0]), splits['train'][1]
    test = data.ArrayLoader(images[:1000], labels[:1000], 1000, shuffle=False)
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name in optimizers:
            lr = sweep.TUNED_LR[model][name] if name in sweep.TUNED_LR.get(model, {}) else None
            args = sweep.run_args(model, name, lr, 1, seed=0)
            loader = data.ArrayLoader(images, labels, 128, seed=0, last_batch='discard')
            history = sweep.train_once(args, loader, test)
            times[name].append(history[-1]['seconds'])
    rows = {name: {'median_s': statistics.median(t), 'all_s': t} for name, t in times.items()}
    base = rows[optimizers[0]]['median_s']
    for row in rows.values():
        row['x_first'] = row['median_s'] / base
    return {'model': model, 'repeats': repeats, 'rows': rows}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python benchmarks/bench_step.py', description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=10_000_000, help='elements of the single tensor')
    parser.add_argument('--rounds', type=int, default=5, help='turns of every case')
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed steps per case and round, at most (the median is over all)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    parser.add_argument('--queue', type=int, default=5,
                        help='steps issued before one waitall in the "queued" rows (1: none)')
    parser.add_argument('--json', help='write the results here')
    for flag, what in (('resnet', 'the 161 ResNet-50 parameter shapes'),
                       ('torch', 'PyTorch (in a subprocess) when it is installed'),
                       ('bnb', "bitsandbytes' Adam8bit (in the PyTorch subprocess) when it imports"),
                       ('cuda', 'the CUDA kernels through CuPy when a GPU is there')):
        parser.add_argument('--no-' + flag, dest=flag, action='store_false', help='without ' + what)
    parser.add_argument('--epoch', action='store_true',
                        help='also one LeNet MNIST training epoch with sgd and with adanag')
    parser.add_argument('--epoch-repeats', type=int, default=3)
    parser.add_argument('--data-dir', help='MNIST for --epoch')
    args = parser.parse_args(argv)
    results = {'command': 'python benchmarks/bench_step.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
               'machine': machine()}
    results['single'] = run_problem('one tensor', [(args.size,)], args.rounds, args.repeats,
                                    args.warmup, args.torch, args.queue, args.bnb)
    print(format_table(results['single']), end='\n\n', flush=True)
    if args.resnet:
        results['resnet50'] = run_problem('ResNet-50 (resnet50_v1b)', resnet50_shapes(), args.rounds,
                                          args.repeats, args.warmup, args.torch, args.queue, args.bnb)
        print(format_table(results['resnet50']), end='\n\n')
    if args.cuda:
        gpu = cupy_cases(args.size, args.repeats, args.warmup)
        if gpu:
            results['cuda_cupy'] = gpu
            print(format_table(gpu), end='\n\n')
        else:
            print('CUDA kernels: skipped (no CuPy or no GPU)\n')
    if args.epoch:
        results['epoch'] = epoch_seconds('lenet', ('sgd', 'adanag'), args.data_dir, args.epoch_repeats)
        print('One LeNet MNIST epoch (batch 128, median of %d):' % args.epoch_repeats)
        for name, row in results['epoch']['rows'].items():
            print('  %-8s %7.2f s  %.3fx sgd' % (name, row['median_s'], row['x_first']))
        print()
    results['machine']['load_average_after'] = os.getloadavg()
    results['versus_torch'] = versus_torch(results)
    if results['versus_torch']:
        print('adanag / torch fused Adam (10M), each round\'s medians:')
        for label, summary in results['versus_torch'].items():
            print('  %-29s median %.2f, range %.2f-%.2f, adanag ahead in %d of %d rounds'
                  % (label, summary['median'], summary['min'], summary['max'], summary['ahead'],
                     len(summary['ratios'])))
        print()
    results['target_ratios'] = target_ratios(results)
    results['targets'] = targets(results, results['target_ratios'])
    for name, met in results['targets'].items():
        ratio = results['target_ratios'].get(name.rsplit(' <= ', 1)[0])
        print('%-70s %s%s' % (name, {True: 'met', False: 'NOT met', None: 'not measured'}[met],
                              '' if ratio is None else ' (%.2f)' % ratio))
    print('load average before %s, after %s' % (
        ' '.join('%.2f' % x for x in results['machine']['load_average']),
        ' '.join('%.2f' % x for x in results['machine']['load_average_after'])))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
