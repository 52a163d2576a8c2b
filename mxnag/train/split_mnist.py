"""Split-MNIST, class-incremental, as the DER paper (Buzzega et al., NeurIPS 2020) runs it,
through the stream recipe: the MLP 784-100-100-10 with one 10-way head, the tasks 0-1,
2-3, 4-5, 6-7, 8-9 each streamed once in batches of 10, a reservoir memory of 200, 500
or 5120 examples, pixels scaled to 0-1; the class-incremental accuracy after the last
task (the mean of the five tasks' test accuracies).

``AUTHORS`` holds the authors' best hyperparameters for plain SGD (mammoth's
``utils/best_args.py`` at commit 7ab9db9, seq-mnist) and ``PUBLISHED`` their numbers
(mammoth's README at that commit). ``arguments`` and ``authors_row`` make a run's
``recipes/mnist_stream.py`` arguments (the grid is ``recipes/split_mnist.py``'s);
``run_row`` runs one over seeds in this process; ``tune`` picks an mxnag optimizer's
learning rate on held-out training images.
"""
import statistics
from typing import Dict, List, Sequence

from . import cli, stream

TASKS = '0-1,2-3,4-5,6-7,8-9'
BUFFERS = (200, 500, 5120)
# the protocol: everything but the method, optimizer, learning rate and buffer
COMMON = ['--model', 'mlp-100-100', '--tasks', TASKS, '--replay', '0', '--arrival-batch', '10',
          '--normalize', 'none', '--no-progress']
# mammoth's best_args.py, seq-mnist: lr, minibatch_size (replayed per draw), alpha, beta
AUTHORS = {
    ('er', 200): {'lr': 0.01, 'replay_batch': 10},
    ('er', 500): {'lr': 0.1, 'replay_batch': 10},
    ('er', 5120): {'lr': 0.1, 'replay_batch': 10},
    ('der++', 200): {'lr': 0.03, 'replay_batch': 128, 'alpha': 0.2, 'beta': 1.0},
    ('der++', 500): {'lr': 0.03, 'replay_batch': 10, 'alpha': 1.0, 'beta': 0.5},
    ('der++', 5120): {'lr': 0.1, 'replay_batch': 64, 'alpha': 0.2, 'beta': 0.5},
}
# class-IL accuracy (%) in mammoth's README at 7ab9db9; joint training: 95.57
PUBLISHED = {('er', 200): 80.43, ('er', 500): 86.12, ('er', 5120): 93.40,
             ('der++', 200): 85.61, ('der++', 500): 91.00, ('der++', 5120): 95.30}
JOINT = 95.57
MXNAG_OPTIMIZERS = ('adanag', 'adan', 'nadamw')
LR_GRID = (3e-4, 1e-3, 3e-3)


def arguments(method: str, optimizer: str, lr: float, buffer: int, replay_batch: int = 10,
              alpha: float = None, beta: float = None, memory: str = 'reservoir') -> List[str]:
    """The stream recipe's arguments of one configuration (add ``--seed``, ``--data-dir``
    and ``--out`` to run it)."""
    args = COMMON + ['--method', method, '--optimizer', optimizer, '--lr', repr(lr),
                     '--reservoir', str(buffer), '--replay-batch', str(replay_batch),
                     '--memory', memory]
    if method == 'der++':
        args += ['--der-alpha', repr(alpha), '--der-beta', repr(beta)]
    return args


def authors_row(method: str, buffer: int, optimizer: str = 'sgd', lr: float = None) -> List[str]:
    """A configuration with the authors' best hyperparameters for ``method`` at
    ``buffer`` (their learning rate unless ``lr``)."""
    best = dict(AUTHORS[(method, buffer)])
    best['lr'] = best['lr'] if lr is None else lr
    return arguments(method, optimizer, buffer=buffer, **best)


def run_once(argv: Sequence[str]) -> dict:
    """One stream of ``argv`` (the stream recipe's arguments) in this process."""
    args = cli.parser_for('stream', __doc__).parse_args(list(argv))
    return stream.run(args, quiet=True)


def run_row(argv: Sequence[str], seeds: Sequence[int], data_dir: str = None,
            report=print) -> Dict[str, object]:
    """``argv`` over ``seeds``: the JSON row of ``results/split_mnist.json``."""
    accuracies, ratios = [], []
    for seed in seeds:
        extra = ['--seed', str(seed)] + (['--data-dir', data_dir] if data_dir else [])
        result = run_once(list(argv) + extra)
        accuracies.append(100 * result['class_il_accuracy'])
        ratio = result.get('latency_p99_ratio')
        if ratio:
            ratios.append(ratio)
        report('%s seed %d: %.2f%% (p99 latency %s a bare step)'
               % (' '.join(argv[len(COMMON):]), seed, accuracies[-1],
                  '%.2fx' % ratio if ratio else 'not measured against'))
    get = {argv[i]: argv[i + 1] for i in range(len(COMMON), len(argv) - 1, 2)}
    return {'method': get['--method'], 'optimizer': get['--optimizer'], 'lr': float(get['--lr']),
            'buffer': int(get['--reservoir']), 'memory': get['--memory'], 'seeds': list(seeds),
            'accuracies': accuracies, 'mean': statistics.mean(accuracies),
            'std': statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            'latency_p99_ratio': statistics.median(ratios) if ratios else None,
            'args': list(argv)}


def tune(configs, data_dir=None, seed=100, report=print):
    """For each configuration (``(label, make)`` pairs, ``make(lr)`` giving its arguments),
    the learning rate of ``LR_GRID`` with the best class-IL accuracy on held-out training
    images (``--holdout``: the last 10,000 training images, not streamed) with ``seed``
    (not one of the reported seeds). Returns ``{label: lr}``."""
    best = {}
    for label, make in configs:
        scores = {}
        for lr in LR_GRID:
            argv = make(lr) + ['--holdout', '--seed', str(seed), '--baseline-every', '0']
            if data_dir:
                argv += ['--data-dir', data_dir]
            scores[lr] = run_once(argv)['class_il_accuracy']
            report('tune %s lr=%g: held-out class-IL accuracy %.2f%%' % (label, lr, 100 * scores[lr]))
        best[label] = max(scores, key=scores.get)
    return best


def markdown(runs) -> str:
    """The table: each row's mean ± std beside the published number where there is one."""
    lines = ['| method | optimizer | lr | buffer | memory | class-IL accuracy (%, mean ± std, '
             '3 seeds) | published (DER paper, SGD) | difference | p99 latency / bare step |',
             '|---|---|---:|---:|---|---:|---:|---:|---:|']
    for r in runs:
        published = PUBLISHED.get((r['method'], r['buffer'])) if r['optimizer'] == 'sgd' else None
        lines.append('| %s | %s | %g | %d | %s | %.2f ± %.2f | %s | %s | %s |' % (
            r['method'], r['optimizer'], r['lr'], r['buffer'], r['memory'], r['mean'], r['std'],
            '%.2f' % published if published else '-',
            '%+.2f' % (r['mean'] - published) if published else '-',
            '%.2fx' % r['latency_p99_ratio'] if r['latency_p99_ratio'] else '-'))
    return '\n'.join(lines) + '\n'
