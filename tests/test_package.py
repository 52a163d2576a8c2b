"""The package itself: registration, creation by name, argument checks, import errors."""
import os
import pickle
import subprocess
import sys

import mxnet as mx
import pytest

import mxnag
from mxnag import AdaNAG

from optimizers import OPTIMIZERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name,cls', [(info.name, info.cls) for info in OPTIMIZERS])
def test_registered_and_created_by_name(name, cls):
    assert mx.optimizer.Optimizer.opt_registry[name] is cls
    opt = mx.optimizer.create(name.upper(), learning_rate=0.1, wd=0.01, rescale_grad=0.5,
                              clip_gradient=1.0, multi_precision=True, begin_num_update=3,
                              param_idx2name={0: 'fc_weight'})
    assert isinstance(opt, cls) and opt.lr == 0.1 and opt.wd == 0.01 and opt.num_update == 3


@pytest.mark.parametrize('info', OPTIMIZERS, ids=lambda info: info.name)
def test_defaults(info):
    opt = info.cls()
    assert {name: getattr(opt, name) for name in info.defaults} == info.defaults


def test_every_registered_mxnag_optimizer_is_in_the_tests_table():
    assert sorted(mxnag.optim.optimizers()) == sorted(info.name for info in OPTIMIZERS)


def test_scheduler_base_lr_is_kept_when_no_learning_rate_given():
    scheduler = mx.lr_scheduler.FactorScheduler(step=10, factor=0.5, base_lr=0.3)
    assert AdaNAG(lr_scheduler=scheduler).learning_rate == 0.3


@pytest.mark.parametrize('name,arg,value', [(info.name, arg, value) for info in OPTIMIZERS
                                            for arg, value in info.bad_values])
def test_bad_hyperparameter_is_a_value_error_naming_it(name, arg, value):
    with pytest.raises(ValueError, match=r'%s must be ' % arg):
        mx.optimizer.create(name, **{arg: value})


@pytest.mark.parametrize('name,arg,value', [(info.name, arg, value) for info in OPTIMIZERS
                                            for arg, value in info.bad_types])
def test_bad_type_is_a_type_error_naming_it(name, arg, value):
    with pytest.raises(TypeError, match=arg):
        mx.optimizer.create(name, **{arg: value})


@pytest.mark.parametrize('name', [info.name for info in OPTIMIZERS])
def test_misspelled_keyword_is_a_type_error(name):
    with pytest.raises(TypeError, match="unexpected keyword argument 'betas'"):
        mx.optimizer.create(name, betas=(0.9, 0.99))


def test_bad_begin_num_update():
    with pytest.raises(ValueError, match='begin_num_update'):
        AdaNAG(begin_num_update=-1)


@pytest.mark.parametrize('cls', [info.cls for info in OPTIMIZERS])
def test_pickles(cls):
    opt = cls(learning_rate=0.05, wd=0.1)
    clone = pickle.loads(pickle.dumps(opt))
    assert type(clone) is cls and clone.lr == 0.05 and clone.wd == 0.1


@pytest.mark.parametrize('info', OPTIMIZERS, ids=lambda info: info.name)
def test_docstrings_carry_equations_parameters_and_references(info):
    """Each class docstring gives the update at step t and every hyperparameter; each
    module's docstring its references."""
    doc = info.cls.__doc__
    assert 'At a parameter\'s step ``t``' in doc and 'Parameters' in doc
    assert all(name in doc for name in info.defaults if name != 'lr')
    assert 'References' in sys.modules[info.cls.__module__].__doc__


def test_import_without_mxnet_says_which_extra_to_install():
    """Hide mxnet from a fresh interpreter: `import mxnag` fails with one clear line."""
    code = ('import sys\n'
            'class Block:\n'
            '    def find_spec(self, name, path=None, target=None):\n'
            '        if name == "mxnet" or name.startswith("mxnet."):\n'
            '            raise ImportError("No module named %r" % name)\n'
            'sys.meta_path.insert(0, Block())\n'
            'import mxnag\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: mxnag needs Apache MXNet 1.9.1')
    assert "'mxnag[cpu]'" in last and "'mxnag[cu112]'" in last


def test_version():
    assert mxnag.__version__.count('.') == 2


def test_the_library_and_the_cluster_import_nothing_of_the_layers_above():
    """``import mxnag`` (what a kvstore server unpickling an optimizer runs) loads the
    optimizer library only; ``mxnag.dist`` loads nothing of the training toolkit; no
    gluoncv, tqdm or matplotlib either way."""
    script = ('import sys, mxnag, mxnag.optim, mxnag.kernels\n'
              'first = sorted(m for m in sys.modules if m.startswith("mxnag"))\n'
              'import mxnag.dist.launch, mxnag.dist.server, mxnag.dist.worker\n'
              'second = sorted(m for m in sys.modules if m.startswith("mxnag"))\n'
              'heavy = [m for m in ("gluoncv", "tqdm", "matplotlib") if m in sys.modules]\n'
              'print(first); print(second); print(heavy)\n')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second, heavy = [eval(line) for line in proc.stdout.splitlines()[-3:]]
    assert all(m.split('.')[1] in ('optim', 'kernels') for m in first if m != 'mxnag'), first
    assert not any(m.startswith('mxnag.train') for m in second), second
    assert heavy == []


def test_the_readme_tables_are_the_declared_hyperparameters():
    """Each optimizer's argument table in the README lists its declared hyperparameters
    (mxnag.optim.base.Hyperparameter) with their defaults and ranges, and nothing else."""
    import ast
    import re
    from mxnag.optim.base import DOMAINS
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'README.md')).read()
    ranges = {'decay': '[0, 1)', 'positive': '> 0', 'non-negative': '>= 0', 'bool': 'bool'}
    assert set(ranges) == set(DOMAINS)
    for info in OPTIMIZERS:
        section = readme.split("(`'%s'`)" % info.name, 1)[1].split('\n### ', 1)[0].split('\n## ', 1)[0]
        rows = re.findall(r'^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|', section, re.M)
        table = {name: (default.strip(), bounds.strip()) for name, default, bounds in rows}
        assert table.pop('learning_rate')[0].startswith(repr(info.defaults['lr']))
        table = {name: (ast.literal_eval(default), bounds) for name, (default, bounds) in table.items()}
        declared = {h.name: (h.default, ranges[h.domain]) for h in info.cls.hyperparameters}
        assert table == declared, info.name
