"""Learning from a stream (mxnag.train.online, mxnag.train.stream, recipes/mnist_stream.py):
test-then-train order, the grown output layer, replay sampling, latency per update, bad
lines on stdin, an exact resume after kill -9 mid-stream, and the live TensorBoard view."""
import json
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import mxnag  # noqa: F401  (registers the optimizers)
from mxnag.train import models, online, stream

from conftest import MNIST_DIR, ROOT

RECIPE = os.path.join(ROOT, 'recipes', 'mnist_stream.py')


def make_learner(replay=None, classes=10, seed=0):
    net = models.get_model('mlp', classes)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'adanag', {'learning_rate': 0.01})
    return online.OnlineLearner(net, trainer, mx.cpu(), replay, window=8)


def batch(rng, n=16):
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def test_every_example_is_predicted_before_it_is_learned(rng):
    learner = make_learner()
    x, y = batch(rng)
    before = learner.predict(x)
    weights = [p.data().asnumpy() for p in learner.net.collect_params().values()]
    predictions = learner.learn(x, y)
    np.testing.assert_array_equal(predictions, before)  # made by the weights before the update
    after = [p.data().asnumpy() for p in learner.net.collect_params().values()]
    assert any(not np.array_equal(a, b) for a, b in zip(weights, after))
    assert learner.seen == 16 and learner.correct == int((before == y).sum())
    # given predictions made earlier (the stdin source predicts each line as it comes)
    x2, y2 = batch(rng)
    early = learner.predict(x2)
    assert np.array_equal(learner.learn(x2, y2, predictions=early), early)
    assert learner.seen == 32 and learner.curve == [[8, pytest.approx(learner.curve[0][1])],
                                                    [16, pytest.approx(learner.curve[1][1])],
                                                    [24, pytest.approx(learner.curve[2][1])],
                                                    [32, pytest.approx(learner.curve[3][1])]]


def test_latency_is_recorded_for_every_update(rng):
    learner = make_learner()
    start = time.perf_counter()
    for _ in range(5):
        learner.learn(*batch(rng))
    assert learner.updates == 5 and len(learner.latencies_ms) == 5
    assert all(0 < ms <= (time.perf_counter() - start) * 1e3 for ms in learner.latencies_ms)
    m = learner.metrics()
    assert m['update_latency_ms']['p50'] <= m['update_latency_ms']['p95'] <= m['update_latency_ms']['p99']


def test_growing_the_output_layer_keeps_the_rows_it_knows(rng):
    net = models.get_model('lenet', 5)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 1, 28, 28)))
    old_w, old_b = net.output.weight.data().asnumpy(), net.output.bias.data().asnumpy()
    old_b[:] = rng.standard_normal(5)
    net.output.bias.set_data(mx.nd.array(old_b))
    x = mx.nd.array(rng.standard_normal((4, 1, 28, 28)))
    old_out = net(x).asnumpy()
    head = online.grow_output(net, 10, [mx.cpu()])
    assert net.output is head and head.weight.shape == (10, 500)
    np.testing.assert_array_equal(head.weight.data().asnumpy()[:5], old_w)
    np.testing.assert_array_equal(head.bias.data().asnumpy()[:5], old_b)
    assert np.abs(head.weight.data().asnumpy()[5:]).sum() > 0  # the new rows are initialised
    np.testing.assert_allclose(net(x).asnumpy()[:, :5], old_out, rtol=1e-5, atol=1e-6)
    with pytest.raises(mxnag.errors.MxnagError, match='cannot shrink to 3'):
        online.grow_output(net, 3, [mx.cpu()])


@pytest.mark.parametrize('optimizer', ['adanag', 'adam', 'sgd'])
def test_growing_while_learning_keeps_the_optimizer_states(rng, tmp_path, optimizer):
    """OnlineLearner.grow: every other parameter keeps its state objects, the output
    layer's states keep their rows and start at zero for the new classes, the step
    count goes on; the next step equals that of a new Trainer loading the grown
    trainer's saved states (MXNet's own path, which --resume takes)."""
    net = models.get_model('mlp', 3)
    mx.random.seed(1)
    net.initialize(mx.init.Xavier())
    params = {'learning_rate': 0.01, 'momentum': 0.9} if optimizer == 'sgd' else {'learning_rate': 0.01}
    learner = online.OnlineLearner(net, gluon.Trainer(net.collect_params(), optimizer, params),
                                   mx.cpu(), window=8)
    x, y = batch(rng, 8)
    for _ in range(2):
        learner.learn(x, y % 3)
    params_before = learner.trainer._params
    before = {id(params_before[i]): s for i, s in learner.trainer._updaters[0].states.items()}
    old_head = [a.asnumpy() for a in _arrays(before[id(net.output.weight)])]
    learner.grow(5, seed=3)
    states = learner.trainer._updaters[0].states
    for i, param in enumerate(learner.trainer._params):
        if param not in (net.output.weight, net.output.bias):
            assert states[i] is before[id(param)] and param in params_before
    head_index = learner.trainer._params.index(net.output.weight)
    assert net.output.weight.shape[0] == 5
    grown = [a.asnumpy() for a in _arrays(states[head_index])]
    assert len(grown) == len(old_head) == {'adanag': 3, 'adam': 2, 'sgd': 1}[optimizer]
    for old, new in zip(old_head, grown):
        if old.shape == (2,) and old.dtype == np.float64:  # adanag's step count
            np.testing.assert_array_equal(new, old)
            continue
        np.testing.assert_array_equal(new[:3], old)
        assert new.shape[0] == 5 and not new[3:].any()
    learner.trainer.save_states(str(tmp_path / 'grown.states'))
    snapshot = [p.data().copy() for p in net.collect_params().values()]
    learner.learn(x, y % 5)
    after = [p.data().asnumpy() for p in net.collect_params().values()]
    for p, value in zip(net.collect_params().values(), snapshot):
        p.set_data(value)
    reloaded = gluon.Trainer(net.collect_params(), optimizer, params)
    reloaded.load_states(str(tmp_path / 'grown.states'))
    online.OnlineLearner(net, reloaded, mx.cpu(), window=8).learn(x, y % 5)
    for a, p in zip(after, net.collect_params().values()):
        np.testing.assert_array_equal(a, p.data().asnumpy())


def test_growing_with_8bit_states_keeps_codes_and_scales(rng, tmp_path):
    """state_bits=8: the head's codes keep their rows, its scales their blocks (new
    blocks 0), and the next step equals a new Trainer's that loads the saved states."""
    net = models.get_model('mlp', 3)
    mx.random.seed(1)
    net.initialize(mx.init.Xavier())
    params = {'learning_rate': 0.01, 'state_bits': 8, 'min_8bit_size': 100}
    learner = online.OnlineLearner(net, gluon.Trainer(net.collect_params(), 'adanag', params),
                                   mx.cpu(), window=8)
    x, y = batch(rng, 8)
    for _ in range(2):
        learner.learn(x, y % 3)
    head = learner.trainer._params.index(net.output.weight)
    old = [a.asnumpy() for a in learner.trainer._updaters[0].states[head]]
    assert old[0].dtype == np.uint8 and old[0].shape == (3, 64) and old[1].shape == (1,)
    learner.grow(5, seed=3)
    new = [a.asnumpy() for a in learner.trainer._updaters[0].states[
        learner.trainer._params.index(net.output.weight)]]
    for j in (0, 2):  # codes: the old rows, zeros after
        np.testing.assert_array_equal(new[j][:3], old[j])
        assert new[j].shape == (5, 64) and not new[j][3:].any()
    for j in (1, 3):  # scales: 320 elements need 2 blocks, the first the old one's
        assert new[j].shape == (2,) and new[j][0] == old[j][0] and new[j][1] == 0
    np.testing.assert_array_equal(new[4], old[4])
    learner.trainer.save_states(str(tmp_path / 'grown.states'))
    snapshot = [p.data().copy() for p in net.collect_params().values()]
    learner.learn(x, y % 5)
    after = [p.data().asnumpy() for p in net.collect_params().values()]
    for p, value in zip(net.collect_params().values(), snapshot):
        p.set_data(value)
    reloaded = gluon.Trainer(net.collect_params(), 'adanag', params)
    reloaded.load_states(str(tmp_path / 'grown.states'))
    online.OnlineLearner(net, reloaded, mx.cpu(), window=8).learn(x, y % 5)
    for a, p in zip(after, net.collect_params().values()):
        np.testing.assert_array_equal(a, p.data().asnumpy())


def test_growing_to_as_many_classes_changes_nothing(rng):
    """A new output layer with the same rows and a new trainer with the states carried:
    the next steps are those of the learner left alone, bit for bit."""
    x, y = batch(rng, 8)
    weights = []
    for grow in (False, True):
        learner = make_learner(classes=3, seed=2)
        for step in range(4):
            if grow and step == 2:
                learner.grow(3, seed=5)
            learner.learn(x, y % 3)
        weights.append([p.data().asnumpy() for p in learner.net.collect_params().values()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def _arrays(state):
    items = state if isinstance(state, (tuple, list)) else [state]
    return [a for a in items if isinstance(a, mx.nd.NDArray)]


def test_the_reservoir_keeps_each_example_with_equal_chance():
    """Algorithm R: after 1000 offers a reservoir of 100 holds each with chance 1/10."""
    counts = np.zeros(1000)
    for seed in range(300):
        memory = online.ReplayMemory(None, None, 100, (1,), seed=seed)
        memory.add(np.arange(1000, dtype=np.float32).reshape(-1, 1), np.arange(1000))
        assert memory.filled == 100 and memory.offered == 1000
        counts[memory.stream_y[:100].astype(int)] += 1
    first, last = counts[:500].mean() / 300, counts[500:].mean() / 300
    assert abs(first - 0.1) < 0.01 and abs(last - 0.1) < 0.01


def test_replay_draws_from_kept_and_reservoir_and_its_state_round_trips():
    kept_x = np.zeros((50, 2), np.float32)
    kept_y = np.full(50, 7, np.float32)
    memory = online.ReplayMemory(kept_x, kept_y, 50, (2,), seed=3)
    memory.add(np.arange(100, dtype=np.float32).reshape(50, 2) + 1, np.full(50, 2))
    x, y, z = memory.sample(4000)  # without replacement: everything once
    assert len(y) == 100 and z is None and (y == 7).sum() == 50
    assert len({tuple(row) for row in x[y == 2]}) == 50
    draws = np.concatenate([memory.sample(10)[1] for _ in range(400)])
    assert abs((draws == 7).mean() - 0.5) < 0.05
    copy = online.ReplayMemory(None, None, 1, (2,), seed=99)
    copy.restore(memory.state(), memory.arrays())
    memory.add(np.full((20, 2), 5, np.float32), np.full(20, 5))
    copy.add(np.full((20, 2), 5, np.float32), np.full(20, 5))
    a, b = memory.sample(100), copy.sample(100)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert online.ReplayMemory(None, None, 0, (2,)).sample(5) is None


def test_balanced_memory_keeps_the_classes_even_and_its_logits():
    """Class-balanced reservoir: the kept examples fill the pool first; as new classes
    stream in, the largest classes make room, so every class ends with its share; the
    stored logits travel with their examples and round-trip through a checkpoint."""
    kept_y = np.repeat([0, 1, 2], 100).astype(np.float32)
    kept_x = kept_y[:, None].copy()
    memory = online.ReplayMemory(kept_x, kept_y, 0, (1,), seed=4, balanced=True, logits=3,
                                 kept_logits=np.tile(kept_y[:, None], (1, 3)))
    assert memory.capacity == 300 and memory.filled == 300 and len(memory.kept_y) == 0
    rng = np.random.default_rng(0)
    for _ in range(30):  # 3000 examples of classes 3-5 in a random order
        y = rng.integers(3, 6, 100).astype(np.float32)
        memory.add(y[:, None], y, np.tile(y[:, None], (1, 3)))
    counts = np.bincount(memory.stream_y.astype(int), minlength=6)
    assert counts.sum() == 300 and counts.min() >= 45 and counts.max() <= 55
    x, y, z = memory.sample(300)
    np.testing.assert_array_equal(x[:, 0], y)  # each example kept its label ...
    np.testing.assert_array_equal(z, np.tile(y[:, None], (1, 3)))  # ... and its logits
    copy = online.ReplayMemory(None, None, 0, (1,), seed=9)
    copy.restore(memory.state(), memory.arrays())
    extra = np.full(50, 5, np.float32)
    for m in (memory, copy):
        m.add(extra[:, None], extra, np.zeros((50, 3), np.float32))
    for a, b in zip(memory.sample(40), copy.sample(40)):
        np.testing.assert_array_equal(a, b)
    memory.grow_logits(5)
    assert memory.stream_z.shape == (300, 5) and np.isnan(memory.stream_z[:, 3:]).all()


def _learner_with_memory(method, seed=0, classes=4):
    net = models.get_model('mlp', classes)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    memory = online.ReplayMemory(None, None, 64, (1, 28, 28), seed=seed,
                                 logits=classes if method == 'der++' else 0)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    return online.OnlineLearner(net, trainer, mx.cpu(), memory, replay_per_update=6, window=8,
                                method=method, alpha=0.3, beta=0.7)


def test_er_ace_gives_absent_seen_classes_no_gradient_from_arriving_examples(rng):
    """ER-ACE's arriving loss: the logits of classes seen before but absent from the batch
    get no gradient from it; replayed examples' loss sees every class. Checked on the
    loss's gradient with respect to the logits, against float64 NumPy."""
    learner = _learner_with_memory('er-ace')
    x0 = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    learner.learn(x0, np.array([0, 1] * 4))  # classes 0 and 1 seen, in the memory
    x, y = rng.standard_normal((5, 1, 28, 28)).astype(np.float32), np.full(5, 2, np.float32)
    first = learner.replay.sample(6)
    terms = learner.terms(y, first, None)
    assert (terms[:5, 2:4] == online._MASKED).all() and (terms[:, 4:6] == 0).all()
    assert not terms[5:, 2:6].any()  # replayed examples: every class
    out = mx.nd.array(rng.standard_normal((11, 4)))
    out.attach_grad()
    with mx.autograd.record():
        loss = online.stream_loss(mx.nd, out, mx.nd.array(terms), 4)
    loss.backward()
    grad = out.grad.asnumpy()
    logits = out.asnumpy().astype(np.float64)

    def ce_grad(z, labels):
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(labels)), labels.astype(int)] -= 1
        return p / len(labels)
    masked = logits[:5].copy()
    masked[:, :2] = -np.inf
    want_new = ce_grad(masked, y)
    assert not grad[:5, :2].any()  # absent seen classes: exactly no gradient
    np.testing.assert_allclose(grad[:5], want_new, rtol=1e-4, atol=1e-6)  # float32 softmax
    np.testing.assert_allclose(grad[5:], ce_grad(logits[5:], first[1]), rtol=1e-4, atol=1e-6)


def test_der_plus_plus_loss_and_stored_logits(rng):
    """DER++: CE(arriving) + alpha * MSE(replayed logits, stored) + beta * CE(second draw),
    against float64 NumPy; each arriving example is stored with the logits the model gave
    it before the update."""
    learner = _learner_with_memory('der++')
    x0 = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y0 = np.array([0, 1, 2, 3] * 2, np.float32)
    before = learner.net(mx.nd.array(x0)).asnumpy()
    learner.learn(x0, y0)
    np.testing.assert_allclose(learner.replay.stream_z[:8], before, rtol=1e-5, atol=1e-6)
    y = np.full(5, 2, np.float32)
    first, second = learner.replay.sample(6), learner.replay.sample(6)
    out = mx.nd.array(rng.standard_normal((17, 4)))
    loss = online.stream_loss(mx.nd, out, mx.nd.array(learner.terms(y, first, second)), 4).asscalar()
    z = out.asnumpy().astype(np.float64)

    def ce(logits, labels):
        shifted = logits - logits.max(1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        return -logp[np.arange(len(labels)), labels.astype(int)].mean()
    want = ce(z[:5], y) + 0.3 * ((z[5:11] - first[2]) ** 2).mean() + 0.7 * ce(z[11:], second[1])
    assert abs(loss - want) <= 1e-5 * abs(want)


GOOD = {'pixels': [0] * 784, 'label': 3}
BAD_LINES = [
    ('not json', 'not JSON'),
    ('[1, 2]', 'not a JSON object'),
    (json.dumps({'pixels': [0] * 783, 'label': 3}), 'pixels: want a list of 784 integers, got a list of 783'),
    (json.dumps({'pixels': [0] * 783 + [256], 'label': 3}), 'every value must be an integer in 0-255'),
    (json.dumps({'pixels': [0] * 783 + [-1], 'label': 3}), 'every value must be an integer in 0-255'),
    (json.dumps({'pixels': [0] * 783 + [1.5], 'label': 3}), 'every value must be an integer in 0-255'),
    (json.dumps({'pixels': 'abc', 'label': 3}), 'pixels: want a list of 784 integers, got str'),
    (json.dumps({'pixels': [0] * 784, 'label': 'three'}), 'label "three" is not a class of this stream (0,1,'),
    (json.dumps({'pixels': [0] * 784, 'label': True}), 'label: want a class name or number, got True'),
    (json.dumps({'pixels': [0] * 784}), 'label: want a class name or number, got None'),
    (json.dumps({'pixels': [0] * 784, 'label': 12}), 'label 12 is not a class of this stream'),
    (json.dumps({'label': 3}), 'no image: want pixels, image (a path) or png_base64'),
    (json.dumps({'image': 'no/such.png', 'label': 3}), 'image: cannot read no/such.png'),
    (json.dumps({'png_base64': '!!', 'label': 3}), 'png_base64: not base64'),
    (json.dumps({'png_base64': 'aGVsbG8=', 'label': 3}), 'png_base64: not an image this build can decode'),
]


@pytest.mark.parametrize('line,reason', BAD_LINES)
def test_a_bad_line_is_rejected_with_its_reason(line, reason):
    known = set('0123456789')
    image, label, why = stream.parse_line(line, known)
    assert image is None and label is None and reason in why
    image, label, why = stream.parse_line(json.dumps(GOOD), known)
    assert why is None and label == '3' and image.shape == (28, 28, 1)


def test_with_grow_a_line_of_a_new_class_names_it(tmp_path):
    known = {'0', '1'}
    image, label, why = stream.parse_line(json.dumps(dict(GOOD, label='sandal')), known, grow=True)
    assert why is None and label == 'sandal' and image.shape == (28, 28, 1)
    assert stream.parse_line(json.dumps(dict(GOOD, label='sandal')), known)[2].startswith(
        'label "sandal" is not a class of this stream')
    assert stream.parse_line(json.dumps(dict(GOOD, label=' ')), known, grow=True)[2] == \
        'label: a class name cannot be empty'
    proc = subprocess.run([sys.executable, RECIPE, '--grow', '--source', 'mnist'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'grow: adds the classes that stdin lines name' in proc.stderr


@pytest.fixture(scope='module')
def mnist_lines():
    """300 test images of MNIST as stdin lines (labels 0-9)."""
    if not os.path.exists(os.path.join(MNIST_DIR, 't10k-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s' % MNIST_DIR)
    from mxnag.train import data
    images, labels = data.load('mnist', MNIST_DIR, download=False)['test']
    return [json.dumps({'pixels': images[i].ravel().tolist(), 'label': int(labels[i])}) + '\n'
            for i in range(300)]


def stream_args(tmp_path, *extra):
    return [sys.executable, RECIPE, '--source', 'stdin', '--model', 'mlp', '--classes', '0-9',
            '--reservoir', '64', '--replay-batch', '8', '--arrival-batch', '8',
            '--data-dir', MNIST_DIR, '--no-progress'] + [str(e) for e in extra]


def test_stdin_stream_predicts_each_line_and_rejects_bad_ones(tmp_path, mnist_lines):
    lines = mnist_lines[:60] + [bad + '\n' for bad, _ in BAD_LINES] + mnist_lines[60:100]
    proc = subprocess.run(stream_args(tmp_path, '--out', tmp_path / 'r.json', '--log',
                                      tmp_path / 'log.jsonl'),
                          input=''.join(lines), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(predictions) == 100 and all(0 <= p['prediction'] <= 9 for p in predictions)
    bad = len(BAD_LINES)
    assert [p['line'] for p in predictions] == list(range(1, 61)) + list(range(61 + bad, 101 + bad))
    result = json.loads((tmp_path / 'r.json').read_text())
    assert result['rejected'] == len(BAD_LINES) and result['examples_learned'] == 100
    assert result['updates'] == 13  # 12 arrival batches of 8, and the 4 left at the end
    assert len(result['update_latency_ms']) == 3 and 0 <= result['prequential_accuracy'] <= 1
    for (_, reason), number in zip(BAD_LINES, range(61, 61 + bad)):
        assert 'line %d rejected: ' % number in proc.stderr and reason in proc.stderr
    events = [json.loads(line)['event'] for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert events[0] == 'start' and events[-2:] == ['evaluation', 'end']


def test_killed_mid_stream_and_resumed_ends_with_the_same_weights(tmp_path, mnist_lines):
    """kill -9 after a checkpoint, then --resume with the input from its first line: the
    final checkpoint equals an uninterrupted run's, bit for bit."""
    _killed_and_resumed(tmp_path, mnist_lines, stream_args)


def test_a_stream_that_grows_classes_resumes_exactly(tmp_path, mnist_lines):
    """--grow: lines of classes the model does not know add them (the digits 5-9 to a
    model of 0-4, then two named classes after the kill point); killed and resumed, the
    stream ends with an uninterrupted run's weights and classes."""
    lines = mnist_lines[:200] + [
        json.dumps(dict(json.loads(line), label='ten' if k % 2 else 'eleven')) + '\n'
        for k, line in enumerate(mnist_lines[200:])]

    def args(tmp_path, *extra):
        return [a if a != '0-9' else '0-4' for a in stream_args(tmp_path, '--grow', *extra)]
    meta = _killed_and_resumed(tmp_path, lines, args)
    classes = meta['input']['class_names']
    assert classes[:5] == ['0', '1', '2', '3', '4'] and sorted(classes[5:10]) == list('56789')
    assert classes[10:] == ['eleven', 'ten'] and meta['num_classes'] == 12


def _killed_and_resumed(tmp_path, lines, make_args):
    full = subprocess.run(make_args(tmp_path, '--checkpoint-dir', tmp_path / 'a',
                                    '--checkpoint-every', 5),
                          input=''.join(lines), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(make_args(tmp_path, '--checkpoint-dir', tmp_path / 'b',
                                      '--checkpoint-every', 5),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    fed = 0
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / 'b' / 'epoch-0010.json'):  # after 10 updates
        assert time.time() < deadline and proc.poll() is None
        if fed < 200:
            proc.stdin.write(lines[fed])
            proc.stdin.flush()
            fed += 1
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fed < 200  # killed mid-stream
    resumed = subprocess.run(make_args(tmp_path, '--checkpoint-dir', tmp_path / 'b',
                                       '--checkpoint-every', 5, '--resume'),
                             input=''.join(lines), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resuming from' in resumed.stderr
    last = 'epoch-%04d' % 38  # 300 examples: 37 updates of 8 and one of 4
    a = mx.nd.load(str(tmp_path / 'a' / (last + '.params')))
    b = mx.nd.load(str(tmp_path / 'b' / (last + '.params')))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy())
    meta_a = json.loads((tmp_path / 'a' / (last + '.json')).read_text())
    meta_b = json.loads((tmp_path / 'b' / (last + '.json')).read_text())
    assert meta_a['stream']['correct'] == meta_b['stream']['correct']
    assert meta_a['position'] == meta_b['position'] == 300
    assert meta_a['input'] == meta_b['input']
    return meta_b


def test_tensorboard_shows_the_stream(tmp_path, mnist_lines):
    pytest.importorskip('tensorboardX')
    accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    proc = subprocess.run(stream_args(tmp_path, '--window', 20, '--tensorboard', tmp_path / 'tb'),
                          input=''.join(mnist_lines[:100]), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = accumulator.EventAccumulator(str(tmp_path / 'tb'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'stream/prequential_accuracy', 'stream/window_accuracy', 'stream/latency_ms_p99',
            'evaluation/test_accuracy'} <= tags
    steps = [e.step for e in events.Scalars('stream/window_accuracy')]
    assert steps == [20, 40, 60, 80, 100]


def test_compare_runs_each_optimizer_on_the_same_stream(tmp_path):
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s' % MNIST_DIR)
    proc = subprocess.run([sys.executable, RECIPE, '--model', 'mlp', '--classes', '8-9',
                           '--compare', 'adanag,sgd', '--lr', '0.002', '--data-dir', MNIST_DIR,
                           '--out-dir', str(tmp_path), '--window', '2000'],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / 'stream_compare.json').read_text())['runs']
    assert sorted(runs) == ['adanag', 'sgd']
    assert runs['adanag']['examples_learned'] == runs['sgd']['examples_learned'] == 11800
    table = (tmp_path / 'stream_compare.md').read_text()
    assert table.strip() in proc.stdout and '| adanag |' in table and '| sgd |' in table
    assert (tmp_path / 'stream_compare.png').read_bytes()[:4] == b'\x89PNG'


def test_compare_needs_a_source_it_can_read_again(tmp_path):
    proc = subprocess.run([sys.executable, RECIPE, '--source', 'stdin', '--compare', 'adanag,sgd',
                           '--out-dir', str(tmp_path)], capture_output=True, text=True, timeout=120,
                          input='')
    assert proc.returncode == 2 and 'compare: runs the same stream several times' in proc.stderr
    assert '--source' in proc.stderr.splitlines()[-1]


def test_resume_refuses_a_stream_checkpoint_of_another_version_or_settings(tmp_path, mnist_lines):
    """The stream resumes through the batch recipes' one resume: a checkpoint written by
    another mxnag version, or made with other settings, is refused with one line."""
    done = subprocess.run(stream_args(tmp_path, '--checkpoint-dir', tmp_path / 'c'),
                          input=''.join(mnist_lines[:40]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    other = subprocess.run(stream_args(tmp_path, '--checkpoint-dir', tmp_path / 'c', '--resume',
                                       '--arrival-batch', 4),
                           input=''.join(mnist_lines[:40]), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and 'made with other settings (arrival_batch: 8, now 4)' in other.stderr
    meta_path = next(p for p in (tmp_path / 'c').iterdir() if p.suffix == '.json')
    meta = json.loads(meta_path.read_text())
    meta['mxnag_version'] = '0.0.1'
    meta_path.write_text(json.dumps(meta))
    proc = subprocess.run(stream_args(tmp_path, '--checkpoint-dir', tmp_path / 'c', '--resume'),
                          input=''.join(mnist_lines[:40]), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'was written by mxnag 0.0.1' in proc.stderr


# -- task-ordered streams and the replay methods ----------------------------------------------

def six_class_folder(root, rng, per_class=20):
    """28x28 grey PNGs of six classes (a brightness and a stripe each), train/ and test/."""
    from PIL import Image
    for part in ('train', 'test'):
        for c in range(6):
            os.makedirs(os.path.join(root, part, 'c%d' % c))
            for k in range(per_class):
                image = rng.integers(0, 40, (28, 28)) + 30 * c
                image[4 * c:4 * c + 4] += 60
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                    os.path.join(root, part, 'c%d' % c, '%02d.png' % k))
    return root


def task_args(root, *extra):
    args = ['--data', 'folder:%s' % root, '--tasks', '0-1,c2+c3,4-5', '--model', 'mlp',
            '--arrival-batch', 5, '--replay-batch', 5, '--reservoir', 30, '--replay', 0,
            '--lr', 0.01, '--no-progress'] + list(extra)
    return [sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'stream.py')] + \
        [str(a) for a in args]


def test_tasks_arrive_in_order_and_are_measured_after_each(tmp_path, rng):
    root = six_class_folder(str(tmp_path / 'd'), rng)
    proc = subprocess.run(task_args(root, '--out', tmp_path / 'r.json', '--checkpoint-dir',
                                    tmp_path / 'ck', '--checkpoint-every', 4, '--keep', 100),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / 'r.json').read_text())
    table = result['tasks']
    assert table['groups'] == [['c0', 'c1'], ['c2', 'c3'], ['c4', 'c5']]
    assert [len(row['accuracies']) for row in table['per_task']] == [1, 2, 3]
    final = table['per_task'][-1]['accuracies']
    assert result['class_il_accuracy'] == pytest.approx(np.mean(final))
    for g, forgetting in enumerate(table['forgetting'][:-1]):
        history = [row['accuracies'][g] for row in table['per_task'][g:]]
        assert forgetting == pytest.approx(max(history) - history[-1])
    assert table['forgetting'][-1] is None and result['examples_learned'] == 120
    assert result['bare_step_latency_ms']['batch'] == 15  # 5 arriving, two draws of 5 (der++)
    assert result['latency_p99_ratio'] > 0
    # task order: the memory's classes grow group by group, each task's examples once
    positions = {}
    for meta_file in sorted((tmp_path / 'ck').glob('epoch-*.json')):
        meta = json.loads(meta_file.read_text())
        positions[meta['position']] = len(meta['task_rows'])
    assert positions[40] == 1 and positions[80] == 2 and positions[120] == 3
    assert positions[20] == 0 and positions[60] == 1 and positions[100] == 2


@pytest.mark.parametrize('method', ['er', 'er-ace', 'der++', 'der++ balanced'])
def test_resumed_mid_task_ends_bit_exact_with_each_method(tmp_path, rng, method):
    """A run stopped after a checkpoint in the middle of the second task (the checkpoints
    after it gone, as kill -9 leaves them) and resumed ends with the uninterrupted run's
    weights, memory, stored logits and per-task table."""
    root = six_class_folder(str(tmp_path / 'd'), rng)
    name, _, memory = method.partition(' ')
    extra = ['--method', name, '--memory', memory or 'reservoir', '--checkpoint-every', 3,
             '--keep', 100, '--baseline-every', 2 if memory else 0]  # bare steps change nothing
    full = subprocess.run(task_args(root, *extra, '--checkpoint-dir', tmp_path / 'a'),
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    import shutil
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    for path in (tmp_path / 'b').iterdir():
        if int(path.name.split('-')[1].split('.')[0]) > 12:  # 12 updates: 60 examples, mid task 2
            path.unlink()
    resumed = subprocess.run(task_args(root, *extra, '--checkpoint-dir', tmp_path / 'b', '--resume'),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resuming from' in resumed.stderr and 'epoch-0012' in resumed.stderr
    last = 'epoch-0024'
    for suffix in ('.params', '.replay'):
        a = mx.nd.load(str(tmp_path / 'a' / (last + suffix)))
        b = mx.nd.load(str(tmp_path / 'b' / (last + suffix)))
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy())
    if name == 'der++':
        assert 'stream_z' in a and a['stream_z'].shape == (30, 6)
    meta_a = json.loads((tmp_path / 'a' / (last + '.json')).read_text())
    meta_b = json.loads((tmp_path / 'b' / (last + '.json')).read_text())
    assert meta_a['task_rows'] == meta_b['task_rows'] and len(meta_a['task_rows']) == 3
    assert meta_a['stream']['correct'] == meta_b['stream']['correct']
    assert meta_a['stream']['replay'] == meta_b['stream']['replay']


def test_bad_tasks_are_named(tmp_path, rng):
    from mxnag.errors import MxnagError
    from mxnag.train import tasks
    names = ('a', 'b', 'c')
    assert tasks.parse('0-1,c', names) == [['a', 'b'], ['c']]
    assert tasks.parse('a+2,1', names) == [['a', 'c'], ['b']]
    for spec, message in (('0-1,1-2', "class b is in more than one place of '0-1,1-2'"),
                          ('0,,1', "'0,,1' has an empty group"),
                          ('0-3', "'0-3' in '0-3': the source has classes 0-2"),
                          ('dog', "'dog' in 'dog' is not a class of the source"),
                          ('2-1', "'2-1' in '2-1' is an empty range")):
        with pytest.raises(MxnagError, match=message):
            tasks.parse(spec, names)


def test_split_mnist_rows_are_stream_arguments(monkeypatch):
    """recipes/split_mnist.py's rows: the authors' hyperparameters as stream settings; a
    row's JSON (mean, std over seeds, the arguments that reproduce it); the table beside
    the published numbers."""
    from mxnag.train import cli, split_mnist
    argv = split_mnist.authors_row('der++', 5120)
    args = cli.parser_for('stream', 'doc\n\nepilog').parse_args(argv)
    assert (args.method, args.optimizer, args.lr, args.reservoir, args.replay_batch) == \
        ('der++', 'sgd', 0.1, 5120, 64)
    assert (args.der_alpha, args.der_beta, args.model, args.tasks, args.normalize, args.replay) == \
        (0.2, 0.5, 'mlp-100-100', '0-1,2-3,4-5,6-7,8-9', 'none', 0)
    assert cli.parser_for('stream', 'd\n\ne').parse_args(split_mnist.authors_row('er', 200)).lr == 0.01
    seen = []

    def fake_run(argv):
        seen.append(argv)
        seed = int(argv[argv.index('--seed') + 1])
        return {'class_il_accuracy': [0.80, 0.82, 0.84][seed], 'latency_p99_ratio': 1.1}
    monkeypatch.setattr(split_mnist, 'run_once', fake_run)
    row = split_mnist.run_row(split_mnist.authors_row('er', 200), range(3), '/data', report=lambda *a: None)
    assert seen[1][-4:] == ['--seed', '1', '--data-dir', '/data']
    assert (row['method'], row['optimizer'], row['lr'], row['buffer'], row['seeds']) == ('er', 'sgd', 0.01, 200, [0, 1, 2])
    assert row['accuracies'] == pytest.approx([80, 82, 84]) and row['mean'] == pytest.approx(82)
    assert row['std'] == pytest.approx(2.0) and row['args'] == split_mnist.authors_row('er', 200)
    table = split_mnist.markdown([row])
    assert '| er | sgd | 0.01 | 200 | reservoir | 82.00 ± 2.00 | 80.43 | +1.57 | 1.10x |' in table


def test_the_continual_learning_mlp_and_unscaled_pixels():
    from mxnag.train import run, settings, sources
    net = models.get_model('mlp-100-100', 10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((2, 1, 28, 28)))
    shapes = [p.shape for p in net.collect_params().values()]
    assert shapes == [(100, 784), (100,), (100, 100), (100,), (10, 100), (10,)]
    source = sources.Source('x', ('a', 'b'), 3, (4, 4), (0.5,) * 3, (0.2,) * 3, None, None)
    args = settings.namespace('stream', normalize='none')
    assert run.normalization(args, source) == ((0.0,) * 3, (1.0,) * 3)


@pytest.mark.parametrize('optimizer', ['adanag', 'ftrl', 'adadelta'])
def test_bare_steps_leave_every_parameter_as_it_was(optimizer):
    """The latency baseline's steps: whatever the optimizer does at learning rate 0 (ftrl
    divides by it, adadelta ignores it) and however batch normalisation's running
    statistics move, every parameter is put back."""
    from mxnet.gluon import nn
    net = nn.HybridSequential()
    net.add(nn.Dense(8, in_units=6), nn.BatchNorm(in_channels=8), nn.Dense(3, in_units=8))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    before = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    bare = online.BareSteps(net, mx.cpu(), optimizer, (6,), 3, 5)
    for _ in range(3):
        bare.step()
    for key, param in net.collect_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), before[key])
    assert bare.latency()['steps'] == 3 and bare.latency()['p99'] > 0
