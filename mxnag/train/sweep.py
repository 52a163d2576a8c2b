"""The optimizer comparison behind the README's results table: each optimizer with its
tuned learning rate, on each model, over several seeds, on any data source (MNIST by
default); final test accuracy (mean ± std), epochs and seconds to reach a target; JSON,
Markdown and a PNG plot. Shapes and classes come from the source.

Learning rates were tuned by ``recipes/compare_optimizers.py --tune``: one epoch of each
model on the first five sixths of the training images (MNIST: the first 50,000) per grid
value, the best accuracy on the last sixth (``sources.holdout``; never the test set)
wins. ``TUNED_LR`` holds what that command printed for MNIST; other data take ``--lrs``
(a tune's output) or each optimizer's default learning rate.
"""
import logging
import statistics


from . import extras, factories, loop, run, settings, sources

OPTIMIZERS = ('sgd', 'nag', 'adam', 'nadam', 'adanag', 'adan')
# fixed hyperparameters besides the learning rate
OPTIMIZER_ARGS = {'sgd': {}, 'nag': {'momentum': 0.9}, 'adam': {}, 'nadam': {}, 'adanag': {},
                  'adan': {}}
LR_GRID = {'sgd': (0.03, 0.1, 0.3), 'nag': (0.01, 0.03, 0.1), 'adam': (3e-4, 1e-3, 3e-3),
           'nadam': (3e-4, 1e-3, 3e-3), 'adanag': (1e-3, 2e-3, 4e-3),
           'adan': (1e-3, 2e-3, 4e-3)}
TUNED_LR = {  # printed by: python recipes/compare_optimizers.py --tune --data-dir ../shared/data/mnist
    'mlp': {'sgd': 0.1, 'nag': 0.03, 'adam': 1e-3, 'nadam': 3e-3, 'adanag': 2e-3, 'adan': 4e-3},
    'lenet': {'sgd': 0.1, 'nag': 0.03, 'adam': 3e-3, 'nadam': 3e-3, 'adanag': 4e-3, 'adan': 4e-3},
}
TARGETS = {'mlp': 0.98, 'lenet': 0.99}
logger = logging.getLogger(__name__)


def run_args(model, optimizer, lr, epochs, seed, batch_size=128, data_dir=None, classes=None,
             data=None):
    """The arguments of one sweep run: the pretrain recipe's settings at their defaults but
    for these, a constant learning rate (the one the sweep tuned), one checkpoint kept, no
    progress bar."""
    return settings.namespace(
        'pretrain', model=model, optimizer=optimizer, lr=lr,
        opt_arg=['%s=%r' % kv for kv in OPTIMIZER_ARGS.get(optimizer, {}).items()],
        epochs=epochs, batch_size=batch_size, lr_schedule='constant', seed=seed,
        data_dir=data_dir, classes=classes, keep=1, no_progress=True, data=data)


def train_once(args, train_loader, test_loader, num_classes, log=None):
    """Train a fresh ``args.model`` with ``args``; returns the history."""
    if log:
        args.log = log
    net = run.new_model(args.model, num_classes, [run.mx.cpu()], args.seed)
    config = settings.config_of(args, num_classes=num_classes)
    history, _, _ = run.train(net, args, train_loader, test_loader,
                              factories.parse_contexts('cpu'), config,
                              '%s/%s/%s' % (args.model, args.optimizer, args.seed))
    return history


def tune(models, optimizers, data_dir=None, epochs=1, seed=0, report=None, data=None):
    """The best learning rate of each grid in ``LR_GRID`` by validation accuracy
    (``sources.holdout``) on data source ``data`` (default MNIST); each score goes to ``report``
    (default: this module's logger)."""
    report = report or logger.info
    best = {}
    for model in models:
        best[model] = {}
        for optimizer in optimizers:
            scores = {}
            for lr in LR_GRID[optimizer]:
                args = run_args(model, optimizer, lr, epochs, seed, data_dir=data_dir, data=data)
                held_out = sources.holdout(run.open_source(args), seed)
                train, valid, classes = run.load_data(args, source=held_out)
                history = train_once(args, train, valid, classes)
                scores[lr] = history[-1]['test_accuracy']
                report('tune %s %s lr=%g: validation accuracy %.4f' % (model, optimizer, lr, scores[lr]))
            best[model][optimizer] = max(scores, key=scores.get)
    return best


def learning_rate(lrs, model, optimizer):
    """The sweep's learning rate of ``optimizer`` on ``model``: from ``lrs`` (a tune's
    output), else the optimizer's own default."""
    if model in lrs and optimizer in lrs[model]:
        return lrs[model][optimizer]
    return factories.make_optimizer(optimizer, None, OPTIMIZER_ARGS.get(optimizer, {})).learning_rate


def compare(models, optimizers, seeds, epochs, data_dir=None, lrs=None, log=None, report=None,
            data=None, targets=None):
    """Train every (model, optimizer, seed) on data source ``data`` (default MNIST);
    returns ``{'runs': [...], 'summary': [...]}``. Learning rates: ``lrs``, else
    ``TUNED_LR`` for MNIST, else each optimizer's default; ``targets``: the test accuracy
    each model is timed to (default ``TARGETS`` for MNIST). Each run's result goes to
    ``report`` (default: this module's logger)."""
    report = report or logger.info
    mnist = data in (None, 'mnist')
    lrs = lrs or (TUNED_LR if mnist else {})
    targets = targets or (TARGETS if mnist else {})
    runs = []
    for model in models:
        for optimizer in optimizers:
            lr = learning_rate(lrs, model, optimizer)
            for seed in seeds:
                args = run_args(model, optimizer, lr, epochs, seed, data_dir=data_dir, data=data)
                train, test, classes = run.load_data(args)
                history = train_once(args, train, test, classes, log)
                target = targets.get(model)
                epoch, seconds = loop.epochs_to_reach(history, target) if target else (None, None)
                runs.append({'model': model, 'optimizer': optimizer, 'seed': seed, 'lr': lr,
                             'opt_args': OPTIMIZER_ARGS.get(optimizer, {}), 'history': history,
                             'test_accuracy': history[-1]['test_accuracy'],
                             'epochs_to_target': epoch, 'seconds_to_target': seconds})
                report('%s %s seed %d: test accuracy %.4f%s'
                       % (model, optimizer, seed, history[-1]['test_accuracy'],
                          ', %s epochs to %.1f%%' % (epoch, 100 * target) if target else ''))
    return {'runs': runs, 'summary': summarize(runs), 'epochs': epochs, 'seeds': list(seeds),
            'targets': {m: targets[m] for m in models if m in targets}, 'data': data or 'mnist'}


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs):
    rows = []
    keys = []
    for run in runs:
        if (run['model'], run['optimizer']) not in keys:
            keys.append((run['model'], run['optimizer']))
    for model, optimizer in keys:
        group = [r for r in runs if r['model'] == model and r['optimizer'] == optimizer]
        acc, acc_std = mean_std([r['test_accuracy'] for r in group])
        reached = [r for r in group if r['epochs_to_target'] is not None]
        epochs, _ = mean_std([r['epochs_to_target'] for r in reached])
        seconds, _ = mean_std([r['seconds_to_target'] for r in reached])
        rows.append({'model': model, 'optimizer': optimizer, 'lr': group[0]['lr'],
                     'test_accuracy_mean': acc, 'test_accuracy_std': acc_std,
                     'reached_target': '%d/%d' % (len(reached), len(group)),
                     'epochs_to_target_mean': epochs, 'seconds_to_target_mean': seconds})
    return rows


def markdown(result):
    lines = ['| model | optimizer | lr | test accuracy (%%, mean ± std over %d seeds, %d epochs) '
             '| runs reaching target | epochs to target | seconds to target |'
             % (len(result['seeds']), result['epochs']),
             '|---|---|---|---|---|---|---|']
    for row in result['summary']:
        goal = result['targets'].get(row['model'])
        target = '%.1f%%' % (100 * goal) if goal else 'no target'
        lines.append('| %s | %s | %g | %.2f ± %.2f | %s (%s) | %s | %s |' % (
            row['model'], row['optimizer'], row['lr'], 100 * row['test_accuracy_mean'],
            100 * row['test_accuracy_std'], row['reached_target'], target,
            '-' if row['epochs_to_target_mean'] is None else '%.1f' % row['epochs_to_target_mean'],
            '-' if row['seconds_to_target_mean'] is None else '%.0f' % row['seconds_to_target_mean']))
    return '\n'.join(lines) + '\n'


def plot(result, path):
    """Test accuracy and training loss per epoch, mean over seeds, one line per optimizer."""
    matplotlib = extras.require('matplotlib', 'the sweep\'s plot')
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = sorted({r['model'] for r in result['runs']})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        for optimizer in dict.fromkeys(r['optimizer'] for r in result['runs']):
            group = [r for r in result['runs'] if r['model'] == model and r['optimizer'] == optimizer]
            if not group:
                continue
            n = min(len(r['history']) for r in group)
            epochs = list(range(1, n + 1))
            for row, key in enumerate(('test_accuracy', 'train_loss')):
                values = [statistics.mean(r['history'][e][key] for r in group) for e in range(n)]
                axes[row][col].plot(epochs, values, marker='o', label=optimizer)
        axes[0][col].set_title('%s: test accuracy' % model)
        if model in result['targets']:
            axes[0][col].set_ylim(result['targets'][model] - 0.02, 1.0)
        axes[1][col].set_title('%s: training loss' % model)
        axes[1][col].set_yscale('log')
        for row in range(2):
            axes[row][col].set_xlabel('epoch')
            axes[row][col].legend()
            axes[row][col].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_markdown(out_dir):
    """The README's results tables from the JSON files recipes/readme_results.sh writes."""
    import json
    import os

    def load(name):
        with open(os.path.join(out_dir, name)) as f:
            return json.load(f)

    lines = ['| run (adanag defaults, cosine decay) | epochs | final test accuracy | best epoch |',
             '|---|---|---|---|']
    for name, label in (('lenet_adanag_3.json', 'lenet'), ('lenet_adanag_10.json', 'lenet'),
                        ('mlp_adanag_10.json', 'mlp')):
        acc = [h['test_accuracy'] for h in load(name)['history']]
        lines.append('| %s | %d | %.2f%% | %.2f%% (epoch %d) |'
                     % (label, len(acc), 100 * acc[-1], 100 * max(acc), acc.index(max(acc)) + 1))
    lines += ['', '| fine-tuning LeNet 0-4 -> 5-9 | fine-tuned | from scratch |', '|---|---|---|']
    for shots in (10, 100):
        r = load('finetune_%d_shots.json' % shots)
        lines.append('| %d examples per class | %.2f%% | %.2f%% |'
                     % (shots, 100 * r['test_accuracy'], 100 * r['scratch_test_accuracy']))
    r = load('finetune_all_frozen.json')
    lines.append('| all 5-9 training data, convolutions frozen | %.2f%% | - |' % (100 * r['test_accuracy']))
    with open(os.path.join(out_dir, 'sweep.md')) as f:
        lines += ['', f.read()]
    return '\n'.join(lines)
