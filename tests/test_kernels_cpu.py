"""The fused CPU backend (src/fused_cpu.cc) and the composed fallback, against the
float64 references of reference.py, every optimizer of the table in optimizers.py: one
parameter, float64, float16 master weights, aggregated groups, the fallback, IEEE
behaviour (NaN, Inf, denormals), dtype checks and threads."""
import os
import shutil
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import mxnag  # noqa: F401  (registers the optimizers)
from mxnag import kernels
from mxnag.kernels import build, fused_cpu

from conftest import LARGE, ROOT, count_calls, needs_fused
from optimizers import (BY_NAME, CASES, FLOAT32_BOUND, FLOAT64_BOUND, NAMES, RULES, STEPS,
                        check_aggregated_groups, random_problem, run_updater)
from reference import relative_error

pytestmark = pytest.mark.usefixtures('fused_allowed')


@pytest.mark.parametrize('name,case', CASES)
def test_fused_float32_matches_reference(name, case, rng, fused, monkeypatch):
    kwargs, ref_kwargs = BY_NAME[name].options[case]
    w0, grads = random_problem(rng, LARGE)
    calls = count_calls(monkeypatch)
    opt = mx.optimizer.create(name, learning_rate=0.01, **kwargs)
    w, _ = run_updater(opt, w0, grads)
    assert kernels.backend_for(w) == 'fused-cpu'
    rule = BY_NAME[name].cls.rule
    assert len(calls) == STEPS and all(op == 'mxnag_%s_update' % rule.name for op, _ in calls)
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, **ref_kwargs)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


@pytest.mark.parametrize('name', NAMES)
def test_fused_float64_matches_reference(name, rng, fused, monkeypatch):
    w0, grads = random_problem(rng, LARGE)
    calls = count_calls(monkeypatch)
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02)
    w, updater = run_updater(opt, w0, [g.astype(np.float64) for g in grads], dtype='float64')
    assert len(calls) == STEPS
    assert w.dtype == np.float64 and all(s.dtype == np.float64 for s in updater.states[0])
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT64_BOUND


@pytest.mark.parametrize('name', NAMES)
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
    assert master.dtype == np.float32 and all(s.dtype == np.float32 for s in states[:-1])
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
    assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND
    np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))


def test_fused_equals_composed_closely(rng, fused, monkeypatch):
    """The two CPU backends compute the same float32 maths: after 30 steps they differ by
    float32 rounding only, far inside the reference bound."""
    w0, grads = random_problem(rng, LARGE)
    fused_w, _ = run_updater(mx.optimizer.create('adanag', learning_rate=0.01, wd=0.1), w0, grads)
    monkeypatch.setattr(fused_cpu, 'FORCED_OFF', True)
    composed_w, _ = run_updater(mx.optimizer.create('adanag', learning_rate=0.01, wd=0.1), w0, grads)
    assert relative_error(w0, fused_w.asnumpy(), composed_w.asnumpy().astype(np.float64)) < 1e-4


# -- aggregated groups ---------------------------------------------------------------------------



@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_aggregated_groups_match_reference(name, dtype, rng, fused, monkeypatch):
    """Six parameters of mixed shapes in groups of 4 (MXNet's Updater splits 4 + 2), with
    per-parameter lr_mult/wd_mult, under an lr schedule, and one parameter that starts late
    (its own step 1, Adan's first_step, inside a group of parameters past theirs): one
    operator call per group."""
    calls = count_calls(monkeypatch)
    ids_per_step = check_aggregated_groups(name, dtype, rng)
    assert len(calls) == sum(-(-len(ids) // 4) for ids in ids_per_step)


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
        kernels.multi_update(
            RULES['adanag'], [w, w], [w], [(w, w)],
            dict(rescale_grad=1.0, clip_gradient=None, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 one_minus_beta1=0.1, one_minus_beta2=0.001, wd_into_grad=[0.0],
                 weight_scale=[1.0], grad_coef=[0.1], mean_coef=[0.1], var_scale=[1.0]))


# -- fallback --------------------------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_forced_fallback_matches_reference(name, rng, monkeypatch):
    monkeypatch.setattr(fused_cpu, 'FORCED_OFF', True)
    calls = count_calls(monkeypatch)
    w0, grads = random_problem(rng, (7, 3))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.05)
    w, _ = run_updater(opt, w0, grads)
    assert kernels.backend_for(w) == 'composed' and calls == []
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.05)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


def test_fallback_without_compiler_warns_once_and_is_correct(tmp_path):
    """No compiler: one warning on the mxnag.kernels logger naming the cause, then
    correct composed updates."""
    script = textwrap.dedent('''
        import logging, numpy as np, mxnet as mx, mxnag
        from mxnag import kernels
        from mxnag.kernels import fused_cpu
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger('mxnag').addHandler(Keep())
        w = mx.nd.ones((4,)); g = mx.nd.ones((4,))
        opt = mx.optimizer.create('adanag', learning_rate=0.1)
        state = opt.create_state(0, w)
        for _ in range(3):
            opt.update(0, w, g, state)
        messages = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert len(messages) == 1, messages
        assert records[0].name == 'mxnag.kernels' and 'no C++ compiler' in messages[0], messages
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

@pytest.mark.parametrize('name', NAMES)
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
        fused_cpu.update(RULES['adanag'], [w], [mx.nd.ones((4,), dtype='float64')],
                         [(mx.nd.zeros((4,)), mx.nd.zeros((4,)))], None,
                         mxnag.AdaNAG()._shared_coefficients(),
                         dict(wd_into_grad=[0.0], weight_scale=[1.0], grad_coef=[0.1],
                              mean_coef=[0.1], var_scale=[1.0]),
                         [mx.nd.zeros((2,), dtype='float64')], [0], mx.nd.ones((1,)),
                         mx.nd.ones((1, 3), dtype='float64'))
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


THREADING_SCRIPT = textwrap.dedent('''
    import os, sys, numpy as np, mxnet as mx, mxnag
    from mxnag import kernels
    def run(fused):
        kernels.set_fused(fused)
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


def test_import_loads_nothing():
    """``import mxnag`` neither builds nor loads the library, nor compiles CUDA code."""
    script = ('import mxnag; from mxnag.kernels import fused_cpu, cuda; '
              'assert not fused_cpu._LIBRARY.tried and not cuda._MODULES; print("ok")')
    done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr


def test_the_library_holds_the_update_operators_only():
    """The benchmark's operators (benchmarks/src/bench_ops.cc) are a library of their own:
    loading the fused update operators neither needs nor registers them."""
    script = ('import mxnet as mx, mxnag\n'
              'from mxnag.kernels import fused_cpu\n'
              'assert fused_cpu.available()\n'
              'rules = {cls.rule.name: cls.rule for cls in mxnag.optim.optimizers().values()}\n'
              'assert all(fused_cpu.supports(rules[name]) for name in %r)\n'
              'for name in ("mxnag_copy", "mxnag_stream"):\n'
              '    try:\n'
              '        fused_cpu._op_handle(name)\n'
              '    except mx.base.MXNetError:\n'
              '        continue\n'
              '    raise SystemExit(name + " is registered")\n'
              'print("ok")\n') % sorted(RULES)
    done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stdout + done.stderr


@pytest.mark.parametrize('dtype', ['float16', 'float32', 'float64'])
def test_all_finite_finds_every_nan_and_inf(dtype, rng, fused):
    """kernels.all_finite over several arrays (one of them large enough for several
    threads and chunks): 1 when all is finite, 0 for a NaN or an Inf at any place of any
    array; NumPy decides what is finite."""
    arrays = [rng.standard_normal(n).astype(dtype) for n in (1, 7, LARGE[0] * LARGE[1], 33)]

    def flag(values):
        result = kernels.all_finite([mx.nd.array(v, dtype=dtype) for v in values])
        assert result.dtype == np.float32 and result.shape == (1,)
        return float(result.asnumpy()[0])

    assert flag(arrays) == 1.0
    big = np.finfo(dtype).max
    assert flag([a * 0 + big for a in arrays]) == 1.0  # the largest finite value is finite
    for k, position in [(0, 0), (1, 6), (2, 0), (2, 40000), (2, LARGE[0] * LARGE[1] - 1), (3, 32)]:
        for bad in (np.nan, np.inf, -np.inf):
            values = [a.copy() for a in arrays]
            values[k][position] = bad
            assert flag(values) == 0.0, (k, position, bad)


def test_all_finite_without_the_fused_library_uses_mxnets_operator(monkeypatch, rng):
    monkeypatch.setattr(fused_cpu, 'FORCED_OFF', True)
    values = rng.standard_normal(50).astype(np.float32)
    assert float(kernels.all_finite([mx.nd.array(values)]).asnumpy()[0]) == 1.0
    values[7] = np.inf
    assert float(kernels.all_finite([mx.nd.array(values)]).asnumpy()[0]) == 0.0


def test_a_rule_without_a_kernel_runs_composed(rng):
    """Adding a rule whose maths has no body in src/rules.h yet: its optimizer runs on the
    composed backend, the kernels' code leaves it out, and 8-bit states are refused by
    name (they need a fused backend)."""
    import gc
    from mxnet import ndarray as nd
    from mxnag.kernels import cuda
    from mxnag.optim.base import Hyperparameter, MxnagOptimizer, StepRule

    def sign_step(weight, grad, mean, *, rescale_grad, clip_gradient, beta1, lr):
        mean *= beta1
        mean += (1 - beta1) * grad * rescale_grad
        weight -= lr * nd.sign(mean)
    rule = StepRule(name='signum_test', states=('mean',), shared=('rescale_grad', 'clip_gradient', 'beta1'),
                    per_tensor=('lr',), flags=(), step_scalars=(), step=sign_step)

    class SignumTest(MxnagOptimizer):
        default_learning_rate = 0.01
        hyperparameters = (Hyperparameter('beta1', 0.9, 'decay', 'Momentum.'),)

        def _scalars(self, lr, wd):
            return {'lr': lr}

        def _step_factors(self, t):
            return ()
    SignumTest.rule = rule

    def check():  # its optimizers and updaters end with it, so the class can go after
        assert not fused_cpu.supports(rule) and not cuda.supports(rule)
        assert 'signum_test' not in cuda.source(rule, *RULES.values())
        w0, grads = random_problem(rng, (5, 4), steps=3)
        w, _ = run_updater(SignumTest(learning_rate=0.1), w0, grads)
        m = np.zeros_like(w0, dtype=np.float64)
        expected = w0.astype(np.float64)
        for g in grads:
            m = 0.9 * m + 0.1 * g
            expected = expected - 0.1 * np.sign(m)
        np.testing.assert_allclose(w.asnumpy(), expected, rtol=1e-6)
        assert kernels.backend_for(mx.nd.ones((3,)), rule=rule) == 'composed'
        updater = mx.optimizer.get_updater(SignumTest(state_bits=8))
        with pytest.raises(RuntimeError, match='state_bits=8'):
            updater(0, mx.nd.ones((5000,)), mx.nd.ones((5000,)))
    try:
        check()
    finally:  # out of MxnagOptimizer's subclasses (mxnag.optim.optimizers()) again
        del SignumTest, check
        gc.collect()
    assert 'signumtest' not in mxnag.optim.optimizers()
