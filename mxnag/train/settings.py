"""The settings of a training run, each defined once.

``SETTINGS`` is the one table: a setting's name (the attribute of the run's arguments and
the key of its config), its type, default and help, which recipes take it, whether it is
written into the config of checkpoints and results, and whether ``--resume`` requires a
checkpoint made with the same value. Everything else derives from it: the recipes'
command-line options (``add_arguments``, flag ``--`` + the name with dashes), the config
(``config_of``), the keys ``--resume`` compares (``RESUME_KEYS``) and the arguments of a
run built in code (``namespace``, used by the optimizer sweep).
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import data, factories, images
from ..errors import MxnagError

BATCH = ('pretrain', 'finetune')  # the recipes that train in epochs
RECIPES = BATCH + ('stream',)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be >= 1, got %d' % value)
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0, got %d' % value)
    return value


def nonnegative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError('must be >= 0, got %r' % text)
    return value


def epoch_list(text):
    try:
        return [float(x) for x in text.split(',') if x]
    except ValueError:
        raise argparse.ArgumentTypeError('not a comma-separated list of epochs: %r' % text) from None


@dataclass(frozen=True)
class Setting:
    """One setting of a run. ``default`` may be overridden per recipe (``defaults``);
    ``config``: written into checkpoints and results (under ``config_key``, converted by
    ``to_config``); ``resume``: a checkpoint made with another value cannot be resumed;
    ``output``: a file or folder the run writes (``'file'``, ``'folder'``, ``'checkpoint'``:
    a prefix of three files) or reads (``'input-checkpoint'``), checked before training;
    ``required``: the recipes in which it must be given."""
    name: str
    default: Any = None
    help: Optional[str] = None
    type: Optional[Callable] = None
    group: str = 'training'
    recipes: Tuple[str, ...] = BATCH
    defaults: Dict[str, Any] = field(default_factory=dict)
    config: bool = True
    resume: bool = False
    choices: Optional[Tuple] = None
    action: Optional[str] = None
    metavar: Optional[str] = None
    required: Tuple[str, ...] = ()  # the recipes that need it given
    config_key: Optional[str] = None
    to_config: Optional[Callable] = None
    output: Optional[str] = None

    @property
    def flag(self) -> str:
        return '--' + self.name.replace('_', '-')

    @property
    def key(self) -> str:
        return self.config_key or self.name

    def default_for(self, recipe: str) -> Any:
        value = self.defaults.get(recipe, self.default)
        return list(value) if isinstance(value, list) else value


SETTINGS: Tuple[Setting, ...] = (
    # data
    Setting('dataset', 'mnist', 'data set (default %(default)s)', group='data',
            choices=tuple(sorted(data.DATASETS)), resume=True, recipes=RECIPES),
    Setting('data', None, 'data source: mnist, fashion-mnist, cifar10:PATH, cifar100:PATH (the '
            'python or binary version\'s files), folder:PATH (a sub-folder of images per class; '
            'train/ and test/ inside, or split by --val-fraction) or rec:PREFIX (im2rec\'s '
            'PREFIX.rec and .idx) (default: --dataset)', group='data', resume=True, recipes=RECIPES,
            metavar='SPEC'),
    Setting('download', False, 'fetch the data set where it is not found: mnist and '
            'fashion-mnist from their mirrors into ~/.mxnet/datasets, cifar10:PATH and '
            'cifar100:PATH (the python version, MD5-checked) into PATH (nothing is downloaded '
            'without it)', action='store_true', group='data', config=False, recipes=RECIPES),
    Setting('val_fraction', 0.1, 'of each class of a folder or record file with no test split: '
            'the part kept for testing, chosen with --seed (default %(default)s)',
            type=float, group='data', resume=True, recipes=RECIPES),
    Setting('input_size', None, 'images are resized to SIZExSIZE (default: the data\'s size where '
            'all images share one, else 32 for GluonCV cifar_* models, 28 for mxnag\'s, 224 '
            'for the rest; fine-tuning: the pretrained model\'s)', type=positive_int,
            group='data', resume=True, recipes=RECIPES, metavar='SIZE'),
    Setting('augment', 'auto', 'training transforms as GluonCV makes them: none, crop (pad and '
            'crop: for digits and text), crop-flip (pad and crop, flip: CIFAR\'s), '
            'resized-crop-flip (ImageNet\'s) (default auto: none for '
            'mnist and fashion-mnist, crop-flip up to 64x64, else resized-crop-flip)',
            group='data', choices=('auto',) + images.AUGMENTS, resume=True, recipes=BATCH),
    Setting('normalize', 'auto', "per-channel standardisation: 'data' (the training images' mean "
            "and std), 'imagenet' (for ImageNet-pretrained models) (default auto: the pretrained "
            "checkpoint's when fine-tuning, else the data's)", group='data',
            choices=('auto', 'data', 'imagenet', 'none'), resume=True, recipes=RECIPES),
    Setting('workers', 0, 'processes decoding images for a folder or record source (gluon '
            'DataLoader; default 0: in the training process)', type=nonnegative_int,
            group='data', config=False, recipes=BATCH),
    Setting('max_bad_images', 0, 'images of a folder or record source that do not decode and are '
            'skipped, each named in the log; one more stops the run (default 0: the first stops '
            'it, naming the file)', type=nonnegative_int, group='data', config=False,
            recipes=BATCH),
    Setting('data_dir', None, 'directory holding the four IDX files (.gz or raw); default: '
            '$MXNAG_DATA_DIR/<dataset>, ~/.mxnet/datasets/<dataset>, /usr/share/datasets/<dataset>, '
            'else --download', group='data', config=False, recipes=RECIPES),
    Setting('classes', None, "classes to keep, relabelled from 0: '0-4', '3,8' (default: all); "
            "of a stream: the classes it brings (default 5-9 for a stream)",
            group='data', defaults={'finetune': '5-9', 'stream': '5-9'}, resume=True, recipes=RECIPES),
    Setting('shots', None, 'k training examples per class, chosen with --seed (default: all)',
            type=positive_int, group='data', resume=True),
    # fine-tuning
    Setting('pretrained', None, 'checkpoint .params from pretrain.py or mnist_pretrain.py, or a '
            'model-zoo file NAME-HASH.params as GluonCV downloads it (a stream without it learns '
            'from scratch)', group='fine-tuning', recipes=('finetune', 'stream'),
            required=('finetune',), resume=True, output='input-checkpoint'),
    Setting('features', 'lr_mult', 'freeze the feature extractor or scale its learning rate '
            '(default lr_mult)', group='fine-tuning', recipes=('finetune',),
            choices=('freeze', 'lr_mult'), resume=True),
    Setting('features_lr_mult', 1.0, 'learning-rate multiplier of the features with --features '
            'lr_mult (a stream: of everything but the output layer; default 1: LeNet 0-4 '
            'fine-tuned on 5-9 from 10 images per class reaches 93.6%% with it, 87.9%% with 0.1)',
            type=nonnegative_float, group='fine-tuning', recipes=('finetune', 'stream'),
            resume=True),
    Setting('train_last', 0, 'keep the last K feature layers training at the full rate (default 0)',
            type=nonnegative_int, group='fine-tuning', recipes=('finetune',), metavar='K',
            resume=True),
    Setting('compare_scratch', False, 'also train the same model from scratch on the same examples',
            group='fine-tuning', recipes=('finetune',), action='store_true', config=False),
    # training
    Setting('model', 'lenet', 'mlp, lenet, seed-cnn, mlp-100-100, mlp-1000-1000 or a GluonCV classifier name '
            '(default %(default)s)',
            defaults={'finetune': None}, resume=True, recipes=RECIPES),
    Setting('optimizer', 'adanag', 'any registered optimizer: adanag, adan, nadamw, sgd, nag, adam, '
            'nadam, ... (default %(default)s)', resume=True, recipes=RECIPES),
    Setting('lr', None, "learning rate (default: the optimizer's own default)",
            type=nonnegative_float, resume=True, recipes=RECIPES),
    Setting('opt_arg', [], 'optimizer hyperparameter, repeatable: --opt-arg beta2=0.99',
            action='append', metavar='NAME=VALUE', config_key='opt_args',
            to_config=factories.parse_opt_args, resume=True, recipes=RECIPES),
    Setting('epochs', 3, '(default %(default)s)', type=positive_int, defaults={'finetune': 20},
            resume=True),
    Setting('batch_size', 128, 'global batch size (default %(default)s)', type=positive_int,
            defaults={'finetune': 64}, resume=True),
    # cosine: the best known setting (LeNet, 3 epochs, adanag: 99.33% against 98.69% constant)
    Setting('lr_schedule', 'cosine', 'learning-rate schedule over the run, after any warm-up '
            '(default %(default)s)', choices=factories.SCHEDULES, resume=True),
    Setting('warmup_epochs', 0.0, 'linear warm-up from 0, in epochs (default 0)',
            type=nonnegative_float, resume=True),
    Setting('lr_step_epochs', [], "for --lr-schedule step: epochs at which to multiply by "
            "--lr-factor, '6,8'", type=epoch_list, resume=True),
    Setting('lr_factor', 0.1, None, type=nonnegative_float, resume=True),
    Setting('ctx', 'cpu', 'devices: cpu, cpu:0,cpu:1, gpu:0,gpu:1 (default cpu)'),
    Setting('kvstore', 'device', 'device, local, none, or dist_sync, dist_device_sync, dist_async '
            'under mxnag launch (default device)'),
    Setting('seed', 0, '(default 0)', type=int, resume=True, recipes=RECIPES),
    Setting('amp', False, "float16 mixed precision with MXNet's AMP and dynamic loss scaling "
            '(GPU contexts only)', action='store_true'),
    Setting('max_skips', 10, 'stop after this many steps in a row with a non-finite loss or '
            'gradient (each is skipped; default 10)', type=nonnegative_int, config=False),
    Setting('target_accuracy', None, 'stop after the first epoch whose test accuracy reaches '
            'this (0-1)', type=float),
    # output
    # a stream
    Setting('source', 'mnist', "where examples come from: 'mnist' (the training images of "
            "--classes of --data, or of --dataset, in a seeded order, once), a data source "
            "(folder:PATH, rec:PREFIX, cifar10:PATH, ...: its training images so) or 'stdin' "
            '(one JSON object a line: {"label": a class name or number, and "pixels": [784 '
            'integers 0-255] or "image": "a/file.png" or "png_base64": "..."}; a prediction '
            'a line on stdout)', group='stream', recipes=('stream',), resume=True, metavar='SOURCE'),
    Setting('grow', False, 'with --source stdin: a line whose label is not a class of the model '
            'adds that class (a new output; the rows of the known classes and their optimizer '
            'states are kept) instead of being rejected', action='store_true', group='stream',
            recipes=('stream',), resume=True),
    Setting('tasks', None, "class groups in arrival order, e.g. 0-1,2-3,4-5,6-7,8-9 (a group: "
            "a range, numbers or class names joined by +): each group's training images once, "
            "in a seeded order, then the next; after each, the accuracy on every group so far "
            "(replaces --classes)", group='stream', recipes=('stream',), resume=True),
    Setting('method', 'der++', "how replayed examples enter the loss: er (experience replay), "
            "er-ace (asymmetric cross-entropy: arriving examples compete only with the classes "
            "in their batch and those not seen yet), der++ (replayed logits distilled; the "
            "memory stores logits) (default %(default)s: LeNet 0-4 then 5-9 keeps 0-4 at "
            "99.4%%)", choices=('er', 'er-ace', 'der++'),
            group='stream', recipes=('stream',), resume=True),
    Setting('der_alpha', 0.5, 'der++: weight of the replayed logits\' squared error '
            '(default %(default)s)', type=nonnegative_float, group='stream', recipes=('stream',),
            resume=True),
    Setting('der_beta', 0.5, 'der++: weight of the replayed labels\' cross-entropy '
            '(default %(default)s)', type=nonnegative_float, group='stream', recipes=('stream',),
            resume=True),
    Setting('memory', 'balanced', "the replay memory: reservoir (--replay kept examples of the "
            "checkpoint's classes, fixed, and a reservoir of --reservoir stream examples) or "
            "balanced (one pool of both sizes together, the kept examples first, kept "
            "class-balanced as classes arrive) (default %(default)s)",
            choices=('reservoir', 'balanced'), group='stream', recipes=('stream',), resume=True),
    Setting('holdout', False, 'measure on a sixth of the training images (MNIST: the last 10,000), '
            'which are then not streamed, instead of the test set: for tuning',
            action='store_true', group='stream', recipes=('stream',), resume=True),
    Setting('baseline_every', 10, 'between every this many updates, time one bare Gluon training '
            'step (forward, backward, trainer.step, wait) of the model on a random batch of an '
            "update's size, at learning rate 0: the latency ratio in the results (0: none; "
            'default %(default)s)', type=nonnegative_int, group='stream', recipes=('stream',),
            config=False),
    Setting('replay', 2000, 'examples of the checkpoint\'s classes kept and mixed into every '
            'update (0: none; default %(default)s)', type=nonnegative_int, group='stream',
            recipes=('stream',), resume=True),
    Setting('reservoir', 2000, "examples of the stream kept for replay (with --memory balanced: "
            "the pool's size beyond the kept examples; default %(default)s)", type=nonnegative_int,
            group='stream', recipes=('stream',), resume=True),
    Setting('arrival_batch', 16, 'examples that arrive together and make one update '
            '(default %(default)s)', type=positive_int, group='stream', recipes=('stream',),
            resume=True),
    Setting('replay_batch', None, 'examples drawn from the replay memory into every update '
            '(default: --arrival-batch)', type=nonnegative_int, group='stream',
            recipes=('stream',), resume=True),
    Setting('window', 1000, 'examples per point of the prequential accuracy curve '
            '(default %(default)s)', type=positive_int, group='stream', recipes=('stream',)),
    Setting('checkpoint_every', 500, 'with --checkpoint-dir: a checkpoint every this many '
            'updates (default %(default)s) ...', type=positive_int, group='stream',
            recipes=('stream',), config=False),
    Setting('checkpoint_seconds', 60.0, '... or seconds, whichever comes first (default %(default)s)',
            type=nonnegative_float, group='stream', recipes=('stream',), config=False),
    Setting('compare', None, 'run the same stream with each of these optimizers (e.g. '
            'adanag,adan,nadamw,sgd,adam) and write a table and a plot to --out-dir',
            group='stream', recipes=('stream',), config=False),
    Setting('out_dir', None, 'with --compare: where the table (stream_compare.md/.json) and the '
            'plot (stream_compare.png) go', group='output', recipes=('stream',), config=False,
            output='folder'),
    # output
    Setting('out', None, 'results JSON (test_accuracy, history, timings, config)', group='output',
            config=False, output='file', recipes=RECIPES),
    Setting('log', None, 'JSON-lines metrics log, appended as training goes', group='output',
            config=False, output='file', recipes=RECIPES),
    Setting('tensorboard', None, 'also write the metrics as TensorBoard event files here '
            '(tensorboard --logdir DIR shows the run live; needs the tensorboard extra)',
            group='output', config=False, output='folder', recipes=RECIPES),
    Setting('checkpoint_dir', None, 'write a checkpoint after every epoch here (a stream: see '
            '--checkpoint-every)', group='output', config=False, output='folder', recipes=RECIPES),
    Setting('keep', 3, 'checkpoints kept in --checkpoint-dir (default 3)', type=positive_int,
            group='output', config=False, recipes=RECIPES),
    Setting('resume', False, 'continue from the newest good checkpoint in --checkpoint-dir',
            group='output', action='store_true', config=False, recipes=RECIPES),
    Setting('no_progress', False, 'no progress bar', group='output', action='store_true',
            config=False, recipes=RECIPES),
    Setting('save', None, 'write the final checkpoint to this .params path', group='output',
            recipes=('pretrain',), config=False, output='checkpoint'),
)
BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}
# Changing any of these makes a checkpoint of the run unusable for --resume.
RESUME_KEYS: Tuple[str, ...] = tuple(s.key for s in SETTINGS if s.resume)


def of(recipe: str) -> List[Setting]:
    """The settings ``recipe`` takes, in the table's order."""
    if recipe not in RECIPES:
        raise MxnagError('recipe: %r is not one of %s' % (recipe, ', '.join(RECIPES)),
                         arguments=('recipe',))
    return [s for s in SETTINGS if recipe in s.recipes]


def add_arguments(parser: argparse.ArgumentParser, recipe: str) -> argparse.ArgumentParser:
    """Add ``recipe``'s settings to ``parser`` as options, in groups; the parsed namespace
    records the recipe (``args.recipe``)."""
    groups = {}
    for s in of(recipe):
        if s.group not in groups:
            groups[s.group] = parser.add_argument_group(s.group)
        kwargs = {'default': s.default_for(recipe), 'help': s.help}
        if s.action:
            kwargs['action'] = s.action
            if s.action == 'store_true':
                del kwargs['default']
        for attr in ('type', 'choices', 'metavar'):
            if getattr(s, attr) is not None:
                kwargs[attr] = getattr(s, attr)
        if recipe in s.required:
            kwargs['required'] = True
            del kwargs['default']
        groups[s.group].add_argument(s.flag, **kwargs)
    parser.set_defaults(recipe=recipe)
    return parser


def namespace(recipe: str = 'pretrain', **values) -> argparse.Namespace:
    """The arguments of a ``recipe`` run built in code: every setting at its default,
    ``values`` replacing some; a name that is not a setting of ``recipe`` raises."""
    names = {s.name: s for s in of(recipe)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise MxnagError('%s: not a setting of the %s recipe' % (unknown[0], recipe),
                         arguments=(unknown[0],))
    args = argparse.Namespace(recipe=recipe)
    for name, s in names.items():
        setattr(args, name, values[name] if name in values else s.default_for(recipe))
    return args


def config_of(args: argparse.Namespace, **extra) -> dict:
    """The config written into checkpoints and results: every config setting (None where
    ``args.recipe`` does not take it), then ``extra`` (e.g. ``num_classes``)."""
    taken = {s.name for s in of(args.recipe)}
    config = {}
    for s in SETTINGS:
        if s.config:
            value = getattr(args, s.name) if s.name in taken else None
            config[s.key] = s.to_config(value) if s.to_config and value is not None else value
    config.update(extra)
    return config


def flag_of(name: str) -> str:
    """The command-line option of setting ``name`` (``max_skips`` -> ``--max-skips``)."""
    return BY_NAME[name].flag if name in BY_NAME else name
