"""Learning in real time: a classifier that predicts each arriving example, then learns
from it, keeps what it knew with a replay memory, and can stop and resume mid-stream.

``OnlineLearner`` wraps any Gluon classifier and any registered optimizer (through
``gluon.Trainer``, whose optimizer states live across updates):

* ``predict(x)`` gives the labels the model predicts now;
* ``learn(x, y)`` is test-then-train: the arriving examples are predicted first (those
  predictions count in the prequential accuracy and are returned), then one update is
  made on them mixed with examples drawn from the replay memory; the latency from
  arrival to updated weights is recorded;
* ``ReplayMemory`` keeps a fixed set of earlier classes' examples and a reservoir of the
  stream's own (Vitter's algorithm R), and draws from both, with its own seeded random
  state;
* ``grow_output`` gives a network more classes, keeping the rows of those it knows;
  ``OnlineLearner.grow`` does it while learning, carrying the optimizer's states over;
* ``save``/``restore`` write and read a checkpoint in the recipes' format (parameters,
  optimizer states, the replay memory, and the stream's position, counters and random
  state in the checksummed metadata), so a resumed stream ends exactly where an
  uninterrupted one does.
"""
import time
from typing import Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from . import checkpoint, models
from ..errors import MxnagError


def grow_output(net, classes: int, contexts, seed: int = 0) -> nn.Dense:
    """Give ``net`` an output layer of ``classes`` units: the rows (weights and biases) of
    the classes it has are copied, the new ones initialised (Xavier, MXNet's RNG seeded
    with ``seed``). Returns the new layer."""
    attr = models.output_layer_name(net)
    old = getattr(net, attr)
    weight, bias = old.weight.data(contexts[0]), old.bias.data(contexts[0])
    known, features = weight.shape
    if classes < known:
        raise MxnagError('classes: the model knows %d classes, cannot shrink to %d'
                         % (known, classes), ('classes',))
    with net.name_scope():
        head = nn.Dense(classes, in_units=features)
    mx.random.seed(seed)
    head.initialize(mx.init.Xavier(), ctx=contexts)
    for ctx in contexts:
        head.weight.data(ctx)[:known] = weight.as_in_context(ctx)
        head.bias.data(ctx)[:known] = bias.as_in_context(ctx)
    setattr(net, attr, head)
    return head


def _grown_state(state, shape, step_count: bool):
    """An output layer's optimizer state for ``shape`` (more rows): each array of the old
    shape copied into zeros of the new one; an mxnag optimizer's step count (``step_count``:
    the tuple's last item) as it is."""
    def grown(array):
        if not isinstance(array, nd.NDArray) or array.shape[1:] != tuple(shape[1:]) \
                or array.shape[0] >= shape[0]:
            return array
        out = nd.zeros(shape, ctx=array.context, dtype=array.dtype)
        out[:array.shape[0]] = array
        return out
    if isinstance(state, (tuple, list)):
        items = list(state)
        kept = [items.pop()] if step_count and items else []
        return type(state)([_grown_state(s, shape, False) for s in items] + kept)
    return grown(state)


class ReplayMemory:
    """Examples to mix into every update: ``kept`` (a fixed set, e.g. of the classes the
    model learned before the stream) and a reservoir of at most ``reservoir`` examples of
    the stream itself, each arriving example with the same chance of being in it."""

    def __init__(self, kept_x: Optional[np.ndarray], kept_y: Optional[np.ndarray],
                 reservoir: int, shape: Sequence[int], seed: int = 0):
        shape = tuple(shape)
        self.kept_x = np.zeros((0,) + shape, np.float32) if kept_x is None else kept_x.astype(np.float32)
        self.kept_y = np.zeros((0,), np.float32) if kept_y is None else kept_y.astype(np.float32)
        self.capacity = reservoir
        self.stream_x = np.zeros((reservoir,) + shape, np.float32)
        self.stream_y = np.zeros((reservoir,), np.float32)
        self.filled = 0  # examples in the reservoir
        self.offered = 0  # stream examples offered to it
        self.rng = np.random.RandomState(seed)

    def __len__(self):
        return len(self.kept_y) + self.filled

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Offer the stream's examples ``x``/``y`` to the reservoir (algorithm R)."""
        for xi, yi in zip(x, y):
            self.offered += 1
            if self.filled < self.capacity:
                slot = self.filled
                self.filled += 1
            else:
                slot = self.rng.randint(self.offered)
                if slot >= self.capacity:
                    continue
            self.stream_x[slot], self.stream_y[slot] = xi, yi

    def sample(self, n: int):
        """``n`` examples drawn uniformly (with replacement) from the kept ones and the
        reservoir, or None when the memory is empty."""
        total = len(self)
        if n <= 0 or total == 0:
            return None
        picks = self.rng.randint(total, size=n)
        kept = len(self.kept_y)
        x = np.empty((n,) + self.stream_x.shape[1:], np.float32)
        y = np.empty((n,), np.float32)
        old = picks < kept
        x[old], y[old] = self.kept_x[picks[old]], self.kept_y[picks[old]]
        x[~old], y[~old] = self.stream_x[picks[~old] - kept], self.stream_y[picks[~old] - kept]
        return x, y

    def state(self) -> dict:
        """What ``restore`` needs besides the arrays (JSON-able)."""
        kind, keys, pos, has_gauss, cached = self.rng.get_state()
        return {'filled': self.filled, 'offered': self.offered, 'capacity': self.capacity,
                'rng': [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}

    def arrays(self) -> Dict[str, nd.NDArray]:
        return {'kept_x': nd.array(self.kept_x), 'kept_y': nd.array(self.kept_y),
                'stream_x': nd.array(self.stream_x[:self.filled]),
                'stream_y': nd.array(self.stream_y[:self.filled])}

    def restore(self, state: dict, arrays: Dict[str, nd.NDArray]) -> None:
        self.kept_x, self.kept_y = arrays['kept_x'].asnumpy(), arrays['kept_y'].asnumpy()
        self.capacity = state['capacity']
        shape = self.kept_x.shape[1:] if len(self.kept_x) else self.stream_x.shape[1:]
        self.stream_x = np.zeros((self.capacity,) + tuple(shape), np.float32)
        self.stream_y = np.zeros((self.capacity,), np.float32)
        self.filled, self.offered = state['filled'], state['offered']
        if self.filled:
            self.stream_x[:self.filled] = arrays['stream_x'].asnumpy()
            self.stream_y[:self.filled] = arrays['stream_y'].asnumpy()
        kind, keys, pos, has_gauss, cached = state['rng']
        self.rng.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


class OnlineLearner:
    """Test-then-train learning of ``net`` from a stream, through ``trainer``.

    ``replay``: the ``ReplayMemory`` (None: none); ``replay_per_update``: examples drawn
    from it into every update (default: as many as arrive); ``window``: the prequential
    curve's window, in examples. ``metrics()`` gives the prequential accuracy, the curve,
    latency percentiles and throughput; the counters are part of ``state()``."""

    def __init__(self, net, trainer: gluon.Trainer, context, replay: Optional[ReplayMemory] = None,
                 replay_per_update: Optional[int] = None, window: int = 1000):
        self.net, self.trainer, self.context = net, trainer, context
        self.replay = replay
        self.replay_per_update = replay_per_update
        self.window = window
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.seen = 0  # examples predicted and learned
        self.correct = 0  # of them, predicted right before learning
        self.updates = 0
        self.window_seen = self.window_correct = 0
        self.curve: List[List[float]] = []  # [examples seen, accuracy of the last window]
        self.latencies_ms: List[float] = []
        self.learning_seconds = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The labels the model predicts for ``x`` (float32, N x input shape) now."""
        out = self.net(nd.array(x, ctx=self.context))
        return out.argmax(axis=1).asnumpy().astype(np.int64)

    def learn(self, x: np.ndarray, y: np.ndarray, predictions: Optional[np.ndarray] = None,
              arrival: Optional[float] = None) -> np.ndarray:
        """Predict ``x`` (unless ``predictions`` made before are given), count them, then
        update on ``x``/``y`` and replayed examples. ``arrival``: when the examples
        arrived (``time.perf_counter()``; default now): the latency runs from there to the
        updated weights. Returns the predictions."""
        arrival = time.perf_counter() if arrival is None else arrival
        if predictions is None:
            predictions = self.predict(x)
        right = (np.asarray(predictions) == np.asarray(y).astype(np.int64))
        for ok in right:
            self.seen += 1
            self.correct += int(ok)
            self.window_seen += 1
            self.window_correct += int(ok)
            if self.window_seen == self.window:  # [examples seen, accuracy of the window]
                self.curve.append([self.seen, self.window_correct / self.window])
                self.window_seen = self.window_correct = 0
        batch_x, batch_y = x.astype(np.float32), np.asarray(y, np.float32)
        if self.replay is not None:
            drawn = self.replay.sample(len(y) if self.replay_per_update is None else self.replay_per_update)
            if drawn is not None:
                batch_x = np.concatenate([batch_x, drawn[0]])
                batch_y = np.concatenate([batch_y, drawn[1]])
        data = nd.array(batch_x, ctx=self.context)
        label = nd.array(batch_y, ctx=self.context)
        with autograd.record():
            loss = self.loss_fn(self.net(data), label)
        loss.backward()
        self.trainer.step(len(batch_y))
        nd.waitall()  # the weights are updated: the next prediction sees them
        done = time.perf_counter()
        self.latencies_ms.append((done - arrival) * 1e3)
        self.learning_seconds += done - arrival
        self.updates += 1
        if self.replay is not None:
            self.replay.add(x, y)
        return predictions

    def grow(self, classes: int, seed: int = 0) -> None:
        """Give the model ``classes`` outputs while it learns (``grow_output``), through a
        new ``gluon.Trainer`` on the same optimizer object (its settings and step counts):
        every other parameter keeps its optimizer states, the output layer's states keep
        their rows for the classes it knew and start at zero for the new ones. The new
        trainer orders the parameters as any ``gluon.Trainer`` of the net does (by name),
        so its saved states load into one (``--resume``)."""
        old_params, updater = self.trainer._params, self.trainer._updaters[0]
        old = getattr(self.net, models.output_layer_name(self.net))
        head = grow_output(self.net, classes, [self.context], seed)
        successor = {id(old.weight): head.weight, id(old.bias): head.bias}
        optimizer = self.trainer._optimizer
        trainer = gluon.Trainer(self.net.collect_params(), optimizer, kvstore=None)
        # a Trainer given an optimizer object takes its rescale_grad, which step() has
        # set to scale / batch size, as its scale
        trainer._scale = self.trainer._scale
        position = {id(p): i for i, p in enumerate(trainer._params)}
        moved = {i: position[id(successor.get(id(p), p))] for i, p in enumerate(old_params)}
        step_count = getattr(optimizer, 'rule', None) is not None  # mxnag: the last state
        new_updater = trainer._updaters[0]
        for index, state in updater.states.items():
            if id(old_params[index]) in successor:
                state = _grown_state(state, trainer._params[moved[index]].shape, step_count)
            new_updater.states[moved[index]] = state
        new_updater.states_synced = {moved[i]: v for i, v in updater.states_synced.items()}
        for key, counts in list(optimizer._all_index_update_counts.items()):
            remapped = {moved.get(i, i): n for i, n in counts.items()}
            optimizer._all_index_update_counts[key] = remapped
            if counts is optimizer._index_update_count:
                optimizer._index_update_count = remapped
        if hasattr(optimizer, '_arrays'):  # mxnag: arrays cached per index
            optimizer._arrays = {}
        self.trainer = trainer
        self.net.hybridize()

    def metrics(self) -> dict:
        """Prequential accuracy, the windowed curve, update latency percentiles (ms) and
        examples learned per second of learning."""
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {'prequential_accuracy': self.correct / self.seen if self.seen else float('nan'),
                'prequential_curve': [list(point) for point in self.curve],
                'update_latency_ms': {'p50': float(np.percentile(lat, 50)),
                                      'p95': float(np.percentile(lat, 95)),
                                      'p99': float(np.percentile(lat, 99))},
                'examples_per_second': self.seen / self.learning_seconds if self.learning_seconds else 0.0,
                'examples_learned': self.seen, 'updates': self.updates}

    # -- checkpoints ---------------------------------------------------------------
    def state(self) -> dict:
        """The learner's counters and the replay memory's state (JSON-able)."""
        return {'seen': self.seen, 'correct': self.correct, 'updates': self.updates,
                'window_seen': self.window_seen, 'window_correct': self.window_correct,
                'curve': self.curve, 'latencies_ms': self.latencies_ms,
                'learning_seconds': self.learning_seconds,
                'replay': None if self.replay is None else self.replay.state()}

    def save(self, prefix: str, meta: dict) -> str:
        """Write checkpoint ``prefix`` (``P.params``, ``P.states``, ``P.replay``, ``P.json``
        last, with ``meta`` and ``state()`` under ``'stream'``); returns the prefix."""
        def save_states(path):
            checkpoint.write_file(path, self.trainer.save_states)
            files = [path]
            if self.replay is not None:
                replay_path = checkpoint.prefix_of(path) + '.replay'
                arrays = self.replay.arrays()
                checkpoint.write_file(replay_path, lambda tmp: nd.save(tmp, arrays))
                files.append(replay_path)
            return files
        return checkpoint.save(prefix, self.net, dict(meta, stream=self.state()), self.trainer,
                               save_states)

    def restore(self, prefix: str, optimizer_name: str) -> dict:
        """Load checkpoint ``prefix`` (verified) into this learner; returns its metadata."""
        meta = checkpoint.read_meta(prefix, need_states=True)
        self.net.load_parameters(prefix + '.params', ctx=[self.context])
        checkpoint.load_trainer_states(self.trainer, prefix + '.states', optimizer_name)
        stream = meta['stream']
        for key in ('seen', 'correct', 'updates', 'window_seen', 'window_correct', 'curve',
                    'latencies_ms', 'learning_seconds'):
            setattr(self, key, stream[key])
        if self.replay is not None:
            if stream['replay'] is None:
                raise MxnagError('%s: a checkpoint of a stream without replay' % (prefix + '.json'))
            self.replay.restore(stream['replay'], nd.load(prefix + '.replay'))
        return meta


def evaluate_classes(net, images: np.ndarray, labels: np.ndarray, context,
                     batch: int = 1000) -> float:
    """Accuracy of ``net`` on ``images`` (N x 1 x 28 x 28, standardised)/``labels``;
    nan for no images."""
    if len(labels) == 0:
        return float('nan')
    right = 0
    for start in range(0, len(labels), batch):
        out = net(nd.array(images[start:start + batch], ctx=context))
        right += int((out.argmax(axis=1).asnumpy() == labels[start:start + batch]).sum())
    return right / len(labels)

