"""`pip install mxnag[cpu]` brings MXNet and numpy only; the recipes' dependencies
(GluonCV, tqdm, matplotlib) come with the `recipes` extra, and without them a recipe says
in one line which extra to install."""
import configparser
import os
import subprocess
import sys

import pytest

from conftest import MNIST_DIR, ROOT

# runs a recipe with some modules hidden, as if they were not installed
HIDE = ('import runpy, sys\n'
        'for name in sys.argv[1].split(","):\n'
        '    sys.modules[name] = None  # `import name` raises ImportError\n'
        'sys.argv = sys.argv[2:]\n'
        'runpy.run_path(sys.argv[0], run_name="__main__")\n')
INSTALL = "pip install 'mxnag[recipes]' (the recipes extra)"


def requirement_names(text):
    return sorted(line.split('>')[0].split('=')[0].split('<')[0].strip()
                  for line in text.strip().splitlines() if line.strip() and not line.startswith('#'))


def test_the_base_install_and_the_mxnet_extras_bring_mxnet_and_numpy_only():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, 'setup.cfg'))
    base = requirement_names(config['options']['install_requires'])
    extras = config['options.extras_require']
    assert base == ['numpy']
    assert requirement_names(extras['cpu']) == ['mxnet']
    assert requirement_names(extras['cu112']) == ['mxnet-cu112']
    assert requirement_names(extras['recipes']) == ['gluoncv', 'matplotlib', 'pillow', 'tqdm']
    with open(os.path.join(ROOT, 'Makefile')) as f:
        makefile = f.read()
    assert "-e '.[cpu,recipes,test]'" in makefile and "-e '.[cpu,recipes]'" in makefile


CASES = [
    ('tqdm', 'mnist_pretrain.py', ['--model', 'mlp'],
     'mnist_pretrain.py: error: no module tqdm for progress bars (unless --no-progress): ' + INSTALL),
    ('gluoncv', 'mnist_pretrain.py', ['--model', 'resnet18_v1', '--no-progress'],
     'mnist_pretrain.py: error: no module gluoncv for GluonCV models: ' + INSTALL),
    ('matplotlib', 'compare_optimizers.py', ['--models', 'mlp', '--optimizers', 'sgd', '--seeds', '1',
                                             '--out-dir', '{tmp}/out'],
     "compare_optimizers.py: error: no module matplotlib for the sweep's plot: " + INSTALL),
]


@pytest.mark.parametrize('hidden,script,args,line', CASES)
def test_a_recipe_without_the_recipes_extra_says_which_to_install(hidden, script, args, line, tmp_path):
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s' % MNIST_DIR)
    argv = [a.format(tmp=tmp_path) for a in args] + ['--data-dir', MNIST_DIR, '--epochs', '1']
    if script == 'mnist_pretrain.py':
        argv += ['--shots', '10', '--out', str(tmp_path / 'out' / 'r.json')]
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', HIDE, hidden,
                           os.path.join(ROOT, 'recipes', script)] + argv,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line], proc.stderr
    assert proc.stdout == '' and not (tmp_path / 'out').exists()  # nothing trained or written


def test_without_tqdm_a_run_with_no_progress_bar_trains(tmp_path):
    """The progress bar is the only use of tqdm: --no-progress needs none of the extra
    but GluonCV models."""
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s' % MNIST_DIR)
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', HIDE, 'tqdm,matplotlib,gluoncv,PIL',
                           os.path.join(ROOT, 'recipes', 'mnist_pretrain.py'), '--model', 'mlp',
                           '--shots', '10', '--epochs', '1', '--no-progress', '--data-dir', MNIST_DIR,
                           '--out', str(tmp_path / 'r.json')],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'r.json').exists()


def test_an_image_folder_without_pillow_says_which_extra_to_install(tmp_path):
    (tmp_path / 'd' / 'cat').mkdir(parents=True)
    for name in ('a.png', 'b.png'):
        (tmp_path / 'd' / 'cat' / name).write_bytes(b'x')
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', HIDE, 'PIL',
                           os.path.join(ROOT, 'recipes', 'pretrain.py'), '--data', 'folder:%s' % (tmp_path / 'd'),
                           '--model', 'mlp', '--no-progress'],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        'pretrain.py: error: no module PIL for image files: ' + INSTALL], proc.stderr
