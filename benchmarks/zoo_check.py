#!/usr/bin/env python
"""The fused CPU step on what users train: every classifier of ``gluon.model_zoo.vision``
and GluonCV's families with other weight layouts, at the input sizes people use, with a
validation pass between the steps (which leaves convolution and dense weights in oneDNN's
own layouts), each fused step checked against the composed step from the same inputs.

    python benchmarks/zoo_check.py [--models all|NAME,...] [--sizes 224,32]
        [--optimizers adanag,adan,nadamw] [--steps 3] [--json results/zoo_check.json]
        [--markdown results/zoo_check.md]

For each model and input size (3x224x224 with batch 2, 3x32x32 with batch 8, and
Inception v3 also at its 3x299x299): first one
step of MXNet's own ``adam`` with a validation pass (a model that MXNet cannot train at
that size, such as one whose pooling is larger than its last feature map, is listed as
such and skipped); then, for each optimizer, ``--steps`` hybridized training steps on
the fused CPU path, each followed by a validation pass, where every fused group's step is
also run through the composed NDArray path on copies of the same weights, gradients and
states, and the two compared (relative error of the displacement and of each new state;
float32 rounding is ~1e-7 plus the weights' own rounding, a lost or misread update ~1;
``displacement_bound``). A row passes when nothing raised, the fused path ran every
step, every parameter moved, and every error is under its bound; the table gives the
largest error as a fraction of its bound. Exit status 1 when a row fails.

Whole runs of the two paths are not compared: an adaptive step divides by the size of
the gradient, so rounding differences in near-zero gradients grow from step to step
(MobileNets at 32x32, BatchNorm over 1x1 maps, drift 4% in 4 steps between two correct
paths). ``tests/test_zoo_training.py`` runs a representative of each kind of layer with
these functions.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mxnag  # noqa: E402,F401  (registers the optimizers)
from mxnag.kernels import composed, fused_cpu  # noqa: E402

# A step's displacement (and new states) on the fused path against the composed path's
# from the same weights, gradients and states: float32 rounding of the states is ~1e-7
# relative, a wrong or lost update ~1 (a displacement also gets its weights' rounding:
# ``displacement_bound``).
STEP_BOUND = 1e-4
# input size -> batch size: ImageNet-sized images two at a time, CIFAR-sized eight
SIZES = {224: 2, 299: 2, 32: 8}
# models also checked at the size they are made for, when it is none of --sizes
NATIVE_SIZES = {'inceptionv3': 299}
OPTIMIZER_ARGS = {'adanag': {'learning_rate': 1e-3, 'wd': 1e-4},
                  'adan': {'learning_rate': 1e-3, 'wd': 1e-4},
                  'nadamw': {'learning_rate': 1e-3, 'wd': 1e-4}}
# GluonCV families whose weights have other layouts: a CIFAR ResNet (32x32 only),
# hard-swish and squeeze-excitation MobileNetV3, grouped convolutions (32 groups),
# squeeze-excitation's small dense layers
GLUONCV_MODELS = {'cifar_resnet20_v1': (32,), 'mobilenetv3_small': (224, 32),
                  'resnext50_32x4d': (224, 32), 'se_resnet18_v1': (224, 32)}


# The classifiers of ``gluon.model_zoo.vision`` (MXNet 1.9.1's get_model keeps its list
# inside the function)
GLUON_ZOO = tuple(['alexnet'] + ['densenet%d' % d for d in (121, 161, 169, 201)] + ['inceptionv3'] +
                  ['mobilenet%s' % w for w in ('1.0', '0.75', '0.5', '0.25')] +
                  ['mobilenetv2_%s' % w for w in ('1.0', '0.75', '0.5', '0.25')] +
                  ['resnet%d_v%d' % (d, v) for v in (1, 2) for d in (18, 34, 50, 101, 152)] +
                  ['squeezenet1.0', 'squeezenet1.1'] +
                  ['vgg%d%s' % (d, bn) for bn in ('', '_bn') for d in (11, 13, 16, 19)])


# Small networks with every kind of weight oneDNN lays out its own way, and their input
# shapes: dense; plain, grouped and depthwise convolutions and transposed convolutions
# (grouped weights are 5-D in oneDNN for a 4-D array) in 1, 2 and 3 dimensions (3-D
# weights are 5-D arrays, grouped 6-D in oneDNN).
LAYER_NETS = {'layers-dense': (8, 3, 8, 8), 'layers-conv1d': (8, 3, 64),
              'layers-conv2d': (8, 3, 32, 32), 'layers-conv3d': (2, 3, 8, 16, 16)}


def _layer_net(name, classes):
    nn = gluon.nn
    dims = {'conv1d': 1, 'conv2d': 2, 'conv3d': 3}.get(name.split('-')[1])
    net = nn.HybridSequential()
    if dims is None:
        net.add(nn.Flatten(), nn.Dense(64, activation='relu'), nn.Dense(classes))
        return net
    conv = getattr(nn, 'Conv%dD' % dims)
    deconv = getattr(nn, 'Conv%dDTranspose' % dims)
    # (an activation after each, and BatchNorm in 2-D only: MXNet 1.9.1 itself fails, with
    # any optimizer, on 1-D or 3-D convolutions in a row or after BatchNorm, hybridized
    # with static_alloc: "Check failed: !is_view")
    relu = {'activation': 'relu'}
    net.add(conv(16, 3, padding=1, **relu))
    if dims == 2:
        net.add(nn.BatchNorm(), nn.Activation('relu'))
    net.add(conv(16, 3, padding=1, groups=4, **relu),          # grouped
            conv(16, 3, padding=1, groups=16, **relu),         # depthwise
            deconv(8, 3, padding=1, **relu),                   # transposed
            deconv(8, 3, padding=1, groups=2, in_channels=8),  # grouped transposed
            getattr(nn, 'GlobalAvgPool%dD' % dims)(), nn.Dense(classes))
    return net


def make_model(name, classes=10):
    """A classifier of the Gluon zoo, of GluonCV's or of ``LAYER_NETS``, by name."""
    if name in LAYER_NETS:
        return _layer_net(name, classes)
    if name in GLUON_ZOO:
        return gluon.model_zoo.vision.get_model(name, classes=classes)
    from mxnag.train import models
    return models.gluoncv_model_zoo().get_model(name, classes=classes)


class StepChecker:
    """While active (``with checker:``), every call of the fused CPU update also runs the
    composed update on copies of its inputs made before it; ``errors()`` compares them
    afterwards (reading arrays during the run would wait for the engine and change the
    order in which layouts change). Counts the groups each backend updates."""

    def __init__(self, check=True, eager=False):
        self.check, self.eager = check, eager
        self.calls = {'fused-cpu': 0, 'composed': 0}
        self.pending = []   # steps not compared yet
        self.settled = []   # (error, bound) of those compared
        self._saved = None

    def __enter__(self):
        self._saved = fused_cpu.update, composed.update
        real_fused, real_composed = self._saved

        def fused_update(rule, weights, grads, states, masters, shared, per_tensor, step_arrays,
                         slots, flag, table, **options):
            self.calls['fused-cpu'] += 1
            if not self.check:
                return real_fused(rule, weights, grads, states, masters, shared, per_tensor,
                                  step_arrays, slots, flag, table, **options)
            before = [w.copy() for w in weights]
            copies = ([w.copy() for w in weights], [g.copy() for g in grads],
                      [tuple(s.copy() for s in state) for state in states],
                      None if masters is None else [m.copy() for m in masters],
                      [a.copy() for a in step_arrays])
            real_fused(rule, weights, grads, states, masters, shared, per_tensor, step_arrays,
                       slots, flag, table, **options)
            after = [w.copy() for w in weights], [tuple(s.copy() for s in state) for state in states]
            real_composed(rule, copies[0], copies[1], copies[2], copies[3], shared, per_tensor,
                          copies[4], slots, flag, table)
            self.pending.append((before, after, (copies[0], copies[2])))
            if self.eager:  # compared now, its copies let go (a VGG's would fill the memory)
                self.settle()

        def composed_update(*args):
            self.calls['composed'] += 1
            return real_composed(*args)
        fused_cpu.update, composed.update = fused_update, composed_update
        return self

    def __exit__(self, *exc):
        fused_cpu.update, composed.update = self._saved

    def settle(self):
        """Compare the steps checked so far and let their copies go."""
        pending, self.pending = self.pending, []
        for before, (weights, states), (want_weights, want_states) in pending:
            for k, start in enumerate(before):
                start = start.asnumpy()
                got, want = _moved(weights[k].asnumpy(), start), _moved(want_weights[k].asnumpy(), start)
                self.settled.append((_relative(got, want), displacement_bound(start, want)))
                for state, want in zip(states[k], want_states[k]):
                    self.settled.append((_relative(state.asnumpy(), want.asnumpy()), STEP_BOUND))

    def errors(self):
        """Every checked step's displacement and new states: (relative error, its bound)."""
        self.settle()
        return list(self.settled)


def displacement_bound(start, displacement):
    """The bound on the relative error of a displacement ``w1 - w0`` of float32 weights:
    ``STEP_BOUND`` plus what rounding ``w1`` to float32 costs each path (at most half an
    ulp, 2^-24 |w1|, each; doubled), relative to the displacement. A step of 1e-3 on
    weights near 1 loses ~1e-4 of it to that rounding alone."""
    return STEP_BOUND + 2.0 ** -22 * _norm(start, displacement) / max(_norm(displacement), 1e-30)


# Norms in float64 a chunk at a time: a VGG's 100M-element weight in float64, several
# times over, would not fit beside the model.
_CHUNK = 1 << 20


class _moved:
    """``after - start`` (float64 where used), computed a chunk at a time."""

    def __init__(self, after, start):
        self.after, self.start = after.reshape(-1), start.reshape(-1)

    def chunk(self, lo):
        hi = lo + _CHUNK
        return self.after[lo:hi].astype(np.float64) - self.start[lo:hi]

    def __len__(self):
        return len(self.after)


def _chunks(array, lo):
    if isinstance(array, _moved):
        return array.chunk(lo)
    return np.asarray(array).reshape(-1)[lo:lo + _CHUNK].astype(np.float64)


def _norm(a, b=None):
    """||a|| or ||a + b||, in float64."""
    total = 0.0
    for lo in range(0, len(a) if isinstance(a, _moved) else np.size(a), _CHUNK):
        part = _chunks(a, lo) if b is None else _chunks(a, lo) + _chunks(b, lo)
        total += float(np.dot(part, part))
    return total ** 0.5


def _relative(got, want):
    """||got - want|| / ||want||, in float64."""
    diff = 0.0
    for lo in range(0, len(want) if isinstance(want, _moved) else np.size(want), _CHUNK):
        part = _chunks(got, lo) - _chunks(want, lo)
        diff += float(np.dot(part, part))
    return diff ** 0.5 / max(_norm(want), 1e-30)


@contextlib.contextmanager
def fused_path(on):
    """The fused CPU backend allowed (``on``) or forced off, whatever MXNAG_FUSED said."""
    saved = fused_cpu.FORCED_OFF
    fused_cpu.FORCED_OFF = not on
    try:
        yield
    finally:
        fused_cpu.FORCED_OFF = saved


def train(net, optimizer, optimizer_args, shape, ctxs, steps, dtype='float32', kvstore=None,
          update_on_kvstore=None, seed=0, between_steps=None):
    """``steps`` hybridized training steps of ``net`` (made, not initialized) on random
    ``shape`` batches, each followed by a validation pass (inference mode) over the same
    batch, as users validate, and preceded by one that has finished, so that every
    convolution and dense weight is in oneDNN's layout when the step runs: the trained
    parameters' names and values before and after, per context. ``between_steps()`` is
    called before each step, when the engine has finished everything before it.
    ``dtype`` float16 trains with ``multi_precision`` float32 master weights."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if dtype != 'float32':
        net.cast(dtype)
    net.hybridize(static_alloc=True, static_shape=True)
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal(shape).astype(dtype), rng.integers(0, 10, shape[0]))
               for _ in range(steps)]
    net(nd.array(batches[0][0], ctx=ctxs[0], dtype=dtype))  # shapes known before the first step
    params = [p for p in net.collect_params().values() if p.grad_req != 'null']
    before = [p.data(ctxs[0]).asnumpy() for p in params]
    args = dict(optimizer_args, multi_precision=dtype != 'float32')
    trainer = gluon.Trainer(net.collect_params(), optimizer, args, kvstore=kvstore,
                            update_on_kvstore=update_on_kvstore)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in batches:
        xs = gluon.utils.split_and_load(nd.array(x, dtype=dtype), ctxs)
        ys = gluon.utils.split_and_load(nd.array(y, dtype=dtype), ctxs)
        with autograd.record():
            losses = [loss_fn(net(a), b) for a, b in zip(xs, ys)]
        for loss in losses:
            loss.backward()
        for a in xs:  # an inference pass before the step, finished: the step surely meets
            net(a)    # weights in oneDNN's layouts (after the step it depends on timing)
        nd.waitall()
        if between_steps is not None:
            between_steps()
        trainer.step(shape[0])
        for a in xs:
            net(a).wait_to_read()  # the user's validation pass
    nd.waitall()
    after = [[p.data(ctx).asnumpy() for p in params] for ctx in ctxs]
    return [p.name for p in params], before, after


def check_training(make_net, optimizer, shape, ctxs=None, steps=3, dtype='float32', eager=False,
                   **trainer):
    """Trains ``make_net()`` on the fused path with every step checked against the composed
    step: a result dict (``problems`` empty when it passed). ``eager``: each group's step
    compared as soon as it is made (the engine waits for it; for models whose copies
    would not fit in memory), else before the next step."""
    ctxs = ctxs or [mx.cpu(0)]
    with fused_path(True), StepChecker(eager=eager) as checker:
        names, before, after = train(make_net(), optimizer, OPTIMIZER_ARGS[optimizer], shape,
                                     ctxs, steps, dtype=dtype, between_steps=checker.settle,
                                     **trainer)
    errors = checker.errors()
    problems = []
    if checker.calls['composed'] or not checker.calls['fused-cpu']:
        problems.append('backends used: %s' % checker.calls)
    if len(errors) < 2 * steps * len(names):  # each weight and at least one state per step
        problems.append('%d step comparisons for %d parameters' % (len(errors), len(names)))
    worst = max((error / bound for error, bound in errors), default=None)
    if worst is not None and worst >= 1:
        problems.append('fused step differs from the composed step: %.3g of the bound' % worst)
    for k, name in enumerate(names):
        if any(not np.array_equal(run[k], after[0][k]) for run in after[1:]):
            problems.append('%s differs between device copies' % name)
        if np.array_equal(after[0][k], before[k]):
            problems.append('%s did not move' % name)
    return {'parameters': len(names), 'fused_groups': checker.calls['fused-cpu'],
            'compared': len(errors), 'max_error': max((e for e, _ in errors), default=None),
            'max_error_of_bound': worst,
            'problems': problems}


def mxnet_adam_trains(make_net, shape):
    """None if MXNet's own adam trains ``make_net()`` one step at ``shape`` (with a
    validation pass), else MXNet's message, first line."""
    try:
        train(make_net(), 'adam', {'learning_rate': 1e-3}, shape, [mx.cpu(0)], 1)
        return None
    except (mx.base.MXNetError, ValueError) as err:  # ValueError: Gluon's deferred shapes
        _drain()
        return _first_line(err)


def check_model(name, size, optimizers, steps):
    """One table row: MXNet's adam first, then every optimizer checked."""
    shape = (SIZES[size], 3, size, size)
    row = {'model': name, 'input': '3x%dx%d' % (size, size), 'batch': shape[0]}
    start = time.perf_counter()
    refused = mxnet_adam_trains(lambda: make_model(name), shape)
    if refused:
        row.update(status='not trainable at this size (MXNet adam fails too)', reason=refused)
        return row
    row['optimizers'] = {}
    for optimizer in optimizers:
        try:
            result = check_training(lambda: make_model(name), optimizer, shape, steps=steps, eager=True)
        except mx.base.MXNetError as err:
            result = {'problems': ['raised: %s' % _first_line(err)]}
            _drain()
        row['optimizers'][optimizer] = result
    failed = ['%s: %s' % (o, r['problems'][0]) for o, r in row['optimizers'].items() if r['problems']]
    row['status'] = 'FAIL (%s)' % '; '.join(failed) if failed else 'pass'
    row['seconds'] = round(time.perf_counter() - start, 1)
    return row


def _first_line(err):
    """The line of MXNet's message that says what failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if 'Check failed' in line or 'MXNetError' in line),
                lines[0] if lines else type(err).__name__)[:300]


def check_in_a_process(name, size, optimizers, steps):
    """``check_model`` in a process of its own (its memory returned to the system after
    each model; a process that dies is a failed row, not a failed run)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--row', name, str(size),
                           '--optimizers', optimizers, '--steps', str(steps)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {'model': name, 'input': '3x%dx%d' % (size, size), 'batch': SIZES[size],
            'killed': proc.returncode < 0,  # by a signal: the system's, for memory (-9)
            'status': 'FAIL (the check process ended with status %d: %s)'
                      % (proc.returncode, (proc.stderr.strip().splitlines() or [''])[-1][:200])}


def _report(rows, row, path):
    print('%-22s %-10s %s' % (row['model'], row['input'], row['status']), flush=True)
    if path:  # as it goes: the whole zoo takes a while
        with open(path, 'w') as f:
            json.dump({'command': ' '.join(['python'] + sys.argv), 'cpu': _cpu(), 'rows': rows},
                      f, indent=1)


def _drain():
    """Let the engine finish what a failed run left queued (its error raised here, once)."""
    try:
        nd.waitall()
    except mx.base.MXNetError:
        pass


def markdown(rows, command):
    lines = ['# The fused step on the model zoos', '', 'Command: `%s`' % command, '',
             '| model | input (batch) | parameters | largest step error / its bound (%s) | status |'
             % ', '.join(next((list(r['optimizers']) for r in rows if 'optimizers' in r), [])),
             '|---|---|---|---|---|']
    for row in rows:
        results = row.get('optimizers', {})
        errors = ', '.join('%.3f' % r['max_error_of_bound'] if r.get('max_error_of_bound') is not None
                           else '-'
                           for r in results.values()) or '-'
        params = next((str(r['parameters']) for r in results.values() if 'parameters' in r), '-')
        lines.append('| %s | %s (%d) | %s | %s | %s |' % (row['model'], row['input'], row['batch'],
                                                         params, errors, row['status']))
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='all',
                        help="'all' (the Gluon zoo's classifiers and GluonCV's families) or names")
    parser.add_argument('--sizes', default='224,32', help='input sizes of %s' % sorted(SIZES))
    parser.add_argument('--optimizers', default='adanag,adan,nadamw')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--json', help='write the rows here')
    parser.add_argument('--markdown', help='write the table here')
    parser.add_argument('--row', nargs=2, metavar=('MODEL', 'SIZE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(',')]
    if args.models == 'all':
        models = [(m, sizes + [NATIVE_SIZES[m]] if m in NATIVE_SIZES else sizes) for m in GLUON_ZOO] + \
            [(m, [s for s in sizes if s in allowed]) for m, allowed in GLUONCV_MODELS.items()]
    else:
        models = [(m, [s for s in sizes if s in GLUONCV_MODELS.get(m, sizes)])
                  for m in args.models.split(',')]
    optimizers = args.optimizers.split(',')
    if args.row:
        print(json.dumps(check_model(args.row[0], int(args.row[1]), optimizers, args.steps)))
        return 0
    rows = []
    for name, model_sizes in models:
        for size in model_sizes:
            rows.append(check_in_a_process(name, size, args.optimizers, args.steps))
            _report(rows, rows[-1], args.json)
    for k, row in enumerate(rows):  # killed by the system (memory): once more, alone at the end
        if row.get('killed'):
            size = int(row['input'].rsplit('x', 1)[1])
            rows[k] = dict(check_in_a_process(row['model'], size, args.optimizers, args.steps),
                           retried_after=row['status'])
            _report(rows, rows[k], args.json)
    command = 'python benchmarks/zoo_check.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, command.strip())
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)
    return 1 if any(r['status'].startswith('FAIL') for r in rows) else 0


def _cpu():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return None


if __name__ == '__main__':
    sys.exit(main())
