"""Time one optimizer step: mxnag's fused AdaNAG and Adan next to MXNet's own update
operators, a copy of the same bytes (the bandwidth floor) and PyTorch's Adam/NAdam.

    python -m mxnag.bench [--size N] [--repeats R] [--json out.json] [--no-resnet] [--no-torch]

Two problems: one float32 tensor of ``--size`` elements, and the 161 trainable parameter
shapes of ResNet-50 (gluoncv's ``resnet50_v1b``). Every MXNet number is the median over
``--repeats`` steps (after warm-up) of the wall time from the Python call to
``mx.nd.waitall()``, all in this process; PyTorch runs in a subprocess (its OpenMP runtime
and thread pool stay out of MXNet's way) on the same shapes.

The floor of an update is the time to move its bytes (each array it reads, each it
writes, once) at the bandwidth of the fastest copy measured here.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Arrays of the parameter's size each update reads + writes: the floor's numerator.
BYTES_MOVED = {  # name: (reads, writes)
    'adanag': (4, 3), 'adan': (6, 5), 'adam': (4, 3), 'nadam': (4, 3),
    'sgd_momentum': (3, 2), 'nag': (3, 2), 'copy': (1, 1),
}

TORCH_SCRIPT = r'''
import json, statistics, sys, time
import torch
shapes, repeats, warmup = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
def bench(make):
    params = [torch.randn(s) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt = make(params)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        opt.step()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times) * 1e3
out = {'torch_version': torch.__version__, 'threads': torch.get_num_threads()}
out['torch Adam (fused)'] = bench(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True))
out['torch NAdam (foreach)'] = bench(lambda p: torch.optim.NAdam(p, lr=1e-3, foreach=True))
out['torch NAdam (for-loop)'] = bench(lambda p: torch.optim.NAdam(p, lr=1e-3, foreach=False))
threads = torch.get_num_threads()
torch.set_num_threads(1)  # on a busy machine one thread can beat a team that waits for its slowest
out['torch Adam (fused, 1 thread)'] = bench(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True))
torch.set_num_threads(threads)
print(json.dumps(out))
'''


def median_ms(step, repeats, warmup):
    """Median wall time in ms of ``step()`` followed by ``mx.nd.waitall()``."""
    import mxnet as mx
    times = []
    for i in range(warmup + repeats):
        mx.nd.waitall()
        start = time.perf_counter()
        step()
        mx.nd.waitall()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def resnet50_shapes():
    """The shapes of the 161 trainable parameters of gluoncv's resnet50_v1b."""
    import mxnet as mx
    from .models import gluoncv_model_zoo  # imports GluonCV with PyTorch hidden from it
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
        as gluon.Trainer makes it (aggregated when the optimizer's aggregate_num > 0)."""
        import mxnet as mx
        updater = mx.optimizer.get_updater(optimizer)
        indices = list(range(len(self.weights)))
        return lambda: updater(indices, self.grads, self.weights)

    def adam_update_step(self):
        """MXNet's fused ``adam_update`` operator, one call per parameter."""
        import mxnet as mx
        states = [(mx.nd.zeros(s), mx.nd.zeros(s)) for s in self.shapes]

        def step():
            for w, g, (m, v) in zip(self.weights, self.grads, states):
                mx.nd.adam_update(w, g, m, v, out=w, lr=1e-3, rescale_grad=1.0)
        return step

    def copy_steps(self):
        """Copies of the weights into other arrays: MXNet's ``copyto`` and, when built,
        mxnag's threaded copy (the same threads and dispatch as the fused updates)."""
        import mxnet as mx
        from .kernels import fused_cpu
        targets = [mx.nd.zeros(s) for s in self.shapes]
        steps = {'copy (MXNet copyto)': lambda: [w.copyto(t) for w, t in zip(self.weights, targets)]}
        if fused_cpu.available():
            steps['copy (mxnag threads)'] = lambda: [fused_cpu.copy(w, t)
                                                    for w, t in zip(self.weights, targets)]
        return steps


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def mxnet_cases(problem):
    """Name -> (algorithm for the floor, step function), measured in this process."""
    import mxnet as mx
    import mxnag  # noqa: F401  (registers the optimizers)
    from .kernels import fused_cpu
    cases = {}
    if fused_cpu.available():
        cases['mxnag adanag (fused)'] = ('adanag', problem.updater_step(
            mx.optimizer.create('adanag', learning_rate=1e-3)))
        cases['mxnag adan (fused)'] = ('adan', problem.updater_step(
            mx.optimizer.create('adan', learning_rate=1e-3)))
        if len(problem.shapes) > 1:
            cases['mxnag adanag (fused, aggregate_num=4)'] = ('adanag', problem.updater_step(
                mx.optimizer.create('adanag', learning_rate=1e-3, aggregate_num=4)))
            cases['mxnag adanag (fused, not aggregated)'] = ('adanag', problem.updater_step(
                mx.optimizer.create('adanag', learning_rate=1e-3, aggregate_num=0)))
    cases['mxnag adanag (composed, MXNAG_FUSED=0)'] = ('adanag', _composed(problem, 'adanag'))
    cases['MXNet adam_update'] = ('adam', problem.adam_update_step())
    cases['MXNet nag (momentum 0.9)'] = ('nag', problem.updater_step(
        mx.optimizer.create('nag', learning_rate=1e-3, momentum=0.9)))
    cases['MXNet nadam'] = ('nadam', problem.updater_step(
        mx.optimizer.create('nadam', learning_rate=1e-3)))
    cases['MXNet sgd momentum (aggregated)'] = ('sgd_momentum', problem.updater_step(
        mx.optimizer.create('sgd', learning_rate=1e-3, momentum=0.9)))
    for name, step in problem.copy_steps().items():
        cases[name] = ('copy', step)
    return cases


def _composed(problem, name):
    """A step with the fused path switched off for its duration."""
    import mxnet as mx
    inner = problem.updater_step(mx.optimizer.create(name, learning_rate=1e-3))

    def step():
        saved = os.environ.get('MXNAG_FUSED')
        os.environ['MXNAG_FUSED'] = '0'
        try:
            inner()
        finally:
            if saved is None:
                del os.environ['MXNAG_FUSED']
            else:
                os.environ['MXNAG_FUSED'] = saved
    return step


def torch_cases(shapes, repeats, warmup):
    """PyTorch's numbers for the same shapes, from a subprocess; {} without PyTorch."""
    try:
        done = subprocess.run(
            [sys.executable, '-c', TORCH_SCRIPT, json.dumps([list(s) for s in shapes]),
             str(repeats), str(warmup)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {'error': str(err)}
    if done.returncode != 0:
        return {'error': done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_problem(label, shapes, repeats, warmup, with_torch):
    """Measure every case on ``shapes``; return rows with ratios and floors."""
    problem = Problem(shapes)
    rows = {}
    for name, (algorithm, step) in mxnet_cases(problem).items():
        rows[name] = {'algorithm': algorithm, 'ms': median_ms(step, repeats, warmup)}
    if with_torch:
        torch = torch_cases(shapes, repeats, warmup)
        for name, ms in torch.items():
            if name.startswith('torch ') and isinstance(ms, float):
                rows[name] = {'algorithm': 'nadam' if 'NAdam' in name else 'adam', 'ms': ms}
        extra = {k: v for k, v in torch.items() if not k.startswith('torch ')}
    else:
        extra = {'skipped': True}
    copy_ms = min(r['ms'] for r in rows.values() if r['algorithm'] == 'copy')
    bytes_per_array = 4 * problem.size
    bandwidth = 2 * bytes_per_array / (copy_ms * 1e-3)
    reference = rows.get('mxnag adanag (fused)', {}).get('ms')
    for row in rows.values():
        reads, writes = BYTES_MOVED[row['algorithm']]
        row['floor_ms'] = (reads + writes) * bytes_per_array / bandwidth * 1e3
        row['x_floor'] = row['ms'] / row['floor_ms']
        row['x_adanag'] = row['ms'] / reference if reference else None
    return {'label': label, 'tensors': len(shapes), 'elements': problem.size,
            'copy_bandwidth_GBps': bandwidth / 1e9, 'torch': extra, 'rows': rows}


def format_table(result):
    """A markdown table of one problem's rows."""
    lines = ['%s: %d tensor(s), %d float32 elements; copy bandwidth %.1f GB/s'
             % (result['label'], result['tensors'], result['elements'], result['copy_bandwidth_GBps']),
             '',
             '| step | median ms | x adanag (fused) | floor ms | x floor |',
             '|---|---:|---:|---:|---:|']
    for name, row in result['rows'].items():
        ratio = '%.2f' % row['x_adanag'] if row['x_adanag'] else '-'
        lines.append('| %s | %.2f | %s | %.2f | %.2f |'
                     % (name, row['ms'], ratio, row['floor_ms'], row['x_floor']))
    return '\n'.join(lines)


def targets(results):
    """The issue's targets, evaluated on the measured numbers (None where not measured)."""
    out = {}
    single = results.get('single', {}).get('rows', {})
    fused = single.get('mxnag adanag (fused)')
    if fused:
        out['adanag 10M within 1.5x of its floor'] = fused['x_floor'] <= 1.5
        adam = single.get('MXNet adam_update')
        out['adanag 10M >= 4x faster than adam_update'] = adam['ms'] / fused['ms'] >= 4.0
        torch = [row['ms'] for name, row in single.items() if name.startswith('torch Adam (fused')]
        # against the faster of its default thread count and one thread
        out['adanag 10M faster than torch fused Adam'] = (fused['ms'] < min(torch)) if torch else None
    resnet = results.get('resnet50', {}).get('rows', {})
    if 'mxnag adanag (fused)' in resnet:
        out['resnet50 adanag no slower than sgd momentum'] = (
            resnet['mxnag adanag (fused)']['ms'] <= resnet['MXNet sgd momentum (aggregated)']['ms'])
    epoch = results.get('epoch', {}).get('rows', {})
    if epoch:
        out['lenet epoch with adanag within 3% of sgd'] = epoch['adanag']['x_first'] <= 1.03
    return out


CUPY_KERNELS = ('adanag', 'adan')


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
    from .kernels import cuda
    module = cupy.RawModule(code=cuda.source())

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
    for algorithm in CUPY_KERNELS:
        kernel = module.get_function(cuda.kernel_name(algorithm, 'float32'))
        states = [cupy.zeros(size, cupy.float32) for _ in cuda._STATES[algorithm]]
        coefs = {name: 1e-3 for name in cuda._SCALARS[algorithm] if name not in shared}
        coefs.update(wd_into_grad=0.0, weight_scale=1.0, var_scale=1.0, sq_scale=1.0,
                     weight_divisor=1.0, first_step=0)
        args = tuple(cuda.kernel_arguments(algorithm, src, dst, states, None, size, shared, coefs))
        grid, block = cuda.launch_shape(size)
        rows['CUDA %s (cupy)' % algorithm] = {
            'algorithm': algorithm, 'ms': timed(lambda: kernel(grid[:1], block[:1], args))}
    copy_bandwidth = 2 * 4 * size / (rows['copy (cupy)']['ms'] * 1e-3)
    for row in rows.values():
        reads, writes = BYTES_MOVED[row['algorithm']]
        row['floor_ms'] = (reads + writes) * 4 * size / copy_bandwidth * 1e3
        row['x_floor'] = row['ms'] / row['floor_ms']
        row['GBps'] = (reads + writes) * 4 * size / (row['ms'] * 1e-3) / 1e9
        row['x_adanag'] = row['ms'] / rows['CUDA adanag (cupy)']['ms'] if 'CUDA adanag (cupy)' in rows else None
    return {'label': 'GPU (%s)' % cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(),
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
    from .kernels import fused_cpu
    info['mxnet'] = mx.__version__
    info['fused_cpu'] = fused_cpu.available()
    info['fused_threads'] = fused_cpu.probe()
    return info


def epoch_seconds(model, optimizers, data_dir, repeats):
    """Median seconds of one MNIST training epoch of ``model`` per optimizer (batch 128,
    the recipes' engine), the optimizers alternating so that load drifts hit all alike."""
    import statistics
    from . import compare, data
    splits = data.load('mnist', data_dir)
    images, labels = data.normalize(splits['train'][0]), splits['train'][1]
    test = data.ArrayLoader(images[:1000], labels[:1000], 1000, shuffle=False)
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name in optimizers:
            lr = compare.TUNED_LR[model][name] if name in compare.TUNED_LR.get(model, {}) else None
            args = compare.run_args(model, name, lr, 1, seed=0)
            loader = data.ArrayLoader(images, labels, 128, seed=0, last_batch='discard')
            history = compare.train_once(args, loader, test)
            times[name].append(history[-1]['seconds'])
    rows = {name: {'median_s': statistics.median(t), 'all_s': t} for name, t in times.items()}
    base = rows[optimizers[0]]['median_s']
    for row in rows.values():
        row['x_first'] = row['median_s'] / base
    return {'model': model, 'repeats': repeats, 'rows': rows}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mxnag.bench', description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=10_000_000, help='elements of the single tensor')
    parser.add_argument('--repeats', type=int, default=20, help='timed steps per case (median)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    parser.add_argument('--json', help='write the results here')
    for flag, what in (('resnet', 'the 161 ResNet-50 parameter shapes'),
                       ('torch', 'PyTorch (in a subprocess) when it is installed'),
                       ('cuda', 'the CUDA kernels through CuPy when a GPU is there')):
        parser.add_argument('--no-' + flag, dest=flag, action='store_false', help='without ' + what)
    parser.add_argument('--epoch', action='store_true',
                        help='also one LeNet MNIST training epoch with sgd and with adanag')
    parser.add_argument('--epoch-repeats', type=int, default=3)
    parser.add_argument('--data-dir', help='MNIST for --epoch')
    args = parser.parse_args(argv)
    results = {'command': 'python -m mxnag.bench ' + ' '.join(argv if argv is not None else sys.argv[1:]),
               'machine': machine()}
    results['single'] = run_problem('one tensor', [(args.size,)], args.repeats, args.warmup, args.torch)
    print(format_table(results['single']), end='\n\n', flush=True)
    if args.resnet:
        results['resnet50'] = run_problem('ResNet-50 (resnet50_v1b)', resnet50_shapes(),
                                          args.repeats, args.warmup, args.torch)
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
    results['targets'] = targets(results)
    for name, met in results['targets'].items():
        print('%-50s %s' % (name, {True: 'met', False: 'NOT met', None: 'not measured'}[met]))
    print('load average before %s, after %s' % (
        ' '.join('%.2f' % x for x in results['machine']['load_average']),
        ' '.join('%.2f' % x for x in results['machine']['load_average_after'])))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
