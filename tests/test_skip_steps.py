"""Skipping a step on the device: an update whose finite flag (MXNet's multi_all_finite of
the gradients, an NDArray) is 0 leaves weights, states and step counts as they were, so a
run with a non-finite gradient at step k equals, bit for bit, the run in which step k was
never attempted, on every backend (fused CPU, composed, the CUDA kernels emulated on the
CPU); nothing is read on the host."""
import mxnet as mx
import numpy as np
import pytest

import mxnag  # noqa: F401  (registers the optimizers)
from mxnag.kernels import fused_cpu

from optimizers import NAMES, random_problem

STEPS = 12
BAD = 5  # the step whose gradient holds a NaN (and, for Adan, the next one's difference)
SHAPES = [(40, 7), (13,), (3, 3, 2)]


@pytest.fixture(params=['fused-cpu', 'composed', 'cuda'])
def backend(request, monkeypatch, fused_allowed):
    if request.param == 'composed':
        monkeypatch.setattr(fused_cpu, 'FORCED_OFF', True)
    elif request.param == 'cuda':
        request.getfixturevalue('emulated_gpu_path')
    else:
        request.getfixturevalue('fused')
    return request.param


def run(name, problems, skip=None, dtype='float32', late=2, **kwargs):
    """STEPS steps of a group (aggregate_num 2: groups of 2 and 1) through MXNet's Updater,
    each with its finite flag; parameter 1 starts at step ``late``. ``skip``: a step
    index that is not attempted at all. The arrays after the run."""
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.01, aggregate_num=2,
                              multi_precision=dtype == 'float16', **kwargs)
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.array(w0, dtype=dtype) for w0, _ in problems]
    for step in range(STEPS):
        if step == skip:
            continue
        ids = [k for k in range(len(problems)) if k != 1 or step >= late]
        grads = [mx.nd.array(problems[k][1][step], dtype=dtype) for k in ids]
        opt.set_finite_flag(mx.nd.multi_all_finite(*grads, num_arrays=len(grads)))
        updater(ids, grads, [weights[k] for k in ids])
    mx.nd.waitall()
    return weights, updater.states, opt


def flat_states(state):
    """A parameter's state arrays (master weight first under multi_precision), the step
    count last."""
    if isinstance(state[0], mx.nd.NDArray) and isinstance(state[1], tuple):
        return [state[0]] + list(state[1])
    return list(state)


def with_nan(rng, dtype):
    problems = [random_problem(rng, shape, steps=STEPS) for shape in SHAPES]
    bad = problems[2][1][BAD].copy()
    bad.flat[3] = np.nan
    bad.flat[0] = np.inf
    problems[2][1][BAD] = bad
    if dtype == 'float16':
        problems = [(w0.astype(np.float16), [g.astype(np.float16) for g in gs]) for w0, gs in problems]
    return problems


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('name', NAMES)
def test_a_non_finite_step_equals_the_step_never_attempted(name, dtype, backend, rng):
    problems = with_nan(rng, dtype)
    skipped, skipped_states, _ = run(name, problems, dtype=dtype)
    never, never_states, _ = run(name, problems, skip=BAD, dtype=dtype)
    for k in range(len(SHAPES)):
        got, want = flat_states(skipped_states[k]), flat_states(never_states[k])
        np.testing.assert_array_equal(skipped[k].asnumpy(), never[k].asnumpy())
        for a, b in zip(got[:-1], want[:-1]):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
        assert np.isfinite(skipped[k].asnumpy().astype(np.float32)).all()
        # the step count: one step fewer applied than attempted, read from the slot the
        # next step reads (the skipped run attempted one step more)
        attempted = STEPS - (2 if k == 1 else 0)
        count = got[-1].asnumpy()[attempted % 2]
        assert count == attempted - 1 == want[-1].asnumpy()[(attempted - 1) % 2]


@pytest.mark.parametrize('name', NAMES)
def test_flags_that_stay_1_change_nothing(name, backend, rng):
    """With every flag 1 a run equals the run without flags, bit for bit."""
    problems = [random_problem(rng, shape, steps=STEPS) for shape in SHAPES]
    flagged, flagged_states, _ = run(name, problems)
    opt = mx.optimizer.create(name, learning_rate=0.01, wd=0.01, aggregate_num=2)
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.array(w0) for w0, _ in problems]
    for step in range(STEPS):
        ids = [k for k in range(len(problems)) if k != 1 or step >= 2]
        updater(ids, [mx.nd.array(problems[k][1][step]) for k in ids], [weights[k] for k in ids])
    for a, b in zip(flagged, weights):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_updates_read_nothing_on_the_host(rng, monkeypatch, fused):
    """The flag, the step counts and the factor table stay on the device: an update with
    a flag neither reads an array nor waits for one."""
    problems = with_nan(rng, 'float32')
    opt = mx.optimizer.create('adanag', learning_rate=0.01)
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.array(w0) for w0, _ in problems]
    grads = [[mx.nd.array(g) for g in gs] for _, gs in problems]
    mx.nd.waitall()

    def no_host_read(*args, **kwargs):
        raise AssertionError('the update read an array on the host')
    for method in ('asnumpy', 'asscalar', 'wait_to_read'):
        monkeypatch.setattr(mx.nd.NDArray, method, no_host_read)
    for step in range(STEPS):
        step_grads = [g[step] for g in grads]
        opt.set_finite_flag(mx.nd.multi_all_finite(*step_grads, num_arrays=len(step_grads)))
        updater(list(range(len(weights))), step_grads, weights)
    monkeypatch.undo()
    assert all(np.isfinite(w.asnumpy()).all() for w in weights)


def test_a_flag_on_another_context_is_copied_there(rng, fused):
    """One flag for a step (e.g. computed on the first device) serves the parameters on
    every device: each context gets its own copy, still without a host read."""
    w0, grads = random_problem(rng, (30,), steps=3)
    grads[1][4] = np.nan
    results = []
    for ctx in (mx.cpu(0), mx.cpu(1)):
        opt = mx.optimizer.create('adan', learning_rate=0.01)
        w = mx.nd.array(w0, ctx=ctx)
        state = opt.create_state(0, w)
        for g in grads:
            grad = mx.nd.array(g, ctx=ctx)
            opt.set_finite_flag(mx.nd.multi_all_finite(mx.nd.array(g), num_arrays=1))  # on cpu(0)
            opt.update(0, w, grad, state)
        results.append((w.asnumpy(), state[-1].asnumpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1][3 % 2] == 2  # 3 attempted, 2 applied


def test_states_pickle_with_their_step_counts_and_resume_exactly(rng, fused):
    """save_states/load_states keep the device step counts (they are states) and the
    optimizer's attempted counts; the tables and flags are made again."""
    problems = with_nan(rng, 'float32')
    full, _, _ = run('adanag', problems)
    opt = mx.optimizer.create('adanag', learning_rate=0.01, wd=0.01, aggregate_num=2)
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.array(w0) for w0, _ in problems]
    for step in range(STEPS):
        if step == 7:  # save and restore into a new updater mid-run
            blob = updater.get_states(dump_optimizer=True)
            updater = mx.optimizer.get_updater(mx.optimizer.create('adanag'))
            updater.set_states(blob)
            opt = updater.optimizer
        ids = [k for k in range(len(problems)) if k != 1 or step >= 2]
        grads = [mx.nd.array(problems[k][1][step]) for k in ids]
        opt.set_finite_flag(mx.nd.multi_all_finite(*grads, num_arrays=len(grads)))
        updater(ids, grads, [weights[k] for k in ids])
    for a, b in zip(full, weights):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


class _Batches:
    """Fixed MNIST-shaped batches; ``poison`` batch indices of epoch 0 get a NaN pixel,
    ``drop`` ones are not yielded at all."""

    def __init__(self, n=12, poison=(), drop=()):
        rng = np.random.RandomState(0)
        self.batches = [(rng.randn(8, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 8))
                        for _ in range(n)]
        self.poison, self.drop, self.epoch = set(poison), set(drop), 0

    def __len__(self):
        return len(self.batches) - len(self.drop)

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            if i in self.drop:
                continue
            if i in self.poison:
                x = x.copy()
                x[0, 0, 3, 3] = np.nan
            yield mx.nd.array(x), mx.nd.array(y)


def _fit(name, loader, epochs=1):
    from mxnet import gluon
    from mxnag.train import loop, models
    net = models.get_model('lenet')
    mx.random.seed(3)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), name, {'learning_rate': 0.003})
    history = loop.fit(net, trainer, loader, _Batches(2), [mx.cpu()], epochs, progress=False)
    return [p.data().asnumpy() for p in net.collect_params().values()], history


@pytest.mark.parametrize('name', NAMES)
def test_the_loop_skips_on_the_device_as_if_the_batch_never_came(name, backend):
    """The training loop with a NaN at batch 4: the run equals, bit for bit, the run in
    which batch 4 never came (constant learning rate), on every backend; the epoch's
    record counts the skip and leaves the batch out of its loss and accuracy."""
    skipped, history = _fit(name, _Batches(poison={4}))
    never, clean_history = _fit(name, _Batches(drop={4}))
    for a, b in zip(skipped, never):
        np.testing.assert_array_equal(a, b)
    assert history[0]['skipped_steps'] == 1 and clean_history[0]['skipped_steps'] == 0
    assert np.isfinite(history[0]['train_loss'])
    assert history[0]['train_loss'] == clean_history[0]['train_loss']


def test_the_loop_reads_the_host_only_at_progress_points(monkeypatch, fused):
    """Inside ``fit`` the host reads values (flags, metrics) at the progress points (every
    50 batches and the epoch's end) and in the test pass, not once per step: 150 more
    batches cost at most 6 more reads."""
    from mxnag.train import loop
    reads = []
    counting_on = []
    for method in ('asnumpy', 'asscalar'):
        original = getattr(mx.nd.NDArray, method)

        def counting(self, *args, _original=original, **kwargs):
            if counting_on:
                reads.append(1)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(mx.nd.NDArray, method, counting)
    real_fit = loop.fit

    def counted_fit(*args, **kwargs):
        counting_on.append(1)
        try:
            return real_fit(*args, **kwargs)
        finally:
            counting_on.clear()
    monkeypatch.setattr(loop, 'fit', counted_fit)
    counts = []
    for batches in (100, 250):
        reads.clear()
        _, history = _fit('adanag', _Batches(n=batches))
        assert history[0]['skipped_steps'] == 0
        counts.append(len(reads))
    # 150 more batches, 3 more progress points: at most 2 reads each (flags, metrics)
    assert 0 < counts[0] and counts[1] - counts[0] <= 2 * 3, counts
