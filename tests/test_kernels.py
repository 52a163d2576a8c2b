"""The update backends of mxnag.kernels against the float64 references: the fused CPU
operators (float32, float16 with master weights, float64), aggregated groups, the composed
fallback, the CUDA source (nvcc, CuPy, and the optimizers' GPU path with its kernels run
on the CPU by tests/cuda_host_emulation.cc), NaN propagation, and the build cache.

Bounds are those of test_optim.py (displacement relative error over 30 steps).
"""
import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import mxnag  # noqa: F401
from mxnag import kernels
from mxnag.kernels import build, cuda, fused_cpu

from conftest import ROOT
from reference import relative_error
from test_optim import (FLOAT32_BOUND, FLOAT64_BOUND, OPTIONS, REFERENCES, STEPS, random_problem,
                        run_updater)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_COMPILER = any(shutil.which(c) for c in ([os.environ['CXX']] if os.environ.get('CXX')
                                             else ['c++', 'g++', 'clang++']))
needs_fused = pytest.mark.skipif(not HAS_COMPILER, reason='no C++ compiler: fused CPU path not built')
# big enough for several threads and several work chunks inside the operator
LARGE = (300, 250)


@pytest.fixture(autouse=True)
def fused_on(monkeypatch):
    """Every test starts with the fused path allowed (whatever the caller's environment)."""
    monkeypatch.delenv('MXNAG_FUSED', raising=False)


@pytest.fixture
def fused():
    """The fused CPU path, active (the library built and loaded), or a skip."""
    if not HAS_COMPILER:
        pytest.skip('no C++ compiler')
    assert fused_cpu.available(), fused_cpu.status()
    return fused_cpu


def count_calls(monkeypatch):
    """Record the operator calls of the fused CPU backend: a list of (operator, #inputs)."""
    calls = []
    original = fused_cpu.invoke

    def counting(name, inputs, keys, values, out):
        calls.append((name, len(inputs)))
        return original(name, inputs, keys, values, out)
    monkeypatch.setattr(fused_cpu, 'invoke', counting)
    return calls


# -- fused CPU, one parameter ----------------------------------------------------------------

@pytest.mark.parametrize('name,case', [(n, i) for n in OPTIONS for i in range(len(OPTIONS[n]))])
def test_fused_float32_matches_reference(name, case, rng, fused, monkeypatch):
    kwargs, ref_kwargs = OPTIONS[name][case]
    w0, grads = random_problem(rng, LARGE)
    calls = count_calls(monkeypatch)
    opt = mx.optimizer.create(name, learning_rate=0.01, **kwargs)
    w, _ = run_updater(opt, w0, grads)
    assert kernels.backend_for(w) == 'fused-cpu'
    assert len(calls) == STEPS and all(op == 'mxnag_%s_update' % name for op, _ in calls)
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, **ref_kwargs)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_fused_float64_matches_reference(name, rng, fused, monkeypatch):
    w0, grads = random_problem(rng, LARGE)
    calls = count_calls(monkeypatch)
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02)
    w, updater = run_updater(opt, w0, [g.astype(np.float64) for g in grads], dtype='float64')
    assert len(calls) == STEPS
    assert w.dtype == np.float64 and all(s.dtype == np.float64 for s in updater.states[0])
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, wd=0.02)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT64_BOUND


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_fused_float16_multi_precision_in_one_pass(name, rng, fused, monkeypatch):
    """float16 grad in, float32 master and states updated, float16 weight written: one
    operator call per step, the float16 weight the master rounded to nearest even."""
    w0, grads = random_problem(rng, LARGE)
    w0 = w0.astype(np.float16)
    grads = [g.astype(np.float16) for g in grads]
    calls = count_calls(monkeypatch)
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, clip_gradient=2.0,
                              multi_precision=True)
    w, updater = run_updater(opt, w0, grads, dtype='float16')
    assert len(calls) == STEPS  # nothing else: no separate casts
    master, states = updater.states[0]
    assert master.dtype == np.float32 and all(s.dtype == np.float32 for s in states)
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
    assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND
    np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))


def test_fused_equals_composed_closely(rng, fused, monkeypatch):
    """The two CPU backends compute the same float32 maths: after 30 steps they differ by
    float32 rounding only, far inside the reference bound."""
    w0, grads = random_problem(rng, LARGE)
    fused_w, _ = run_updater(mx.optimizer.create('adanag', learning_rate=0.01, wd=0.1), w0, grads)
    monkeypatch.setenv('MXNAG_FUSED', '0')
    composed_w, _ = run_updater(mx.optimizer.create('adanag', learning_rate=0.01, wd=0.1), w0, grads)
    assert relative_error(w0, fused_w.asnumpy(), composed_w.asnumpy().astype(np.float64)) < 1e-4


# -- aggregated groups ---------------------------------------------------------------------------

SHAPES = [(1,), (7, 3), (5, 1, 3, 3), (300, 250), (64,), (33, 17)]


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_aggregated_groups_match_reference(name, dtype, rng, fused, monkeypatch):
    """Six parameters of mixed shapes in groups of 4 (MXNet's Updater splits 4 + 2), with
    per-parameter lr_mult/wd_mult, under an lr schedule, and one parameter that starts late
    (its own step 1, Adan's first_step, inside a group of parameters past theirs): one
    operator call per group."""
    calls = count_calls(monkeypatch)
    ids_per_step = check_aggregated_groups(name, dtype, rng)
    assert len(calls) == sum(-(-len(ids) // 4) for ids in ids_per_step)


def check_aggregated_groups(name, dtype, rng):
    """The run of test_aggregated_groups_match_reference, checked against the references;
    returns the parameter indices updated at each step."""
    late, base_lr = 10, 0.02
    names = {k: 'p%d_weight' % k for k in range(len(SHAPES))}
    scheduler = mx.lr_scheduler.FactorScheduler(step=7, factor=0.5, base_lr=base_lr)
    opt = mx.optimizer.create(name, lr_scheduler=scheduler, wd=0.1, param_idx2name=names,
                              aggregate_num=4, multi_precision=dtype == 'float16')
    lr_mult = {'p1_weight': 0.5, 'p3_weight': 2.0}
    wd_mult = {'p2_weight': 0.0, 'p3_weight': 3.0}
    opt.set_lr_mult(lr_mult)
    opt.set_wd_mult(wd_mult)
    updater = mx.optimizer.get_updater(opt)
    assert updater.aggregate_updates
    problems = [random_problem(rng, shape) for shape in SHAPES]
    if dtype == 'float16':
        problems = [(w0.astype(np.float16), [g.astype(np.float16) for g in gs]) for w0, gs in problems]
    weights = [mx.nd.array(w0, dtype=dtype) for w0, _ in problems]
    ids_per_step = []
    for step in range(STEPS):
        ids = [k for k in range(len(SHAPES)) if k != 4 or step >= late]
        updater(ids, [mx.nd.array(problems[k][1][step], dtype=dtype) for k in ids],
                [weights[k] for k in ids])
        ids_per_step.append(ids)
    lrs = [base_lr * 0.5 ** ((s - 1) // 7) for s in range(1, STEPS + 1)]
    for k, (w0, grads) in enumerate(problems):
        key = names[k]
        start = late if k == 4 else 0
        ref = REFERENCES[name](w0, grads[start:], [lr * lr_mult.get(key, 1.0) for lr in lrs[start:]],
                               wd=0.1 * wd_mult.get(key, 1.0))
        result = updater.states[k][0] if dtype == 'float16' else weights[k]
        assert relative_error(w0, result.asnumpy(), ref) < FLOAT32_BOUND, key
        if dtype == 'float16':
            np.testing.assert_array_equal(weights[k].asnumpy(), result.asnumpy().astype(np.float16))
    return ids_per_step


def test_aggregation_default_and_override(monkeypatch):
    assert mx.optimizer.create('adanag').aggregate_num == 32
    assert mx.optimizer.create('adan', aggregate_num=0).aggregate_num == 0
    monkeypatch.setenv('MXNAG_AGGREGATE_NUM', '7')
    assert mx.optimizer.create('adanag').aggregate_num == 7
    with pytest.raises(ValueError, match='aggregate_num'):
        mx.optimizer.create('adanag', aggregate_num=-1)


def test_multi_update_checks_lengths():
    w = mx.nd.ones((3,))
    with pytest.raises(ValueError, match='one entry per weight'):
        kernels.multi_adanag_update(
            [w, w], [w], [(w, w)], rescale_grad=1.0, clip_gradient=None, beta1=0.9, beta2=0.999,
            epsilon=1e-8, wd_into_grad=[0.0], weight_scale=[1.0], grad_coef=[0.1],
            mean_coef=[0.1], var_scale=[1.0])


# -- fallback --------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_forced_fallback_matches_reference(name, rng, monkeypatch):
    monkeypatch.setenv('MXNAG_FUSED', '0')
    calls = count_calls(monkeypatch)
    w0, grads = random_problem(rng, (7, 3))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.05)
    w, _ = run_updater(opt, w0, grads)
    assert kernels.backend_for(w) == 'composed' and calls == []
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, wd=0.05)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


def test_fallback_without_compiler_warns_once_and_is_correct(tmp_path):
    """No compiler: one RuntimeWarning naming the cause, then correct composed updates."""
    script = textwrap.dedent('''
        import warnings, numpy as np, mxnet as mx, mxnag
        from mxnag import kernels
        from mxnag.kernels import fused_cpu
        w = mx.nd.ones((4,)); g = mx.nd.ones((4,))
        opt = mx.optimizer.create('adanag', learning_rate=0.1)
        state = opt.create_state(0, w)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for _ in range(3):
                opt.update(0, w, g, state)
        messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
        assert len(messages) == 1, messages
        assert 'no C++ compiler' in messages[0], messages
        assert kernels.backend_for(w) == 'composed'
        print(w.asnumpy()[0])
    ''')
    env = dict(os.environ, CXX='/nonexistent/c++', MXNAG_CACHE_DIR=str(tmp_path))
    env.pop('MXNAG_FUSED', None)
    done = subprocess.run([sys.executable, '-c', script], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    # three AdaNAG steps of lr 0.1 on a constant gradient move each weight by about 0.3
    assert 0.6 < float(done.stdout.split()[-1]) < 0.8


# -- IEEE behaviour -------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('clip', [None, 1.0])
@pytest.mark.parametrize('backend,fixture', [('fused-cpu', 'fused'), ('cuda', 'emulated_gpu_path')])
def test_nan_and_inf_gradients_propagate(name, clip, backend, fixture, request):
    """-ffast-math without finite-math-only, and the CUDA kernels (emulated on the CPU):
    a NaN gradient gives a NaN weight (not a silently finite update), an Inf one a
    non-finite weight; other elements are unharmed."""
    request.getfixturevalue(fixture)
    opt = mx.optimizer.create(name, learning_rate=0.01, clip_gradient=clip)
    w = mx.nd.ones((LARGE[0] * LARGE[1],))
    state = opt.create_state(0, w)
    grad = np.full(w.shape, 0.5, np.float32)
    grad[[3, 70000]] = np.nan
    grad[[5]] = np.inf
    assert kernels.backend_for(w) == backend
    opt.update(0, w, mx.nd.array(grad), state)
    result = w.asnumpy()
    assert np.isnan(result[[3, 70000]]).all()
    finite = np.ones(result.shape, bool)
    finite[[3, 5, 70000]] = False
    assert np.isfinite(result[finite]).all()
    if clip is None:
        assert not np.isfinite(result[5])


def test_loading_the_library_keeps_denormals(fused):
    """Linked without -ffast-math: loading it must not switch the process to
    flush-to-zero (GCC's crtfastmath.o would)."""
    tiny = np.array([1e-40], np.float32)
    assert (tiny * np.float32(1.0))[0] != 0
    assert (mx.nd.array(tiny) * 1.0).asnumpy()[0] != 0


def test_wrong_dtype_is_refused(fused):
    w = mx.nd.ones((4,))
    with pytest.raises(mx.base.MXNetError, match='gradient 0 is float64'):
        fused_cpu.update('adanag', [w], [mx.nd.ones((4,), dtype='float64')],
                         [(mx.nd.zeros((4,)), mx.nd.zeros((4,)))], None,
                         dict(rescale_grad=1.0, clip_gradient=None, beta1=0.9, beta2=0.999,
                              epsilon=1e-8),
                         dict(wd_into_grad=[0.0], weight_scale=[1.0], grad_coef=[0.1],
                              mean_coef=[0.1], var_scale=[1.0]))
        mx.nd.waitall()


def test_threads_inside_the_engine(fused):
    """The operators use every core although MXNet's engine lowers OpenMP's default."""
    max_threads, used, procs = fused_cpu.probe()
    if 'MXNAG_NUM_THREADS' not in os.environ and 'OMP_NUM_THREADS' not in os.environ \
            and 'MXNET_OMP_MAX_THREADS' not in os.environ:
        assert used == procs
    assert max_threads >= 1


def test_software_half_conversion_is_exact(tmp_path):
    """The float16 conversion for compilers without _Float16, checked exhaustively
    against NumPy (round to nearest even, subnormals, Inf, NaN)."""
    compiler = shutil.which(os.environ.get('CXX') or 'c++') or shutil.which('g++')
    if compiler is None:
        pytest.skip('no C++ compiler')
    program = tmp_path / 'half_check.cc'
    program.write_text(textwrap.dedent('''
        #include <cstdio>
        #include "half.h"
        int main() {
          FILE* f = std::fopen("floats.bin", "rb");
          float x; std::uint32_t bits;
          for (std::uint32_t h = 0; h < 65536; ++h) {
            float v = mxnag::half_to_float(static_cast<std::uint16_t>(h));
            std::memcpy(&bits, &v, 4);
            std::printf("%u\\n", bits);
          }
          while (std::fread(&x, 4, 1, f) == 1) std::printf("%u\\n", mxnag::float_to_half(x));
          return 0;
        }
    '''))
    rng = np.random.default_rng(0)
    floats = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10) ** rng.integers(-9, 6, 20000),
        np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 1e-8, 2.98e-8, 5.96e-8,
                  6.1e-5, 6.0e-5, 1e30], np.float32),
        # exact ties between two float16 values, to check round-to-even
        (np.arange(1, 2049, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0 ** -14 / 1024),
        np.arange(2049, 4097, dtype=np.float32) + np.float32(0.5)]).astype(np.float32)
    floats.tofile(tmp_path / 'floats.bin')
    binary = tmp_path / 'half_check'
    subprocess.run([compiler, '-std=c++17', '-O2', '-DMXNAG_SOFT_HALF', '-I', build.SOURCE_DIR,
                    str(program), '-o', str(binary)], check=True)
    out = subprocess.run([str(binary)], cwd=tmp_path, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.split()
    values = np.array(out, dtype=np.uint64)
    to_float = values[:65536].astype(np.uint32).view(np.float32)
    expected = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(to_float, expected)  # NaN == NaN for assert_array_equal
    nan = np.isnan(expected)
    np.testing.assert_array_equal(to_float.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    to_half = values[65536:].astype(np.uint16)
    np.testing.assert_array_equal(to_half, floats.astype(np.float16).view(np.uint16))


# -- CUDA --------------------------------------------------------------------------------

def test_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        pytest.skip('nvcc not found')
    source, ptx = tmp_path / 'fused.cu', tmp_path / 'fused.ptx'
    source.write_text(cuda.source())
    subprocess.run([nvcc, '--ptx', str(source), '-o', str(ptx)], check=True)
    entries = [line.split()[2].split('(')[0] for line in ptx.read_text().splitlines()
               if line.startswith('.visible .entry')]
    assert sorted(entries) == sorted(cuda.kernel_names())
    assert len(entries) == 2 * 3 * len(cuda.COUNTS)


class _FakeArray:
    """Stands for an array in kernel_arguments (only its dtype is read)."""

    def __init__(self, dtype, label=''):
        self.dtype = np.dtype(dtype)
        self.label = label


SHARED = {'rescale_grad': 0.5, 'clip_gradient': None, 'beta1': 0.9, 'beta2': 0.99, 'beta3': 0.9,
          'epsilon': 1e-8}


@pytest.mark.parametrize('count', cuda.COUNTS)
def test_cuda_arguments_match_signatures(count):
    """What mx.rtc is told (the signature) and what it gets (the arguments) agree with
    each other and with the entry points in the source, in count, order, names and types:
    each tensor's arrays, then the shared scalars, each tensor's scalars, each size."""
    source = cuda.source()
    scalar_types = {'float': np.float32, 'double': np.float64, 'int': np.int32, 'int64_t': np.int64}
    for algorithm in ('adanag', 'adan'):
        for dtype in ('float32', 'float64', 'float16'):
            name = cuda.kernel_name(algorithm, dtype, count)
            signature = [part.strip() for part in cuda.kernel_signature(algorithm, dtype, count).split(',')]
            state_dtype = 'float32' if dtype == 'float16' else dtype
            per_tensor = cuda._PER_TENSOR[algorithm]
            tensors = [('grad%d' % k, _FakeArray(state_dtype, 'weight%d' % k),
                        ['%s%d' % (state, k) for state in cuda._STATES[algorithm]],
                        _FakeArray('float16', 'weight16%d' % k) if dtype == 'float16' else None,
                        1000 + k, {n: 10 * k + j + 1 for j, n in enumerate(per_tensor)})
                       for k in range(count)]
            args = cuda.kernel_arguments(algorithm, tensors, SHARED)
            assert len(args) == len(signature), name
            labels = [getattr(a, 'label', a) for a in args]
            # arrays: each tensor's, in declaration order, by name
            pointers = [(label, d.split('*')[-1].strip()) for label, d in zip(labels, signature) if '*' in d]
            assert [label for label, _ in pointers] == [
                x for k in range(count) for x in (['grad%d' % k, 'weight%d' % k]
                                                  + ['%s%d' % (st, k) for st in cuda._STATES[algorithm]]
                                                  + (['weight16%d' % k] if dtype == 'float16' else []))]
            assert [declared for _, declared in pointers] == [
                x + ('_%d' % k if count > 1 else '') for k in range(count)
                for x in ['grad', 'weight'] + list(cuda._STATES[algorithm])
                + (['weight16'] if dtype == 'float16' else [])]
            # scalars: declared types, values where the names say
            for arg, declared in zip(args, signature):
                words = declared.replace('*', ' * ').split()
                if '*' in words:
                    continue
                assert type(arg) is scalar_types[words[0]], (name, declared, type(arg))
                param = words[-1]
                for k in range(count):
                    suffix = '_%d' % k if count > 1 else ''
                    for j, n in enumerate(per_tensor):
                        if param == n + suffix:
                            expected = bool(10 * k + j + 1) if n == 'first_step' else 10 * k + j + 1
                            assert arg == expected, (name, param)
                    if param == 'n' + suffix:
                        assert arg == 1000 + k
                if param in SHARED:
                    assert arg == type(arg)(-1.0 if SHARED[param] is None else SHARED[param]), param
            # the source's entry point declares the same names in the same order
            head = source[source.index('void %s(' % name):]
            head = head[head.index('(') + 1:head.index(') {')]
            assert [p.split()[-1].lstrip('*') for p in head.split(',')] == \
                [d.split()[-1].lstrip('*') for d in signature], name


def test_group_split_into_launches():
    assert cuda.split(1) == [1] and cuda.split(7) == [4, 2, 1] and cuda.split(32) == [8] * 4
    assert cuda.split(13) == [8, 4, 1] and sum(cuda.split(161)) == 161
    assert cuda.launch_shape([5, 70000, 12]) == ((274, 3, 1), (cuda.THREADS_PER_BLOCK, 1, 1))
    assert cuda.launch_shape([10 ** 9]) == ((cuda.MAX_BLOCKS, 1, 1), (cuda.THREADS_PER_BLOCK, 1, 1))


def test_rtc_launches_on_the_weights_context(monkeypatch):
    """The mx.rtc path, with mx.rtc replaced by a recorder (no GPU here): tensors of one
    dtype launched together (3 float32: one launch of 2, one of 1), named kernels with
    their signatures, on the weight's context, master weights and float16 outputs in place."""
    launches, kernels_made = [], []

    class Kernel:
        def __init__(self, name):
            self.name = name

        def launch(self, args, ctx, grid, block, shared_mem=0):
            launches.append((self.name, args, ctx, grid, block))

    class Module:
        def get_kernel(self, name, signature):
            kernels_made.append((name, signature))
            return Kernel(name)

    monkeypatch.setattr(cuda._MODULE, 'value', Module())
    monkeypatch.setattr(cuda._MODULE, 'tried', True)
    monkeypatch.setattr(cuda, '_KERNELS', {})
    w32, w16, wa, wb = (mx.nd.ones((3, 4)), mx.nd.ones((5,), dtype='float16'), mx.nd.ones((700,)),
                        mx.nd.ones((2,)))
    master = mx.nd.ones((5,))
    states32 = (mx.nd.zeros((3, 4)), mx.nd.zeros((3, 4)))
    states16 = (mx.nd.zeros((5,)), mx.nd.zeros((5,)))
    states_a, states_b = (mx.nd.zeros((700,)), mx.nd.zeros((700,))), (mx.nd.zeros((2,)), mx.nd.zeros((2,)))
    cuda.update('adanag', [w32, w16, wa, wb], [w32, w16, wa, wb],
                [states32, states16, states_a, states_b], [None, master, None, None],
                {'rescale_grad': 0.5, 'clip_gradient': None, 'beta1': 0.9, 'beta2': 0.999,
                 'epsilon': 1e-8},
                {'wd_into_grad': [0.0, 0.1, 0.2, 0.3], 'weight_scale': [0.99, 1.0, 0.98, 0.97],
                 'grad_coef': [1e-3, 2e-3, 3e-3, 4e-3], 'mean_coef': [1e-2, 2e-2, 3e-2, 4e-2],
                 'var_scale': [1.5, 2.5, 3.5, 4.5]})
    assert [name for name, _ in kernels_made] == ['mxnag_adanag_f32_x2', 'mxnag_adanag_f32',
                                                  'mxnag_adanag_f16mp']
    assert kernels_made[2][1] == cuda.kernel_signature('adanag', 'float16')
    (_, args0, ctx0, grid0, _), (_, args1, _, grid1, _), (_, args2, _, _, block2) = launches
    assert args0[1] is w32 and args0[2:4] == list(states32) and args0[5] is wa
    assert args0[-2:] == [12, 700] and grid0 == (3, 2, 1)
    assert args0[-3] == np.float32(3.5) and args0[-8] == np.float32(1.5)  # var_scale of wa, w32
    assert args1[1] is wb and args1[-1] == 2 and grid1 == (1, 1, 1)
    assert args2[1] is master and args2[4] is w16 and args2[-1] == 5
    assert args2[5] == np.float32(0.5) and args2[6] == np.float32(-1.0)  # rescale, clip off
    assert args2[-2] == np.float32(2.5) and ctx0 == w32.context
    assert block2 == (cuda.THREADS_PER_BLOCK, 1, 1)


def _cupy_or_skip():
    cupy = pytest.importorskip('cupy', reason='CuPy not installed: GPU kernels not run here')
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip('no CUDA GPU')
    except cupy.cuda.runtime.CUDARuntimeError as err:
        pytest.skip('no CUDA GPU (%s)' % err)
    return cupy


# Shapes updated by one launch in the multi-tensor CUDA tests: the largest first and last.
GROUP_SHAPES = [LARGE, (7, 3), (1,), (300, 251)]


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('dtype', ['float32', 'float64', 'float16'])
@pytest.mark.parametrize('count', [1, 4])
def test_cuda_kernels_under_cupy_match_reference(name, dtype, count, rng):
    """The CUDA source, run by CuPy with the optimizer's own coefficients and the argument
    lists mx.rtc gets (one tensor, or four of different sizes in one launch), against the
    float64 references."""
    cupy = _cupy_or_skip()
    kernel = cupy.RawModule(code=cuda.source()).get_function(cuda.kernel_name(name, dtype, count))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, clip_gradient=2.0)
    state_dtype = np.float32 if dtype == 'float16' else dtype
    problems, tensors = [], []
    for shape in GROUP_SHAPES[:count]:
        w0, grads = random_problem(rng, shape)
        if dtype == 'float16':
            w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
        problems.append((w0, grads))
        tensors.append([None, cupy.asarray(w0.astype(state_dtype)),
                        [cupy.zeros(w0.shape, state_dtype) for _ in opt.state_names],
                        cupy.asarray(w0) if dtype == 'float16' else None, w0.size, None])
    for step in range(STEPS):
        opt._update_count(0)
        coefs = opt._coefficients(opt._index_update_count[0], opt._get_lr(0), opt._get_wd(0))
        for tensor, (_, grads) in zip(tensors, problems):
            tensor[0], tensor[5] = cupy.asarray(grads[step].astype(dtype)), coefs
        grid, block = cuda.launch_shape([tensor[4] for tensor in tensors])
        kernel(grid, block, tuple(cuda.kernel_arguments(name, tensors, opt._shared_coefficients())))
    bound = FLOAT64_BOUND if dtype == 'float64' else FLOAT32_BOUND
    for (w0, grads), (_, weight, _, weight16, _, _) in zip(problems, tensors):
        ref = REFERENCES[name](w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
        assert relative_error(w0, cupy.asnumpy(weight), ref) < bound
        if weight16 is not None:
            np.testing.assert_array_equal(cupy.asnumpy(weight16), cupy.asnumpy(weight).astype(np.float16))


# The CUDA kernels on the CPU: fused_cuda.cu compiled by the C++ compiler through
# tests/cuda_host_emulation.cc, which runs a launch's threads one after another. With
# mx.rtc replaced by a stand-in that launches there, CPU weights take the GPU path of the
# optimizers whole: coefficients, kernel choice, signatures, argument lists and the
# kernels' own maths, checked against the float64 references where no GPU is lent.

# signature type -> (NumPy dtype of an array argument, type of a scalar argument, ctypes type)
_RTC_TYPES = {'float': (np.float32, np.float32, ctypes.c_float),
              'double': (np.float64, np.float64, ctypes.c_double),
              '__half': (np.float16, None, None),
              'int': (None, np.int32, ctypes.c_int),
              'int64_t': (None, np.int64, ctypes.c_int64)}


@pytest.fixture(scope='module')
def cuda_emulation(tmp_path_factory):
    """The emulation library, built once for the module from ``cuda.source()``."""
    if not HAS_COMPILER:
        pytest.skip('no C++ compiler')
    compiler = shutil.which(os.environ.get('CXX') or 'c++') or shutil.which('g++')
    folder = tmp_path_factory.mktemp('cuda_emulation')
    (folder / 'fused_cuda_all.cu').write_text(cuda.source())
    (folder / 'kernels.inc').write_text(''.join('MXNAG_KERNEL(%s)\n' % n for n in cuda.kernel_names()))
    library = folder / 'fused_cuda_emulated.so'
    subprocess.run([compiler, '-std=c++17', '-O2', '-shared', '-fPIC', '-I', str(folder),
                    '-I', build.SOURCE_DIR, os.path.join(ROOT, 'tests', 'cuda_host_emulation.cc'),
                    '-o', str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.mxnag_emulated_kernels.restype = ctypes.c_char_p
    lib.mxnag_emulate_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                         ctypes.POINTER(ctypes.c_void_p)]
    return lib


class _EmulatedKernel:
    """Stands for an ``mx.rtc`` kernel: checks each argument against the signature it was
    made with (arrays of the declared dtype on the launch's context, scalars of the
    declared type) and runs the launch in the emulation."""

    def __init__(self, lib, name, signature, launches):
        self.lib, self.name, self.launches = lib, name, launches
        self.declared = [part.strip() for part in signature.split(',')]

    def launch(self, args, ctx, grid, block, shared_mem=0):
        from mxnet.base import _LIB, check_call
        assert len(args) == len(self.declared), self.name
        assert 1 <= block[0] <= 1024 and block[1:] == (1, 1) and grid[2] == 1
        mx.nd.waitall()  # the emulation works on the arrays from this thread
        values = []
        for arg, declared in zip(args, self.declared):
            words = declared.replace('*', ' * ').split()
            array_dtype, scalar_type, c_type = _RTC_TYPES[words[1] if words[0] == 'const' else words[0]]
            if '*' in words:
                assert isinstance(arg, mx.nd.NDArray) and arg.context == ctx, (self.name, declared)
                assert arg.dtype == array_dtype, (self.name, declared, arg.dtype)
                pointer = ctypes.c_void_p()
                check_call(_LIB.MXNDArrayGetData(arg.handle, ctypes.byref(pointer)))
                values.append(pointer)
            else:
                assert type(arg) is scalar_type, (self.name, declared, type(arg))
                values.append(c_type(arg))
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        assert self.lib.mxnag_emulate_launch(self.name.encode(), grid[0], grid[1], block[0],
                                             params) == 0
        self.launches.append((self.name, grid, args[len(args) - grid[1]:]))


@pytest.fixture
def emulated_gpu_path(cuda_emulation, monkeypatch):
    """CPU weights on the optimizers' GPU path, with mx.rtc's kernels run by the emulation;
    yields the launches: (kernel, grid, sizes of its tensors)."""
    launches = []

    class Module:  # stands for mx.rtc.CudaModule(cuda.source())
        def get_kernel(self, name, signature):
            return _EmulatedKernel(cuda_emulation, name, signature, launches)

    monkeypatch.setattr(cuda._MODULE, 'value', Module())
    monkeypatch.setattr(cuda._MODULE, 'tried', True)
    monkeypatch.setattr(cuda, '_KERNELS', {})
    original = kernels._backend

    def gpu_for_cpu(dtype, device_type, master_dtype, forced_off):
        backend = original(dtype, 'gpu' if device_type == 'cpu' else device_type, master_dtype,
                           forced_off)
        assert backend == 'cuda'
        return backend
    monkeypatch.setattr(kernels, '_backend', gpu_for_cpu)
    return launches


def test_emulation_covers_every_kernel(cuda_emulation):
    names = cuda_emulation.mxnag_emulated_kernels().decode().strip(',').split(',')
    assert names == cuda.kernel_names() and len(names) == 2 * 3 * len(cuda.COUNTS)


@pytest.mark.parametrize('name,case', [(n, c) for n in sorted(OPTIONS) for c in range(len(OPTIONS[n]))])
@pytest.mark.parametrize('max_blocks', [cuda.MAX_BLOCKS, 3])
def test_cuda_path_emulated_matches_reference(name, case, max_blocks, rng, emulated_gpu_path,
                                              monkeypatch):
    """Every option set of test_optim, float32, through the GPU path; with 3 blocks the
    grid-stride loops cover 98 elements per thread (each must be updated exactly once)."""
    monkeypatch.setattr(cuda, 'MAX_BLOCKS', max_blocks)
    kwargs, ref_kwargs = OPTIONS[name][case]
    w0, grads = random_problem(rng, LARGE)
    w, _ = run_updater(mx.optimizer.create(name, learning_rate=0.01, **kwargs), w0, grads)
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, **ref_kwargs)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND
    assert len(emulated_gpu_path) == STEPS
    kernel, grid, sizes = emulated_gpu_path[-1]
    assert kernel == cuda.kernel_name(name, 'float32') and sizes == [w0.size]
    assert grid == (min(max_blocks, -(-w0.size // cuda.THREADS_PER_BLOCK)), 1, 1)


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('dtype', ['float64', 'float16'])
def test_cuda_path_emulated_float64_and_float16(name, dtype, rng, emulated_gpu_path):
    """float64 weights and states; float16 weights with float32 master weights and states,
    the float16 weight written by the same kernel."""
    w0, grads = random_problem(rng, (37, 41))
    if dtype == 'float16':
        w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, clip_gradient=2.0,
                              multi_precision=dtype == 'float16')
    w, updater = run_updater(opt, w0, grads, dtype=dtype)
    ref = REFERENCES[name](w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
    if dtype == 'float16':
        master = updater.states[0][0]
        assert master.dtype == np.float32
        assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND
        np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))
    else:
        assert relative_error(w0, w.asnumpy(), ref) < FLOAT64_BOUND
    assert {kernel for kernel, _, _ in emulated_gpu_path} == {cuda.kernel_name(name, dtype)}


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('dtype', ['float32', 'float64', 'float16'])
def test_cuda_path_emulated_aggregated_groups(name, dtype, rng, emulated_gpu_path):
    """The groups of test_aggregated_groups_match_reference on the GPU path (groups of 4,
    2 and 1 after the late parameter): one launch per group, each tensor with its own
    coefficients and size."""
    ids_per_step = check_aggregated_groups(name, dtype, rng)
    groups = [len(ids[start:start + 4]) for ids in ids_per_step for start in range(0, len(ids), 4)]
    assert [len(sizes) for _, _, sizes in emulated_gpu_path] == groups
    suffix = {'float32': 'f32', 'float64': 'f64', 'float16': 'f16mp'}[dtype]
    assert {kernel for kernel, _, _ in emulated_gpu_path} == {
        'mxnag_%s_%s%s' % (name, suffix, tail) for tail in ('_x4', '_x2', '')}


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_cuda_path_emulated_large_group(name, rng, emulated_gpu_path):
    """13 parameters in one group (the default aggregate_num is 32): launches of 8, 4 and
    1 tensors, every parameter on its own trajectory."""
    shapes = [(k + 1, 3) for k in range(12)] + [(40, 50)]
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.05)
    updater = mx.optimizer.get_updater(opt)
    problems = [random_problem(rng, shape, steps=10) for shape in shapes]
    weights = [mx.nd.array(w0) for w0, _ in problems]
    for step in range(10):
        updater(list(range(13)), [mx.nd.array(gs[step]) for _, gs in problems], weights)
    assert [len(sizes) for _, _, sizes in emulated_gpu_path] == [8, 4, 1] * 10
    for (w0, grads), w in zip(problems, weights):
        ref = REFERENCES[name](w0, grads, [0.01] * 10, wd=0.05)
        assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


# -- build and cache ------------------------------------------------------------------------

def test_cache_key_follows_flags_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv('MXNAG_CACHE_DIR', str(tmp_path))
    plain = build.build_spec()
    monkeypatch.setenv('MXNAG_CXXFLAGS', '-DMXNAG_SOFT_HALF')
    flagged = build.build_spec()
    assert plain['key'] != flagged['key']
    assert os.path.dirname(plain['path']) == str(tmp_path)
    for part in ('mxnet_version', 'source_sha256', 'compiler_version', 'compile_flags', 'cpu_sha256'):
        assert plain[part], part
    monkeypatch.delenv('MXNAG_CACHE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert build.cache_dir() == str(tmp_path / 'xdg' / 'mxnag')


@needs_fused
def test_concurrent_builds_then_cache_hit(tmp_path):
    """Two processes building into an empty cache at once both get the library (one
    compiles, the other waits on the lock); building again is a cache hit."""
    script = ('import json, mxnet; from mxnag.kernels import build; '
              'spec = build.build(); print(json.dumps([spec["path"], spec["cache_hit"]]))')
    env = dict(os.environ, MXNAG_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, '-c', script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    paths = {path for path, _ in results}
    assert len(paths) == 1 and os.path.isfile(paths.pop())
    assert sorted(hit for _, hit in results) == [False, True]
    os.environ['MXNAG_CACHE_DIR'], saved = str(tmp_path), os.environ.get('MXNAG_CACHE_DIR')
    try:
        again = build.build()
    finally:
        if saved is None:
            del os.environ['MXNAG_CACHE_DIR']
        else:
            os.environ['MXNAG_CACHE_DIR'] = saved
    assert again['cache_hit'] and again['path'] == results[0][0]
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith('build-') or p.endswith('.tmp')]
    assert leftovers == []


def test_ops_command_info_and_build(capsys):
    from mxnag.kernels import ops
    assert ops.main(['info']) == 0
    out = capsys.readouterr().out
    assert 'cache_dir' in out and 'fused_cpu_active' in out
    if HAS_COMPILER:
        assert ops.main(['build']) == 0
        assert '.so' in capsys.readouterr().out


def test_import_loads_nothing():
    """``import mxnag`` neither builds nor loads the library, nor compiles CUDA code."""
    script = ('import mxnag; from mxnag.kernels import fused_cpu, cuda; '
              'assert not fused_cpu._LIBRARY.tried and not cuda._MODULE.tried; print("ok")')
    done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr



THREADING_SCRIPT = textwrap.dedent('''
    import os, sys, numpy as np, mxnet as mx, mxnag
    from mxnag import kernels
    def run(fused):
        os.environ['MXNAG_FUSED'] = '1' if fused else '0'
        rng = np.random.default_rng(0)
        w = mx.nd.array(rng.standard_normal(300000).astype(np.float32))
        opt = mx.optimizer.create('adan', learning_rate=0.01, wd=0.1)
        state = opt.create_state(0, w)
        for _ in range(5):
            opt.update(0, w, mx.nd.array(rng.standard_normal(300000).astype(np.float32)), state)
        assert kernels.backend_for(w) == ('fused-cpu' if fused else 'composed')
        return w.asnumpy()

    fused = run(True)
    if os.environ.get('FORK_CHILD_UPDATE'):
        pid = os.fork()
        if pid == 0:  # the child has none of the parent's helper threads
            child = run(True)
            os._exit(0 if np.array_equal(child, fused) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, status
    composed = run(False)
    print(float(np.abs(fused - composed).max()))
''')


@needs_fused
@pytest.mark.parametrize('env', [{'MXNAG_THREADING': 'openmp'}, {'MXNAG_NUM_THREADS': '1'},
                                 {'FORK_CHILD_UPDATE': '1'}], ids=['openmp', 'one-thread', 'fork'])
def test_threading_modes_agree_with_composed(env):
    """The OpenMP loop, a single thread, and a forked child (after the helper threads
    started in the parent) all compute what the composed path computes."""
    done = subprocess.run([sys.executable, '-c', THREADING_SCRIPT], cwd=ROOT, timeout=300,
                          env=dict(os.environ, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5


@pytest.mark.parametrize('count', [1, 3, 5])
def test_stream_floor_operator(count, rng, fused):
    """The benchmark's floor: every target += source, in one pass, in place."""
    source = rng.standard_normal(100003).astype(np.float32)
    starts = [rng.standard_normal(100003).astype(np.float32) for _ in range(count)]
    targets = [mx.nd.array(t) for t in starts]
    fused.stream(mx.nd.array(source), targets)
    for target, start in zip(targets, starts):
        assert np.array_equal(target.asnumpy(), start + source)


def test_stream_floor_operator_refuses_what_it_cannot_do(fused):
    with pytest.raises(mx.base.MXNetError, match='at most 5 targets'):
        fused.stream(mx.nd.ones((8,)), [mx.nd.ones((8,)) for _ in range(6)])
        mx.nd.waitall()
    with pytest.raises(mx.base.MXNetError, match='takes float32 arrays, input 1 is float64'):
        fused.stream(mx.nd.ones((8,), dtype='float64'), [mx.nd.ones((8,))])
    with pytest.raises(mx.base.MXNetError, match="input 2 of mxnag_stream does not have input 0's shape"):
        fused.stream(mx.nd.ones((8,)), [mx.nd.ones((8,)), mx.nd.ones((9,))])


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
    assert '| step | median ms |' in capsys.readouterr().out


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
    assert len(result['rows']['torch Adam (fused)']['round_ms']) == 2
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


def _bench_module():
    """benchmarks/bench_step.py (not part of the package)."""
    import importlib.util
    path = os.path.join(ROOT, 'benchmarks', 'bench_step.py')
    spec = importlib.util.spec_from_file_location('bench_step', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
