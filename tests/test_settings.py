"""The run settings, defined once: the recipes' options, the config written into
checkpoints and results, the keys --resume compares and the sweep's runs all come from
the one table, and the command line names options where the library names arguments."""
import pytest

from mxnag.errors import MxnagError, TrainingError
from mxnag.train import cli, loop, run, settings, sweep

# the keys --resume compared before the table existed: changing the table must not
# silently let a checkpoint of other settings be resumed
RESUME_KEYS = ('model', 'dataset', 'classes', 'shots', 'optimizer', 'lr', 'opt_args', 'batch_size',
               'seed', 'lr_schedule', 'warmup_epochs', 'lr_step_epochs', 'lr_factor', 'epochs',
               'features', 'features_lr_mult', 'train_last', 'pretrained',
               # the data sources' (mxnag.train.sources)
               'data', 'val_fraction', 'input_size', 'augment', 'normalize',
               # a stream's (mnist_stream.py)
               'source', 'grow', 'replay', 'reservoir', 'arrival_batch', 'replay_batch',
               'tasks', 'method', 'der_alpha', 'der_beta', 'memory', 'holdout')


def parse(recipe, *argv):
    return cli.parser_for(recipe, 'doc\n\nepilog').parse_args(list(argv))


@pytest.mark.parametrize('recipe', settings.RECIPES)
def test_parsed_defaults_equal_the_namespace_built_in_code(recipe):
    required = ['--pretrained', 'x.params'] if recipe == 'finetune' else []  # optional for a stream
    parsed = parse(recipe, *required)
    built = settings.namespace(recipe, **({'pretrained': 'x.params'} if required else {}))
    assert vars(parsed) == vars(built)
    assert set(vars(parsed)) == {s.name for s in settings.of(recipe)} | {'recipe'}


def test_every_option_is_a_setting_and_per_recipe_defaults_hold():
    pre, fine = parse('pretrain'), parse('finetune', '--pretrained', 'x.params')
    assert (pre.model, pre.epochs, pre.batch_size, pre.classes) == ('lenet', 3, 128, None)
    assert (fine.model, fine.epochs, fine.batch_size, fine.classes) == (None, 20, 64, '5-9')
    # the best known settings are the defaults: LeNet, 3 epochs, cosine: 99.33%, constant: 98.69%
    assert pre.lr_schedule == fine.lr_schedule == 'cosine' and pre.optimizer == 'adanag'
    assert not hasattr(pre, 'pretrained') and not hasattr(fine, 'save')
    args = parse('pretrain', '--max-skips', '4', '--opt-arg', 'beta2=0.99', '--lr-step-epochs', '1,2',
                 '--amp', '--no-progress')
    assert (args.max_skips, args.opt_arg, args.lr_step_epochs, args.amp, args.no_progress) == \
        (4, ['beta2=0.99'], [1.0, 2.0], True, True)


def test_resume_keys_and_config_come_from_the_table():
    assert sorted(settings.RESUME_KEYS) == sorted(RESUME_KEYS)
    args = parse('pretrain', '--opt-arg', 'beta2=0.99', '--classes', '0-4')
    config = settings.config_of(args, num_classes=5)
    assert config['opt_args'] == {'beta2': 0.99} and 'opt_arg' not in config
    assert config['classes'] == '0-4' and config['num_classes'] == 5 and config['amp'] is False
    assert config['features'] is None and config['pretrained'] is None  # finetune's, not taken
    for key in RESUME_KEYS:
        assert key in config
    for output in ('out', 'log', 'checkpoint_dir', 'save', 'resume', 'data_dir', 'max_skips', 'workers'):
        assert output not in config
    fine = settings.config_of(parse('finetune', '--pretrained', 'x.params', '--features', 'freeze'))
    assert (fine['features'], fine['features_lr_mult'], fine['pretrained']) == ('freeze', 1.0, 'x.params')


def test_sweep_runs_are_pretrain_namespaces():
    args = sweep.run_args('lenet', 'nag', 0.03, 2, seed=1)
    assert vars(args) == vars(settings.namespace(
        'pretrain', model='lenet', optimizer='nag', lr=0.03, opt_arg=['momentum=0.9'], epochs=2,
        seed=1, lr_schedule='constant', keep=1, no_progress=True))
    with pytest.raises(MxnagError, match='pretrained: not a setting of the pretrain recipe'):
        settings.namespace('pretrain', pretrained='x.params')


LIBRARY_ERRORS = [
    (lambda: loop.parse_contexts('gpu:7'), 'ctx: gpu:7 does not exist', '--ctx: gpu:7 does not exist'),
    (lambda: loop.parse_opt_args(['beta2']), "opt_arg: 'beta2' is not like", "--opt-arg: 'beta2' is not like"),
    (lambda: loop.make_lr_scheduler('linear', 0.1, 10, 2), "lr_schedule: 'linear' is not one of",
     "--lr-schedule: 'linear' is not one of"),
    (lambda: loop.make_lr_scheduler('step', 0.1, 10, 2), 'lr_step_epochs: need increasing',
     '--lr-step-epochs: need increasing'),
    (lambda: loop.make_lr_scheduler('cosine', 0.1, 10, 2, warmup_epochs=3),
     'warmup_epochs: must be in [0, epochs=2]', '--warmup-epochs: must be in [0, epochs=2]'),
    (lambda: loop.make_optimizer('adamw9', 0.1), "optimizer: unknown 'adamw9'", "--optimizer: unknown 'adamw9'"),
    (lambda: run.check_args(settings.namespace(resume=True)), 'resume: needs checkpoint_dir',
     '--resume: needs --checkpoint-dir'),
    (lambda: run.check_args(settings.namespace(kvstore='nccl')), "kvstore: 'nccl' is not one of",
     "--kvstore: 'nccl' is not one of"),
    (lambda: run.check_args(settings.namespace(target_accuracy=1.5)), 'target_accuracy: must be in (0, 1]',
     '--target-accuracy: must be in (0, 1]'),
]


@pytest.mark.parametrize('call,library,command_line', LIBRARY_ERRORS)
def test_library_names_the_argument_command_line_the_option(call, library, command_line):
    with pytest.raises(MxnagError) as info:
        call()
    assert str(info.value).startswith(library) and '--' not in str(info.value), str(info.value)
    assert cli.message(info.value).startswith(command_line), cli.message(info.value)


def test_run_cli_exit_codes_and_one_line(capsys):
    def bad(argv):
        raise MxnagError('max_skips: must be >= 0 (max_skips here)', ('max_skips',))

    def stopped(argv):
        raise TrainingError('epoch 2: limit max_skips 3', ('max_skips',))
    assert cli.run_cli(bad, []) == 2
    assert capsys.readouterr().err.endswith(': error: --max-skips: must be >= 0 (max_skips here)\n')
    assert cli.run_cli(stopped, []) == 1
    assert capsys.readouterr().err.endswith(': stopped: epoch 2: limit --max-skips 3\n')
    assert cli.run_cli(lambda argv: 0, []) == 0


def test_a_recipe_setting_with_no_option_is_left_as_named():
    err = MxnagError('lr_multiplier: odd', ('lr_multiplier',))
    assert cli.message(err) == 'lr_multiplier: odd'


def test_the_toolkit_logs_and_the_command_line_shows_it(tmp_path, caplog):
    """Library code writes nothing to stderr itself: it logs (mxnag.* loggers); the recipes'
    handler writes the same lines they always showed ('warning: ...' for a warning)."""
    import logging
    import subprocess
    import sys
    from mxnag.train import checkpoint, models
    import mxnet as mx
    code = ('import logging, sys\n'
            'from mxnag.train import cli\n'
            'def main(argv):\n'
            '    logging.getLogger("mxnag.train.run").warning("skipping checkpoint %s: %s", "a", "bad")\n'
            '    logging.getLogger("mxnag.train.run").info("resuming from %s (epoch %d)", "b", 2)\n'
            '    logging.getLogger("mxnag.train.run").debug("not shown")\n'
            '    logging.getLogger("elsewhere").warning("not ours")\n'
            '    return 0\n'
            'sys.exit(cli.run_cli(main, []))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ['warning: skipping checkpoint a: bad', 'resuming from b (epoch 2)',
                                        'not ours']
    # in the library, a skipped checkpoint is a log record, not a write to stderr
    net = models.get_model('mlp')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    trainer = mx.gluon.Trainer(net.collect_params(), 'adanag')
    checkpoint.save(checkpoint.epoch_prefix(str(tmp_path), 1), net, {'epoch': 1}, trainer)
    (tmp_path / 'epoch-0001.params').write_bytes(b'damaged')
    args = settings.namespace(model='mlp', checkpoint_dir=str(tmp_path), resume=True, epochs=1,
                              no_progress=True)
    loader = [(mx.nd.zeros((4, 1, 28, 28)), mx.nd.zeros((4,)))]

    class Loader(list):
        batch_size = 4
        input_shape = (1, 28, 28)
        epoch = 0
    with caplog.at_level(logging.INFO, logger='mxnag'):
        run.train(net, args, Loader(loader), Loader(loader), [mx.cpu()],
                  settings.config_of(args, num_classes=10), 'test')
    assert [(r.name, r.levelname) for r in caplog.records] == [('mxnag.train.checkpoint', 'WARNING')]
    assert 'epoch-0001.params: checksum mismatch' in caplog.records[0].getMessage()


def test_make_mnist_runs_every_recipe_with_its_defaults():
    """The main job passes what a run is about (data, classes, shots, files), never a
    hyperparameter: what it shows is what each recipe's defaults give."""
    import os
    import re
    from conftest import ROOT
    with open(os.path.join(ROOT, 'Makefile')) as f:
        makefile = f.read()
    target = makefile.split('\nmnist:', 1)[1].split('\n\n', 1)[0]
    recipes = re.findall(r'recipes/(\w+)\.py', target)
    assert recipes == ['mnist_pretrain', 'mnist_finetune', 'mnist_stream']
    flags = set(re.findall(r'(--[a-z-]+)', target))
    assert flags <= {'--classes', '--shots', '--pretrained', '--data-dir', '--out', '--save', '--log',
                     '--compare-scratch', '--quiet'}, flags
