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
    """Examples to mix into every update.

    ``reservoir``-style (the default): ``kept`` is a fixed set (e.g. of the classes the
    model learned before the stream) and a reservoir holds at most ``reservoir`` examples
    of the stream itself, each arriving example with the same chance of being in it
    (Vitter's algorithm R). ``balanced``: one pool of ``len(kept) + reservoir`` examples,
    the kept ones first, that keeps the classes balanced as the stream brings new ones
    (class-balanced reservoir sampling, Chrysakis & Moens, ICML 2020): a full pool makes
    room for an example of a class that is not among its largest by replacing a random
    example of a largest class; an example of a largest class replaces a random one of
    its own class with chance (stored / seen) of that class.

    ``logits``: the width of the logits stored with each example (DER++; 0: none); the
    kept examples' are ``kept_logits``. ``sample(n)`` draws without replacement (at most
    as many as the memory holds). Its random state is its own and part of ``state()``."""

    def __init__(self, kept_x: Optional[np.ndarray], kept_y: Optional[np.ndarray],
                 reservoir: int, shape: Sequence[int], seed: int = 0, balanced: bool = False,
                 logits: int = 0, kept_logits: Optional[np.ndarray] = None):
        shape = tuple(shape)
        kept_x = np.zeros((0,) + shape, np.float32) if kept_x is None else kept_x.astype(np.float32)
        kept_y = np.zeros((0,), np.float32) if kept_y is None else kept_y.astype(np.float32)
        kept_z = np.full((len(kept_y), logits), np.nan, np.float32) if kept_logits is None \
            else kept_logits.astype(np.float32)  # NaN: no stored logit (left out of DER++)
        self.balanced = balanced
        self.capacity = reservoir + (len(kept_y) if balanced else 0)
        self.stream_x = np.zeros((self.capacity,) + shape, np.float32)
        self.stream_y = np.zeros((self.capacity,), np.float32)
        self.stream_z = np.zeros((self.capacity, logits), np.float32)
        self.filled = 0  # examples in the pool
        self.offered = 0  # stream examples offered to it
        self.seen: Dict[int, int] = {}  # class -> examples of it offered (and kept)
        self.rng = np.random.RandomState(seed)
        if balanced:  # the kept examples are the pool's first content
            self.kept_x, self.kept_y, self.kept_z = kept_x[:0], kept_y[:0], kept_z[:0]
            self.filled = len(kept_y)
            self.stream_x[:self.filled], self.stream_y[:self.filled] = kept_x, kept_y
            self.stream_z[:self.filled] = kept_z
            for label in kept_y.astype(np.int64):
                self.seen[int(label)] = self.seen.get(int(label), 0) + 1
        else:
            self.kept_x, self.kept_y, self.kept_z = kept_x, kept_y, kept_z

    def __len__(self):
        return len(self.kept_y) + self.filled

    @property
    def logits(self) -> int:
        return self.stream_z.shape[1]

    def add(self, x: np.ndarray, y: np.ndarray, z: Optional[np.ndarray] = None) -> None:
        """Offer the stream's examples ``x``/``y`` (and their logits ``z``) to the pool."""
        for k, (xi, yi) in enumerate(zip(x, y)):
            self.offered += 1
            label = int(yi)
            self.seen[label] = self.seen.get(label, 0) + 1
            slot = self._balanced_slot(label) if self.balanced else self._reservoir_slot()
            if slot is None:
                continue
            self.stream_x[slot], self.stream_y[slot] = xi, yi
            if self.logits:
                self.stream_z[slot] = z[k]

    def _reservoir_slot(self):
        if self.filled < self.capacity:
            self.filled += 1
            return self.filled - 1
        slot = self.rng.randint(self.offered)
        return slot if slot < self.capacity else None

    def _balanced_slot(self, label):
        if self.filled < self.capacity:
            self.filled += 1
            return self.filled - 1
        if self.capacity == 0:
            return None
        labels = self.stream_y[:self.filled].astype(np.int64)
        counts = np.bincount(labels, minlength=label + 1)
        largest = counts.max()
        if counts[label] < largest:  # room for a class that is not among the largest
            victims = np.flatnonzero(counts == largest)
            victim = victims[self.rng.randint(len(victims))]
        elif self.rng.random_sample() * self.seen[label] < counts[label]:
            victim = label
        else:
            return None
        members = np.flatnonzero(labels == victim)
        return int(members[self.rng.randint(len(members))])

    def sample(self, n: int):
        """``(x, y, logits)`` of ``min(n, len(self))`` examples drawn without replacement
        from the kept ones and the pool (``logits`` None unless stored), or None when the
        memory is empty."""
        total = len(self)
        if n <= 0 or total == 0:
            return None
        picks = self.rng.choice(total, size=min(n, total), replace=False)
        kept = len(self.kept_y)
        old = picks < kept
        x = np.concatenate([self.kept_x[picks[old]], self.stream_x[picks[~old] - kept]])
        y = np.concatenate([self.kept_y[picks[old]], self.stream_y[picks[~old] - kept]])
        z = np.concatenate([self.kept_z[picks[old]], self.stream_z[picks[~old] - kept]]) \
            if self.logits else None
        return x, y, z

    def classes(self) -> List[int]:
        """The classes the memory holds examples of."""
        return sorted(set(self.kept_y.astype(np.int64).tolist()) |
                      set(self.stream_y[:self.filled].astype(np.int64).tolist()))

    def grow_logits(self, width: int) -> None:
        """Stored logits for a model of ``width`` outputs (``OnlineLearner.grow``): the
        new classes' columns are NaN, which the distillation loss leaves out."""
        if not self.logits or width <= self.logits:
            return
        def wider(z):
            out = np.full((len(z), width), np.nan, np.float32)
            out[:, :z.shape[1]] = z
            return out
        self.kept_z, self.stream_z = wider(self.kept_z), wider(self.stream_z)

    def state(self) -> dict:
        """What ``restore`` needs besides the arrays (JSON-able)."""
        kind, keys, pos, has_gauss, cached = self.rng.get_state()
        return {'filled': self.filled, 'offered': self.offered, 'capacity': self.capacity,
                'balanced': self.balanced, 'seen': sorted(self.seen.items()),
                'rng': [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}

    def arrays(self) -> Dict[str, nd.NDArray]:
        arrays = {'kept_x': nd.array(self.kept_x), 'kept_y': nd.array(self.kept_y),
                  'stream_x': nd.array(self.stream_x[:self.filled]),
                  'stream_y': nd.array(self.stream_y[:self.filled])}
        if self.logits:
            arrays.update(kept_z=nd.array(self.kept_z), stream_z=nd.array(self.stream_z[:self.filled]))
        return arrays

    def restore(self, state: dict, arrays: Dict[str, nd.NDArray]) -> None:
        self.kept_x, self.kept_y = arrays['kept_x'].asnumpy(), arrays['kept_y'].asnumpy()
        self.capacity, self.balanced = state['capacity'], state.get('balanced', False)
        shape = self.kept_x.shape[1:] if len(self.kept_x) else self.stream_x.shape[1:]
        width = arrays['stream_z'].shape[1] if 'stream_z' in arrays else 0
        self.stream_x = np.zeros((self.capacity,) + tuple(shape), np.float32)
        self.stream_y = np.zeros((self.capacity,), np.float32)
        self.stream_z = np.zeros((self.capacity, width), np.float32)
        self.kept_z = arrays['kept_z'].asnumpy() if width else np.zeros((len(self.kept_y), 0), np.float32)
        self.filled, self.offered = state['filled'], state['offered']
        self.seen = {int(c): int(n) for c, n in state.get('seen', [])}
        if self.filled:
            self.stream_x[:self.filled] = arrays['stream_x'].asnumpy()
            self.stream_y[:self.filled] = arrays['stream_y'].asnumpy()
            if width:
                self.stream_z[:self.filled] = arrays['stream_z'].asnumpy()
        kind, keys, pos, has_gauss, cached = state['rng']
        self.rng.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def stream_loss(F, out, terms, classes):  # noqa: N803 (Gluon's F)
    """The update's loss from the logits ``out`` (rows: examples) and ``terms`` (see
    ``OnlineLearner.terms``): sum over rows of weight x cross-entropy of the masked
    logits, plus sum over entries of weight x squared error to the stored logits."""
    label = F.reshape(F.slice_axis(terms, axis=1, begin=0, end=1), shape=(-1,))
    weight = F.reshape(F.slice_axis(terms, axis=1, begin=1, end=2), shape=(-1,))
    mask = F.slice_axis(terms, axis=1, begin=2, end=2 + classes)
    stored = F.slice_axis(terms, axis=1, begin=2 + classes, end=2 + 2 * classes)
    squared = F.slice_axis(terms, axis=1, begin=2 + 2 * classes, end=2 + 3 * classes)
    cross_entropy = -F.pick(F.log_softmax(out + mask, axis=1), label, axis=1)
    return F.sum(cross_entropy * weight) + F.sum(F.square(out - stored) * squared)


class _Objective(gluon.HybridBlock):
    """``net`` and ``stream_loss``: one graph, one call forward and one backward."""

    def __init__(self, net, classes):
        super().__init__(prefix='')
        self.net, self.classes = net, classes  # net's parameters stay its own

    def hybrid_forward(self, F, x, terms):  # noqa: N802,N803 (Gluon's names)
        out = self.net(x)
        return stream_loss(F, out, terms, self.classes), out


def _train_mode_free(net) -> bool:
    """Whether ``net`` computes the same in training as in inference (no batch
    normalisation, no dropout)."""
    blocks, seen = [net], set()
    while blocks:
        block = blocks.pop()
        if id(block) in seen:
            continue
        seen.add(id(block))
        if any(word in type(block).__name__ for word in ('BatchNorm', 'Dropout', 'InstanceNorm')):
            return False
        blocks.extend(block._children.values())
    return True


METHODS = ('er', 'er-ace', 'der++')
_MASKED = -1e9  # added to a logit ER-ACE leaves out of a loss: its softmax share is 0


class OnlineLearner:
    """Test-then-train learning of ``net`` from a stream, through ``trainer``.

    ``replay``: the ``ReplayMemory`` (None: none); ``replay_per_update``: examples drawn
    from it into every update (default: as many as arrive); ``window``: the prequential
    curve's window, in examples. ``method`` says how replayed examples enter the loss:

    * ``er`` (experience replay): the mean cross-entropy of the arriving and the replayed
      examples together;
    * ``er-ace`` (Caccia et al., ICLR 2022, asymmetric cross-entropy): the arriving
      examples' cross-entropy over only the classes in their batch and the classes not yet
      seen, plus the replayed examples' over all classes (each a mean);
    * ``der++`` (Buzzega et al., NeurIPS 2020): the arriving examples' cross-entropy, plus
      ``alpha`` times the mean squared error between the logits of replayed examples and
      the logits stored with them, plus ``beta`` times the cross-entropy of a second,
      independent draw of replayed examples; each arriving example is stored with the
      logits the model gave it (the memory must store logits).

    All examples of an update go through the network in one forward pass: for a network
    without batch statistics the same as separate passes; with batch normalisation the
    statistics are the whole update's (the DER paper's code makes a pass per draw).
    ``metrics()`` gives the prequential accuracy, the curve, latency percentiles and
    throughput; the counters are part of ``state()``."""

    def __init__(self, net, trainer: gluon.Trainer, context, replay: Optional[ReplayMemory] = None,
                 replay_per_update: Optional[int] = None, window: int = 1000, method: str = 'er',
                 alpha: float = 0.5, beta: float = 0.5):
        if method not in METHODS:
            raise MxnagError('method: %r is not one of %s' % (method, ', '.join(METHODS)), ('method',))
        if method == 'der++' and replay is not None and not replay.logits:
            raise MxnagError('method: der++ needs a replay memory that stores logits', ('method',))
        self.net, self.trainer, self.context = net, trainer, context
        self.replay = replay
        self.replay_per_update = replay_per_update
        self.window = window
        self.method, self.alpha, self.beta = method, alpha, beta
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.seen_classes = set(replay.classes()) if replay is not None else set()
        self.one_pass = _train_mode_free(net)  # predictions from the update's forward pass
        self._objectives = {}
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
        update on ``x``/``y`` and replayed examples (as ``method`` says). ``arrival``: when
        the examples arrived (``time.perf_counter()``; default now): the latency runs from
        there to the updated weights. Returns the predictions.

        A network without layers that act differently in training (batch normalisation,
        dropout) is predicted by the update's own forward pass (the weights before the
        update; the same logits as a separate prediction, up to the rounding of a larger
        batch); others by a separate inference pass first."""
        arrival = time.perf_counter() if arrival is None else arrival
        if predictions is None and not self.one_pass:
            predictions = self.predict(x)
        y = np.asarray(y, np.float32)
        logits = self._update(x.astype(np.float32), y)  # the arriving examples' (as NDArray)
        if predictions is None or (self.replay is not None and self.replay.logits):
            logits = logits.asnumpy()
            if predictions is None:
                predictions = logits.argmax(axis=1).astype(np.int64)
        nd.waitall()  # the weights are updated: the next prediction sees them
        done = time.perf_counter()
        self.latencies_ms.append((done - arrival) * 1e3)
        self.learning_seconds += done - arrival
        self.updates += 1
        self._count(np.asarray(predictions) == y.astype(np.int64))
        if self.replay is not None:
            self.replay.add(x, y, logits if self.replay.logits else None)
        self.seen_classes.update(int(c) for c in y)
        return predictions

    def _count(self, right):
        for ok in right:
            self.seen += 1
            self.correct += int(ok)
            self.window_seen += 1
            self.window_correct += int(ok)
            if self.window_seen == self.window:  # [examples seen, accuracy of the window]
                self.curve.append([self.seen, self.window_correct / self.window])
                self.window_seen = self.window_correct = 0

    def _update(self, x, y):
        """One step on the arriving ``x``/``y`` and replayed examples, the network and the
        loss one graph (``_Objective``); returns the arriving examples' logits (before
        the step), not waited for."""
        n = len(y)
        k = n if self.replay_per_update is None else self.replay_per_update
        first = self.replay.sample(k) if self.replay is not None else None
        second = self.replay.sample(k) if self.method == 'der++' and first is not None else None
        parts = [x] + [d[0] for d in (first, second) if d is not None]
        data = nd.array(np.concatenate(parts), ctx=self.context)
        terms = nd.array(self.terms(y, first, second), ctx=self.context)
        objective = self._objective()
        with autograd.record():
            loss, out = objective(data, terms)
        loss.backward()
        self.trainer.step(1)
        return out[:n]

    def terms(self, y, first, second) -> np.ndarray:
        """The loss's per-row terms for ``stream_loss``, one row per example of the update
        (arriving, then the first and second draws from the memory): label, weight of its
        cross-entropy, then per class a mask (0, or ``_MASKED`` to leave the logit out of
        the cross-entropy), a stored logit and the weight of its squared error."""
        classes = self.net_outputs()
        rows = [(y, 'new')] + [(d[1], name) for d, name in ((first, 'first'), (second, 'second'))
                               if d is not None]
        total = sum(len(labels) for labels, _ in rows)
        out = np.zeros((total, 2 + 3 * classes), np.float32)
        start = 0
        for labels, name in rows:
            block = out[start:start + len(labels)]
            block[:, 0] = labels
            block[:, 1] = self._ce_weight(name, len(labels), total)
            if name == 'new' and self.method == 'er-ace' and first is not None:
                present = set(int(c) for c in labels)
                absent = [c for c in self.seen_classes if c not in present and c < classes]
                block[:, 2 + np.array(absent, dtype=np.int64)] = _MASKED
            if name == 'first' and self.method == 'der++':
                stored = first[2][:, :classes]
                known = ~np.isnan(stored)  # classes added since it was stored: left out
                block[:, 2 + classes:2 + 2 * classes] = np.where(known, stored, 0)
                block[:, 2 + 2 * classes:] = known * (self.alpha / max(int(known.sum()), 1))
            start += len(labels)
        return out

    def _ce_weight(self, name, rows, total):
        if self.method == 'er' or (name == 'new' and total == rows):
            return 1.0 / total  # one mean over every example of the update
        if self.method == 'er-ace':
            return 1.0 / rows  # a mean for the arriving, one for the replayed
        return {'new': 1.0, 'first': 0.0, 'second': self.beta}[name] / rows

    def _objective(self):
        """The network and ``stream_loss`` as one hybridized block (one per output size)."""
        classes = self.net_outputs()
        if self._objectives.get('classes') != classes:
            objective = _Objective(self.net, classes)
            objective.hybridize()
            self._objectives = {'classes': classes, 'block': objective}
        return self._objectives['block']

    def net_outputs(self) -> int:
        return getattr(self.net, models.output_layer_name(self.net)).weight.shape[0]

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
                shape = trainer._params[moved[index]].shape
                if step_count and len(shape) == len(old_params[index].shape):
                    state = optimizer.grow_state(state, shape)  # mxnag: 8-bit codes too
                else:
                    state = _grown_state(state, shape, step_count)
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
        self._objectives = {}  # its graph holds the old output layer
        if self.replay is not None:
            self.replay.grow_logits(classes)

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
                'learning_seconds': self.learning_seconds, 'seen_classes': sorted(self.seen_classes),
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
        self.seen_classes = set(stream.get('seen_classes', []))
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



def logits_of(net, images: np.ndarray, context, batch: int = 1000) -> np.ndarray:
    """``net``'s logits for ``images`` (float32, N x input shape), in batches."""
    return np.concatenate([net(nd.array(images[i:i + batch], ctx=context)).asnumpy()
                           for i in range(0, len(images), batch)])


class BareSteps:
    """The baseline of a stream's update latency, measured in the same run between its
    updates: a bare Gluon training step (forward, backward, ``trainer.step``, wait) of the
    stream's own network on a random batch of ``batch`` examples, through a second
    ``gluon.Trainer`` of the same optimizer (``optimizer_name`` with ``opt_args``) at
    learning rate 0 and no weight decay. Every parameter (batch normalisation's running
    statistics too) is copied before and put back after each timed step, so nothing the
    stream learns moves, whatever the optimizer does at rate 0 (some divide by it); the
    stream's trainer and states are not touched. ``step()`` times one; ``latency()``
    gives the percentiles (ms)."""

    def __init__(self, net, context, optimizer_name, input_shape, classes, batch, seed=0,
                 opt_args=None):
        optimizer = mx.optimizer.create(optimizer_name, **dict(opt_args or {}, learning_rate=0.0,
                                                                wd=0.0))
        self.net, self.context, self.batch = net, context, batch
        self.params = list(net.collect_params().values())
        self.trainer = gluon.Trainer(self.params, optimizer, kvstore=None)
        self.shape, self.classes = (batch,) + tuple(input_shape), classes
        self.rng = np.random.RandomState(seed)
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.times_ms: List[float] = []

    def step(self) -> None:
        x = nd.array(self.rng.standard_normal(self.shape).astype(np.float32), ctx=self.context)
        y = nd.array(self.rng.randint(self.classes, size=self.batch).astype(np.float32),
                     ctx=self.context)
        saved = [p.data(self.context).copy() for p in self.params]
        nd.waitall()
        start = time.perf_counter()
        with autograd.record():
            loss = self.loss_fn(self.net(x), y).mean()
        loss.backward()
        self.trainer.step(1)
        nd.waitall()
        self.times_ms.append((time.perf_counter() - start) * 1e3)
        for param, value in zip(self.params, saved):
            param.set_data(value)
        nd.waitall()

    def latency(self) -> dict:
        times = np.array(self.times_ms) if self.times_ms else np.array([np.nan])
        return {'p50': float(np.percentile(times, 50)), 'p95': float(np.percentile(times, 95)),
                'p99': float(np.percentile(times, 99)), 'batch': self.batch,
                'steps': len(self.times_ms)}
