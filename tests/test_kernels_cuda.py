"""The CUDA kernels (src/fused_cuda.cu with the entry points cuda.py writes) without a
GPU: compiled with nvcc, their mx.rtc signatures and argument lists against each other
and the source, the launches the optimizers make (mx.rtc replaced by a recorder), and
their maths run on the CPU through tests/cuda_host_emulation.cc against the float64
references; through CuPy where a GPU is present."""
import shutil
import subprocess

import mxnet as mx
import numpy as np
import pytest

import mxnag  # noqa: F401  (registers the optimizers)
from mxnag.kernels import cuda

from conftest import LARGE
from optimizers import (BY_NAME, CASES, FLOAT32_BOUND, FLOAT64_BOUND, NAMES, RULES, STEPS,
                        check_aggregated_groups, random_problem, run_updater)
from reference import relative_error

pytestmark = pytest.mark.usefixtures('fused_allowed')


def test_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        pytest.skip('nvcc not found')
    source, ptx = tmp_path / 'fused.cu', tmp_path / 'fused.ptx'
    source.write_text(cuda.source(*RULES.values()))
    subprocess.run([nvcc, '--ptx', str(source), '-o', str(ptx)], check=True)
    entries = [line.split()[2].split('(')[0] for line in ptx.read_text().splitlines()
               if line.startswith('.visible .entry')]
    assert sorted(entries) == sorted(cuda.kernel_names(*RULES.values()))
    assert len(entries) == len(RULES) * len(cuda.KINDS) * len(cuda.COUNTS)


class _FakeArray:
    """Stands for an array in kernel_arguments (only its dtype is read)."""

    def __init__(self, dtype, label=''):
        self.dtype = np.dtype(dtype)
        self.label = label


SHARED = {'rescale_grad': 0.5, 'clip_gradient': None, 'beta1': 0.9, 'beta2': 0.99, 'beta3': 0.9,
          'epsilon': 1e-8, 'one_minus_beta1': 0.1, 'one_minus_beta2': 0.01, 'one_minus_beta3': 0.1}


@pytest.mark.parametrize('count', cuda.COUNTS)
def test_cuda_arguments_match_signatures(count):
    """What mx.rtc is told (the signature) and what it gets (the arguments) agree with
    each other and with the entry points in the source, in count, order, names and types:
    each tensor's arrays, then the shared scalars, each tensor's scalars, each size."""
    source = cuda.source(*RULES.values())
    scalar_types = {'float': np.float32, 'double': np.float64, 'int': np.int32, 'int64_t': np.int64}
    for rule in RULES.values():
        for dtype in ('float32', 'float64', 'float16'):
            name = cuda.kernel_name(rule, dtype, count)
            signature = [part.strip() for part in cuda.kernel_signature(rule, dtype, count).split(',')]
            state_dtype = 'float32' if dtype == 'float16' else dtype
            per_tensor = rule.per_tensor
            tensors = [('grad%d' % k, _FakeArray(state_dtype, 'weight%d' % k),
                        ['%s%d' % (state, k) for state in rule.states],
                        _FakeArray('float16', 'weight16%d' % k) if dtype == 'float16' else None,
                        1000 + k, {n: 10 * k + j + 1 for j, n in enumerate(per_tensor)},
                        'step%d' % k, k % 2)
                       for k in range(count)]
            args = cuda.kernel_arguments(rule, tensors, SHARED, 'flag', 'table', 77)
            assert len(args) == len(signature), name
            labels = [getattr(a, 'label', a) for a in args]
            # arrays: each tensor's, in declaration order, by name
            pointers = [(label, d.split('*')[-1].strip()) for label, d in zip(labels, signature) if '*' in d]
            assert [label for label, _ in pointers] == [
                x for k in range(count) for x in (['grad%d' % k, 'weight%d' % k]
                                                  + ['%s%d' % (st, k) for st in rule.states]
                                                  + (['weight16%d' % k] if dtype == 'float16' else [])
                                                  + ['step%d' % k])] + ['flag', 'table']
            assert [declared for _, declared in pointers] == [
                x + ('_%d' % k if count > 1 else '') for k in range(count)
                for x in ['grad', 'weight'] + list(rule.states)
                + (['weight16'] if dtype == 'float16' else []) + ['step']] + ['flag', 'table']
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
                            expected = bool(10 * k + j + 1) if n in rule.flags else 10 * k + j + 1
                            assert arg == expected, (name, param)
                    if param == 'n' + suffix:
                        assert arg == 1000 + k
                    if param == 'step_slot' + suffix:
                        assert arg == k % 2
                if param == 'table_rows':
                    assert arg == 77
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

    monkeypatch.setattr(cuda, '_MODULES', {})
    assert not cuda.available(RULES['adanag'])  # the CPU build: mx.rtc cannot compile
    monkeypatch.setattr(cuda._MODULES['adanag'], 'value', Module())
    monkeypatch.setattr(cuda, '_KERNELS', {})
    w32, w16, wa, wb = (mx.nd.ones((3, 4)), mx.nd.ones((5,), dtype='float16'), mx.nd.ones((700,)),
                        mx.nd.ones((2,)))
    master = mx.nd.ones((5,))
    states32 = (mx.nd.zeros((3, 4)), mx.nd.zeros((3, 4)))
    states16 = (mx.nd.zeros((5,)), mx.nd.zeros((5,)))
    states_a, states_b = (mx.nd.zeros((700,)), mx.nd.zeros((700,))), (mx.nd.zeros((2,)), mx.nd.zeros((2,)))
    steps = [mx.nd.zeros((2,), dtype='float64') for _ in range(4)]
    flag, table = mx.nd.ones((1,)), mx.nd.ones((9, 3), dtype='float64')
    cuda.update(RULES['adanag'], [w32, w16, wa, wb], [w32, w16, wa, wb],
                [states32, states16, states_a, states_b], [None, master, None, None],
                {'rescale_grad': 0.5, 'clip_gradient': None, 'beta1': 0.9, 'beta2': 0.999,
                 'epsilon': 1e-8, 'one_minus_beta1': 0.1, 'one_minus_beta2': 0.001},
                {'wd_into_grad': [0.0, 0.1, 0.2, 0.3], 'weight_scale': [0.99, 1.0, 0.98, 0.97],
                 'grad_coef': [1e-3, 2e-3, 3e-3, 4e-3], 'mean_coef': [1e-2, 2e-2, 3e-2, 4e-2],
                 'var_scale': [1.5, 2.5, 3.5, 4.5]},
                steps, [0, 1, 0, 1], flag, table)
    assert [name for name, _ in kernels_made] == ['mxnag_adanag_f32_x2', 'mxnag_adanag_f32',
                                                  'mxnag_adanag_f16mp']
    assert kernels_made[2][1] == cuda.kernel_signature(RULES['adanag'], 'float16')
    (_, args0, ctx0, grid0, _), (_, args1, _, grid1, _), (_, args2, _, _, block2) = launches
    assert args0[1] is w32 and args0[2:4] == list(states32) and args0[4] is steps[0]
    shared = len(RULES['adanag'].shared)  # then the flag, the table and its rows
    assert args0[6] is wa and args0[9] is steps[2] and args0[10 + shared:12 + shared] == [flag, table]
    assert args0[12 + shared] == 9 and args0[-2:] == [12, 700] and grid0 == (3, 2, 1)
    assert args0[-4] == np.float32(3.5) and args0[-10] == np.float32(1.5)  # var_scale of wa, w32
    assert args0[-3] == 0 and args0[-9] == 0  # the slots of wa and w32
    assert args1[1] is wb and args1[-1] == 2 and args1[-2] == 1 and grid1 == (1, 1, 1)
    assert args2[1] is master and args2[4] is w16 and args2[5] is steps[1] and args2[-1] == 5
    assert args2[6] == np.float32(0.5) and args2[7] == np.float32(-1.0)  # rescale, clip off
    assert args2[-3] == np.float32(2.5) and args2[-2] == 1 and ctx0 == w32.context
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


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', ['float32', 'float64', 'float16'])
@pytest.mark.parametrize('count', [1, 4])
def test_cuda_kernels_under_cupy_match_reference(name, dtype, count, rng):
    """The CUDA source, run by CuPy with the optimizer's own coefficients and the argument
    lists mx.rtc gets (one tensor, or four of different sizes in one launch), against the
    float64 references."""
    cupy = _cupy_or_skip()
    rule = BY_NAME[name].cls.rule
    kernel = cupy.RawModule(code=cuda.source(rule)).get_function(cuda.kernel_name(rule, dtype, count))
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.02, clip_gradient=2.0)
    state_dtype = np.float32 if dtype == 'float16' else dtype
    problems, tensors = [], []
    flag = cupy.ones(1, cupy.float32)
    table = cupy.asarray(np.array([opt._step_factors(t) for t in range(1, STEPS + 1)], np.float64))
    for shape in GROUP_SHAPES[:count]:
        w0, grads = random_problem(rng, shape)
        if dtype == 'float16':
            w0, grads = w0.astype(np.float16), [g.astype(np.float16) for g in grads]
        problems.append((w0, grads))
        tensors.append([None, cupy.asarray(w0.astype(state_dtype)),
                        [cupy.zeros(w0.shape, state_dtype) for _ in rule.states],
                        cupy.asarray(w0) if dtype == 'float16' else None, w0.size, None,
                        cupy.zeros(2, cupy.float64), 0])
    coefs = opt._scalars(0.01, 0.02)
    for step in range(STEPS):
        for tensor, (_, grads) in zip(tensors, problems):
            tensor[0], tensor[5], tensor[7] = cupy.asarray(grads[step].astype(dtype)), coefs, step % 2
        grid, block = cuda.launch_shape([tensor[4] for tensor in tensors])
        kernel(grid, block, tuple(cuda.kernel_arguments(rule, tensors, opt._shared_coefficients(),
                                                        flag, table, STEPS)))
    bound = FLOAT64_BOUND if dtype == 'float64' else FLOAT32_BOUND
    for (w0, grads), (_, weight, _, weight16, _, _) in zip(problems, tensors):
        ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
        assert relative_error(w0, cupy.asnumpy(weight), ref) < bound
        if weight16 is not None:
            np.testing.assert_array_equal(cupy.asnumpy(weight16), cupy.asnumpy(weight).astype(np.float16))


# The CUDA kernels on the CPU: fused_cuda.cu compiled by the C++ compiler through
# tests/cuda_host_emulation.cc, which runs a launch's threads one after another. With
# mx.rtc replaced by a stand-in that launches there, CPU weights take the GPU path of the
# optimizers whole: coefficients, kernel choice, signatures, argument lists and the
# kernels' own maths, checked against the float64 references where no GPU is lent.

def test_emulation_covers_every_kernel(cuda_emulation):
    names = cuda_emulation.mxnag_emulated_kernels().decode().strip(',').split(',')
    assert names == cuda.kernel_names(*RULES.values())
    assert len(names) == len(RULES) * len(cuda.KINDS) * len(cuda.COUNTS)


@pytest.mark.parametrize('name,case', CASES)
@pytest.mark.parametrize('max_blocks', [cuda.MAX_BLOCKS, 3])
def test_cuda_path_emulated_matches_reference(name, case, max_blocks, rng, emulated_gpu_path,
                                              monkeypatch):
    """Every option set of test_optim, float32, through the GPU path; with 3 blocks the
    grid-stride loops cover 98 elements per thread (each must be updated exactly once)."""
    monkeypatch.setattr(cuda, 'MAX_BLOCKS', max_blocks)
    kwargs, ref_kwargs = BY_NAME[name].options[case]
    w0, grads = random_problem(rng, LARGE)
    w, _ = run_updater(mx.optimizer.create(name, learning_rate=0.01, **kwargs), w0, grads)
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, **ref_kwargs)
    assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND
    assert len(emulated_gpu_path) == STEPS
    kernel, grid, sizes = emulated_gpu_path[-1]
    assert kernel == cuda.kernel_name(BY_NAME[name].cls.rule, 'float32') and sizes == [w0.size]
    assert grid == (min(max_blocks, -(-w0.size // cuda.THREADS_PER_BLOCK)), 1, 1)


@pytest.mark.parametrize('name', NAMES)
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
    ref = BY_NAME[name].reference(w0, grads, [0.01] * STEPS, wd=0.02, clip=2.0)
    if dtype == 'float16':
        master = updater.states[0][0]
        assert master.dtype == np.float32
        assert relative_error(w0, master.asnumpy(), ref) < FLOAT32_BOUND
        np.testing.assert_array_equal(w.asnumpy(), master.asnumpy().astype(np.float16))
    else:
        assert relative_error(w0, w.asnumpy(), ref) < FLOAT64_BOUND
    assert {kernel for kernel, _, _ in emulated_gpu_path} == {cuda.kernel_name(BY_NAME[name].cls.rule, dtype)}


@pytest.mark.parametrize('name', NAMES)
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
        'mxnag_%s_%s%s' % (BY_NAME[name].cls.rule.name, suffix, tail) for tail in ('_x4', '_x2', '')}


@pytest.mark.parametrize('name', NAMES)
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
        ref = BY_NAME[name].reference(w0, grads, [0.01] * 10, wd=0.05)
        assert relative_error(w0, w.asnumpy(), ref) < FLOAT32_BOUND


def _coded_run(name, dtype, shapes, steps, rng, aggregate_num=4):
    """Weights, states and launches of ``steps`` 8-bit steps of a group of ``shapes``."""
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.01, state_bits=8, min_8bit_size=1000,
                              aggregate_num=aggregate_num, multi_precision=dtype == 'float16')
    updater = mx.optimizer.get_updater(opt)
    problems = [random_problem(np.random.default_rng(rng), shape, steps=steps) for shape in shapes]
    weights = [mx.nd.array(w0, dtype=dtype) for w0, _ in problems]
    for step in range(steps):
        updater(list(range(len(shapes))), [mx.nd.array(gs[step], dtype=dtype) for _, gs in problems],
                weights)
    return weights, updater.states


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_cuda_path_emulated_8bit_states_equal_the_cpu_operator(name, dtype, emulated_gpu_path,
                                                                monkeypatch):
    """8-bit states on the GPU path (a thread block per 256 codes, the block's maximum in
    shared memory): the same weights, scales and codes as the CPU operator, up to float32
    rounding (a code one apart where the value sits on a midpoint), for a group of two
    8-bit tensors (one of them with a partial last block) and a float32 one; with 3
    blocks the grid-stride loop covers several blocks of codes per thread block."""
    monkeypatch.setattr(cuda, 'MAX_BLOCKS', 3)
    shapes = [(40, 50), (1300,), (7, 3)]
    gpu_weights, gpu_states = _coded_run(name, dtype, shapes, 5, 7)
    kernels = {kernel for kernel, _, _ in emulated_gpu_path}
    rule = BY_NAME[name].cls.rule
    suffix = 'f16mp' if dtype == 'float16' else 'f32'
    assert kernels == {'mxnag_%s_%sq8_x2' % (rule.name, suffix), 'mxnag_%s_%s' % (rule.name, suffix)}
    monkeypatch.undo()  # the CPU operator
    cpu_weights, cpu_states = _coded_run(name, dtype, shapes, 5, 7)
    for k in range(3):
        gpu, cpu = gpu_states[k], cpu_states[k]
        gpu_weight, cpu_weight = gpu_weights[k], cpu_weights[k]
        if dtype == 'float16':  # the master weights (a float16 weight may round apart)
            gpu_weight, cpu_weight, gpu, cpu = gpu[0], cpu[0], gpu[1], cpu[1]
        np.testing.assert_allclose(gpu_weight.asnumpy(), cpu_weight.asnumpy(), rtol=1e-4, atol=1e-5)
        for a, b in zip(gpu[:-1], cpu[:-1]):
            a, b = a.asnumpy(), b.asnumpy()
            if a.dtype == np.uint8:
                differ = a != b
                assert differ.mean() < 5e-3
                assert np.all(np.abs((a[differ].astype(int) & 127) - (b[differ].astype(int) & 127)) <= 1)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
