"""benchmarks/bench_step.py (outside the package): its floor operator and its runs (no
timing is asserted)."""
import importlib.util
import json
import os
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import HAS_COMPILER, ROOT


@pytest.mark.parametrize('count', [1, 3, 5])
def test_stream_floor_operator(count, rng, fused):
    """The benchmark's floor: every target += source, in one pass, in place."""
    source = rng.standard_normal(100003).astype(np.float32)
    starts = [rng.standard_normal(100003).astype(np.float32) for _ in range(count)]
    targets = [mx.nd.array(t) for t in starts]
    _bench_module().stream(mx.nd.array(source), targets)
    for target, start in zip(targets, starts):
        assert np.array_equal(target.asnumpy(), start + source)


def test_stream_floor_operator_refuses_what_it_cannot_do(fused):
    with pytest.raises(mx.base.MXNetError, match='at most 5 targets'):
        _bench_module().stream(mx.nd.ones((8,)), [mx.nd.ones((8,)) for _ in range(6)])
        mx.nd.waitall()
    with pytest.raises(mx.base.MXNetError, match='takes float32 arrays, input 1 is float64'):
        _bench_module().stream(mx.nd.ones((8,), dtype='float64'), [mx.nd.ones((8,))])
    with pytest.raises(mx.base.MXNetError, match="input 2 of mxnag_stream does not have input 0's shape"):
        _bench_module().stream(mx.nd.ones((8,)), [mx.nd.ones((8,)), mx.nd.ones((9,))])


def test_bench_runs_small(tmp_path, capsys):
    """The benchmark script end to end on a small tensor (no timing is asserted)."""
    bench = _bench_module()
    out = tmp_path / 'bench.json'
    assert bench.main(['--size', '100000', '--rounds', '1', '--repeats', '1', '--warmup', '0', '--no-resnet',
                       '--no-torch', '--no-cuda', '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result['single']['rows']
    assert {'MXNet adam_update', 'MXNet sgd momentum (aggregated)', 'copy (MXNet copyto)'} <= set(rows)
    if HAS_COMPILER:
        fused = rows['mxnag adanag (fused)']
        assert fused['x_adanag'] == 1.0 and fused['steps_timed'] == 1
        floor = rows['floor: read 4, write 3 arrays (mxnag_stream, queued)']
        assert fused['floor_ms'] == floor['ms'] and fused['x_floor'] == fused['ms'] / floor['ms']
        assert 'mxnag adanag (fused), 5 queued' in rows
        # per parameter: 4 float32 arrays read and 3 written; 2 float32 states (the step
        # counts are not counted), measured on the Updater's arrays
        assert fused['bytes_per_param'] == 28.0 and fused['state_bytes_per_param'] == 8.0
        assert rows['mxnag adan (fused)']['state_bytes_per_param'] == 16.0
        # 8-bit states: measured when mxnag takes state_bits=8, else not measured and why
        skipped = result['single']['skipped']
        for name, states in (('mxnag adanag (fused, 8-bit states)', 2), ('mxnag adan (fused, 8-bit states)', 4),
                             ('mxnag adanag (fused, 8-bit states), 5 queued', 2)):
            assert (name in rows) != (name in skipped), name
            if name in rows:  # 1 byte and a float32 scale per 256 for each state read and written
                row = rows[name]
                assert row['state_bits'] == 8 and row['x_floor'] is None
                assert row['bytes_per_param'] == pytest.approx(12 + 2 * states * (1 + 4 * 391 / 100000))
                assert 0 < row['state_bytes_per_param'] < 4 * states  # measured, not assumed
            else:
                assert 'state_bits=8' in skipped[name]
    adam, copy = rows['MXNet adam_update'], rows['copy (MXNet copyto)']
    assert (adam['bytes_per_param'], adam['state_bytes_per_param']) == (28.0, 8.0)
    assert (copy['bytes_per_param'], copy['state_bytes_per_param']) == (8.0, None)
    assert rows['MXNet sgd momentum (aggregated)']['state_bytes_per_param'] == 4.0
    assert result['single']['torch'] == {'skipped': True}
    assert '| step | median ms | x adanag (fused) | GB/s | B moved/param | state B/param |' \
        in capsys.readouterr().out


def test_bench_says_why_pytorch_did_not_run(tmp_path, monkeypatch, capsys):
    """A PyTorch process that fails (here: made to exit) is reported, not fatal."""
    bench = _bench_module()
    monkeypatch.setattr(bench, 'TORCH_SCRIPT', 'import sys; sys.exit("no PyTorch in this test")')
    out = tmp_path / 'bench.json'
    assert bench.main(['--size', '1000', '--rounds', '1', '--repeats', '1', '--warmup', '0',
                       '--no-resnet', '--no-cuda', '--json', str(out)]) == 0
    assert json.loads(out.read_text())['single']['torch'] == {'error': 'no PyTorch in this test'}
    assert 'PyTorch: no PyTorch in this test' in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='PyTorch not installed')
def test_bench_takes_turns_with_torch(tmp_path):
    """PyTorch's cases run in a subprocess that answers turn by turn (2 rounds here)."""
    bench = _bench_module()
    out = tmp_path / 'bench.json'
    assert bench.main(['--size', '20000', '--rounds', '2', '--repeats', '2', '--warmup', '1',
                       '--no-resnet', '--no-cuda', '--json', str(out)]) == 0
    result = json.loads(out.read_text())['single']
    assert 'error' not in result['torch'], result['torch']
    for name in ('torch Adam (fused)', 'torch NAdam (foreach)', 'torch Adam (fused, 1 thread)'):
        assert result['rows'][name]['steps_timed'] == 4
        # measured in the subprocess: exp_avg and exp_avg_sq, float32 (not the step tensor)
        assert result['rows'][name]['state_bytes_per_param'] == 8.0
    assert len(result['rows']['torch Adam (fused)']['round_ms']) == 2
    if importlib.util.find_spec('bitsandbytes') is not None:
        assert 'bitsandbytes' in result['torch'], result['torch']
    assert ('bitsandbytes' in result['torch']) != ('bitsandbytes_absent' in result['torch'])
    if 'bitsandbytes' in result['torch']:
        bnb = result['rows']['bnb Adam8bit']
        assert bnb['state_bits'] == 8 and bnb['steps_timed'] >= 2
        # uint8 codes and a float32 scale per 256 for both states, and the two
        # quantization maps (256 float32 each)
        codes = 2 * (20000 + 4 * 79)
        assert bnb['state_bytes_per_param'] * 20000 in (codes, codes + 1024, codes + 2048)
    else:
        assert 'bnb Adam8bit' not in result['rows']
    if HAS_COMPILER:
        summary = json.loads(out.read_text())['versus_torch']['steps queued']
        assert len(summary['ratios']) == 2 and summary['min'] <= summary['median'] <= summary['max']


def test_round_ratios_pair_each_round_with_the_fastest_peer():
    bench = _bench_module()
    rows = {'a': {'round_ms': [2.0, 3.0, 4.0]}, 'p': {'round_ms': [4.0, 2.0, 4.0]},
            'q': {'round_ms': [5.0, 3.0, 2.0]}}
    assert bench.round_ratios(rows, 'a', ['p', 'q', 'missing']) == [0.5, 1.5, 2.0]
    assert bench.round_ratios(rows, 'a', ['missing']) is None
    assert bench.round_ratios(rows, 'missing', ['p']) is None


def test_bench_bytes_moved_and_state_memory_per_parameter():
    """The columns' arithmetic: bytes moved by a rule with float32 or 8-bit states (8-bit
    only from 4096 elements on), and a state's bytes without mxnag's step counts."""
    bench = _bench_module()
    assert bench.bytes_moved('adam') == (4, 3) and bench.bytes_moved('adanag') == (4, 3)
    assert bench.bytes_moved('adam', 4.0) == (16.0, 12.0)
    assert bench.bytes_moved('adan', 1.0) == (12.0, 8.0)  # 4 states of 1 byte
    assert bench.state_element_bytes(4095, 8) == 4.0 and bench.state_element_bytes(10 ** 7, 32) == 4.0
    assert bench.state_element_bytes(4096, 8) == 1 + 4 / 256
    assert bench.state_element_bytes(257 * 256 + 1, 8) == (257 * 256 + 1 + 4 * 258) / (257 * 256 + 1)
    assert bench.traffic('adanag', [(10, 10)], 8) == 28.0  # small: float32 states
    assert bench.traffic('adam', [(4096,), (100,)], 8) == (4096 * (12 + 4 * (1 + 4 / 256)) + 100 * 28) / 4196
    states = [mx.nd.zeros((5000,), dtype='uint8'), mx.nd.zeros((20,)), mx.nd.zeros((2,), dtype='float64')]
    assert bench.state_nbytes(tuple(states)) == 5000 + 80
    master = mx.nd.zeros((7,))
    assert bench.state_nbytes((master, (mx.nd.zeros((7,)), states[-1]))) == 56  # multi-precision
    assert bench.state_nbytes(mx.nd.zeros((3,))) == 12 and bench.state_nbytes(None) == 0
    shared = mx.nd.zeros((256,))  # an array held twice counts once
    assert bench.state_nbytes([(shared, mx.nd.zeros((4,))), (shared,)]) == 1024 + 16


def test_bench_targets_and_rounds_with_8bit_states():
    """The targets' ratios: adanag's 8-bit and 32-bit rows against the faster of torch's
    fused Adam rows, and the 8-bit state memory against the 32-bit one."""
    bench = _bench_module()

    def row(ms, state=None, rounds=(1.0,)):
        return {'ms': ms, 'x_floor': 1.1, 'state_bytes_per_param': state, 'round_ms': list(rounds)}
    rows = {'mxnag adanag (fused)': row(5.0, 8.0, (5.0, 6.0)),
            'mxnag adanag (fused), 5 queued': row(4.0, 8.0, (4.0, 4.0)),
            'mxnag adanag (fused, 8-bit states)': row(3.0, 2.0625, (3.0, 2.0)),
            'mxnag adanag (fused, 8-bit states), 5 queued': row(2.5, 2.0625, (2.5, 2.5)),
            'MXNet adam_update': row(25.0, 8.0),
            'torch Adam (fused)': row(5.0, 8.0, (5.0, 5.0)),
            'torch Adam (fused, 1 thread)': row(4.0, 8.0, (4.0, 6.0))}
    results = {'single': {'rows': rows}}
    ratios = bench.target_ratios(results)
    assert set(ratios) == set(bench.RATIO_TARGETS)
    assert ratios['adanag 8-bit 10M / torch fused Adam (one step alone)'] == 0.75
    assert ratios['adanag 8-bit 10M / torch fused Adam (steps queued)'] == 0.625
    assert ratios['adanag 8-bit / 32-bit state memory (10M)'] == 2.0625 / 8
    assert ratios['adanag 32-bit 10M / torch fused Adam (one step alone)'] == 1.25
    met = bench.targets(results)
    assert met['adanag 8-bit 10M / torch fused Adam (one step alone) <= 0.90'] is True
    assert met['adanag 8-bit / 32-bit state memory (10M) <= 0.27'] is True
    assert met['adanag 32-bit 10M / torch fused Adam (one step alone) <= 1.00'] is False
    assert met['adanag 32-bit 10M / torch fused Adam (steps queued) <= 1.00'] is True
    versus = bench.versus_torch(results)
    assert versus['one step alone, 8-bit states']['ratios'] == [0.75, 0.4]
    assert versus['steps queued, 8-bit states']['ahead'] == 2
    assert versus['one step alone']['ratios'] == [1.25, 1.2]
    del rows['mxnag adanag (fused, 8-bit states)'], rows['mxnag adanag (fused, 8-bit states), 5 queued']
    met = bench.targets(results)  # 8-bit states not measured: said so, not fatal
    assert met['adanag 8-bit / 32-bit state memory (10M) <= 0.27'] is None
    assert set(bench.versus_torch(results)) == {'one step alone', 'steps queued'}


def _bench_module():
    """benchmarks/bench_step.py (not part of the package)."""
    import importlib.util
    path = os.path.join(ROOT, 'benchmarks', 'bench_step.py')
    spec = importlib.util.spec_from_file_location('bench_step', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loop_benchmark_runs_small(tmp_path, capsys, mnist_dir):
    """benchmarks/bench_loop.py end to end on 512 images, one round (no timing asserted)."""
    import importlib.util as util
    spec = util.spec_from_file_location('bench_loop', os.path.join(ROOT, 'benchmarks', 'bench_loop.py'))
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / 'loop.json'
    assert bench.main(['--data-dir', mnist_dir, '--models', 'mlp', '--rounds', '1', '--images', '512',
                       '--no-torch', '--json', str(out)]) == 0
    rows = json.loads(out.read_text())['results']['mlp']['rows']
    assert set(rows) == {'bare Gluon', 'bare Gluon + test pass', 'mxnag loop (training)',
                         'mxnag loop (whole fit)'}
    assert rows['bare Gluon']['x_bare'] == 1.0 and all(r['seconds'] > 0 for r in rows.values())
    assert '| mlp | mxnag loop (training) |' in capsys.readouterr().out


def _gpu_check():
    import importlib.util as util
    spec = util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'benchmarks', 'gpu_check.py'))
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_emulated_passes_every_entry_point(tmp_path, capsys):
    """Every entry point (rules x dtypes x tensors per launch) and every optimizer's
    coefficients, on the CPU through the emulation; the JSON names each case."""
    gpu_check = _gpu_check()
    assert gpu_check.main(['--emulate', '--steps', '10', '--json', str(tmp_path / 'g.json')]) == 0
    result = json.loads((tmp_path / 'g.json').read_text())
    assert result['backend'] == 'emulate' and result['timings'] == []
    kernels = {c['kernel'] for c in result['cases']}
    from mxnag.kernels import cuda
    from optimizers import RULES
    assert kernels == set(cuda.kernel_names(*RULES.values()))
    assert len(kernels) == len(RULES) * len(cuda.KINDS) * len(cuda.COUNTS)
    assert {c['optimizer'] for c in result['cases']} == {'adanag', 'adan', 'nadamw'}
    assert all(c['ok'] for c in result['cases'])
    assert '0 failed' in capsys.readouterr().out


@pytest.mark.parametrize('plant', [
    ('mxnag/kernels/src/rules.h', 'w = w * c.weight_scale -', 'w = w * c.weight_scale * S(1.0001) -'),
    ('mxnag/kernels/src/state_codes.h', 'const unsigned int rounded = abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u);',
     'const unsigned int rounded = abs_bits;'),
    ('mxnag/kernels/src/fused_cuda.cu', 'const double count = step[slot] + (applies ? 1.0 : 0.0);',
     'const double count = step[slot] + 1.0;'),
    ('mxnag/kernels/cuda.py', 'params += [(scalar, name) for name in rule.shared]',
     'params += [(scalar, name) for name in reversed(rule.shared)]'),
], ids=['kernel maths', '8-bit rounding', 'skip ignored', 'argument list'])
def test_gpu_check_fails_on_a_planted_bug(plant, tmp_path):
    """A copy of the tree with one bug: the emulated check fails (in a process of its own:
    a bad launch may crash it)."""
    import shutil
    import subprocess
    import sys
    path, old, new = plant
    shutil.copytree(os.path.join(ROOT, 'mxnag'), tmp_path / 'mxnag')
    shutil.copytree(os.path.join(ROOT, 'tests'), tmp_path / 'tests')
    target = tmp_path / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'gpu_check.py'),
                           '--emulate', '--steps', '8', '--root', str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-1500:]
    assert proc.returncode < 0 or ' 0 failed' not in proc.stdout


def test_gpu_check_runs_with_numpy_2_and_no_mxnet(tmp_path):
    """The GPU machines have numpy 2 and no MXNet: the emulated check passes in such an
    environment (a fresh virtual environment with numpy only)."""
    import subprocess
    import sys
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=120)
    python = str(venv / 'bin' / 'python')
    install = subprocess.run([python, '-m', 'pip', 'install', '--quiet', 'numpy>=2'],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip('numpy 2 could not be installed here: %s' % install.stderr[-300:])
    probe = subprocess.run([python, '-c', 'import numpy, importlib.util as u; '
                                          'print(numpy.__version__, u.find_spec("mxnet") is None)'],
                           capture_output=True, text=True, timeout=60)
    version, no_mxnet = probe.stdout.split()
    assert version.startswith('2.') and no_mxnet == 'True'
    proc = subprocess.run([python, os.path.join(ROOT, 'benchmarks', 'gpu_check.py'), '--emulate',
                           '--steps', '8', '--json', str(tmp_path / 'g.json')],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / 'g.json').read_text())
    assert len(result['cases']) >= 18 and all(c['ok'] for c in result['cases'])


def test_gpu_check_without_a_gpu_says_so_and_exits_2(capsys):
    if importlib.util.find_spec('cupy') is not None:
        pytest.skip('CuPy is installed: this machine may have a GPU')
    assert _gpu_check().main([]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith('gpu_check: no GPU here') and '--emulate' in out[0]


class _FakeCupy:
    """Just enough of CuPy for gpu_check's GPU mode, on the CPU: arrays are numpy arrays,
    RawModule compiles its CUDA source through tests/cuda_host_emulation.cc and launches
    there; events time with the host clock. It checks that the GPU mode's code (kernel
    choice, argument lists of every launch, the floor kernel, the table) is ready to run;
    what only a GPU shows (speed, NVRTC, the driver) it cannot."""

    def __init__(self, workdir, root):
        import types
        self.workdir, self.root, self.count = workdir, root, 0
        self.float32, self.float64, self.uint8 = np.float32, np.float64, np.uint8
        self.random = types.SimpleNamespace(
            standard_normal=lambda n, dtype: np.random.default_rng(0).standard_normal(n).astype(dtype))
        runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda i: {'name': b'Fake (CPU emulation)', 'major': 9, 'minor': 0})

        class Event:
            def record(self):
                self.t = time.perf_counter()

            def synchronize(self):
                pass
        self.cuda = types.SimpleNamespace(runtime=runtime, Event=Event,
                                          get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
        fake = self

        class RawModule:
            def __init__(self, code):
                import ctypes
                import re
                import subprocess
                fake.count += 1
                folder = os.path.join(fake.workdir, 'module%d' % fake.count)
                os.makedirs(folder)
                names = re.findall(r'extern "C" __global__ void (\w+)\(', code)
                with open(os.path.join(folder, 'fused_cuda_all.cu'), 'w') as f:
                    f.write(code)
                with open(os.path.join(folder, 'kernels.inc'), 'w') as f:
                    f.write(''.join('MXNAG_KERNEL(%s)\n' % n for n in names))
                library = os.path.join(folder, 'lib.so')
                subprocess.run(['g++', '-std=c++20', '-O2', '-shared', '-fPIC', '-pthread', '-I', folder,
                                '-I', os.path.join(fake.root, 'mxnag', 'kernels', 'src'),
                                os.path.join(fake.root, 'tests', 'cuda_host_emulation.cc'),
                                '-o', library], check=True)
                self.lib = ctypes.CDLL(library)
                self.lib.mxnag_emulate_launch.argtypes = [
                    ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                    ctypes.POINTER(ctypes.c_void_p)]

            def get_function(self, name):
                import ctypes
                types_ = {np.float32: ctypes.c_float, np.float64: ctypes.c_double,
                          np.int32: ctypes.c_int, np.int64: ctypes.c_int64}

                def launch(grid, block, args):
                    values = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray)
                              else types_[type(a)](a) for a in args]
                    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
                    assert self.lib.mxnag_emulate_launch(name.encode(), grid[0], grid[1], block[0],
                                                         params) == 0, name
                return launch
        self.RawModule = RawModule

    def asarray(self, values):
        return np.array(values, copy=True)

    def asnumpy(self, array):
        return np.asarray(array)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def ones(self, shape, dtype):
        return np.ones(shape, dtype)


def test_gpu_check_gpu_mode_runs_on_a_stand_in_for_cupy(tmp_path, monkeypatch, capsys):
    """The GPU mode end to end (checks, timings, table, JSON) with CuPy replaced by the
    CPU emulation, on small timing shapes."""
    import sys
    gpu_check = _gpu_check()
    fake = _FakeCupy(str(tmp_path), ROOT)
    monkeypatch.setitem(sys.modules, 'cupy', fake)
    monkeypatch.setattr(gpu_check, 'timing_shapes', lambda: [('4k', [4096]), ('3 tensors', [7, 1000, 33])])
    assert gpu_check.main(['--steps', '6', '--json', str(tmp_path / 'g.json')]) == 0
    result = json.loads((tmp_path / 'g.json').read_text())
    assert result['backend'] == 'cupy' and 'Fake' in result['device'] and all(c['ok'] for c in result['cases'])
    rows = result['timings']
    assert [r['shape'] for r in rows] == ['4k', '3 tensors']
    assert all(set(r) >= {'adanag', 'adan', 'adanag 8-bit', 'adan 8-bit', 'floor_ms', 'copy_ms'}
               and r['adanag']['ms'] > 0 and r['adanag 8-bit']['x_32bit_time'] > 0 for r in rows)
    out = capsys.readouterr().out
    assert '| shape | elements |' in out and '| 4k | 4096 |' in out


def test_loading_the_gpu_check_leaves_mxnets_registry_to_mxnag():
    """gpu_check loads its own copies of the optimizer classes; in a process that uses
    mxnag they must not replace mxnag's in MXNet's registry."""
    import mxnag
    _gpu_check().load_mxnag()
    for name in ('adanag', 'adan', 'nadamw'):
        assert mx.optimizer.Optimizer.opt_registry[name] is mxnag.optim.optimizers()[name]


def test_bench_sources_runs_small(tmp_path, mnist_dir):
    """benchmarks/bench_sources.py end to end on a small exported folder (no timing is
    asserted): every case, its ratio to the in-memory source, the JSON."""
    from mxnag.train import sources
    sources.export_folder(sources.parse('mnist', mnist_dir), str(tmp_path / 'mnist'), per_class=20)
    from importlib import util
    spec = util.spec_from_file_location('bench_sources', os.path.join(ROOT, 'benchmarks', 'bench_sources.py'))
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / 'sources.json'
    assert bench.main(['--data-dir', mnist_dir, '--folder', str(tmp_path / 'mnist'), '--batches', '1',
                       '--rounds', '1', '--json', str(out)]) == 0
    rows = json.loads(out.read_text())['rows']
    assert [r['workers'] for r in rows] == [0, 0, 1, 2] and rows[0]['ratio_to_memory'] == 1.0
    assert all(r['images_per_second'] > 0 for r in rows)
