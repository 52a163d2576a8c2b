"""The recipes end to end on small subsets, resume, and their answers to bad input."""
import gzip
import json
import os
import shutil

import mxnet as mx
import numpy as np
import pytest

from conftest import run_recipe

run = run_recipe


def load_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, mnist_dir_module):
    out = tmp_path_factory.mktemp('pretrain')
    run('mnist_pretrain.py', '--model', 'lenet', '--classes', '0-4', '--shots', 60, '--epochs', 2,
        '--batch-size', 50, '--data-dir', mnist_dir_module, '--no-progress',
        '--out', out / 'results.json', '--save', out / 'ckpt.params', '--log', out / 'log.jsonl')
    return out


@pytest.fixture(scope='module')
def mnist_dir_module():
    from conftest import MNIST_DIR
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s' % MNIST_DIR)
    return MNIST_DIR


def test_pretrain_writes_results_checkpoint_and_log(pretrained):
    result = json.loads((pretrained / 'results.json').read_text())
    assert 0.5 < result['test_accuracy'] <= 1.0
    assert [h['epoch'] for h in result['history']] == [1, 2]
    assert result['config']['classes'] == '0-4' and result['timings']['train_seconds'] > 0
    meta = json.loads((pretrained / 'ckpt.json').read_text())
    assert meta['model'] == 'lenet' and meta['num_classes'] == 5
    events = [json.loads(line)['event'] for line in (pretrained / 'log.jsonl').read_text().splitlines()]
    assert events[0] == 'start' and events.count('epoch') == 2 and events[-1] == 'end'


@pytest.mark.parametrize('features', ['freeze', 'lr_mult'])
def test_finetune_with_scratch_comparison(pretrained, mnist_dir_module, tmp_path, features):
    run('mnist_finetune.py', '--pretrained', pretrained / 'ckpt.params', '--classes', '5-9',
        '--shots', 10, '--epochs', 3, '--features', features, '--data-dir', mnist_dir_module,
        '--compare-scratch', '--no-progress', '--out', tmp_path / 'ft.json',
        '--checkpoint-dir', tmp_path / 'ck')
    result = json.loads((tmp_path / 'ft.json').read_text())
    assert 0 < result['test_accuracy'] <= 1 and 0 < result['scratch_test_accuracy'] <= 1
    assert result['config']['features'] == features
    tuned = load_params(tmp_path / 'ck' / 'epoch-0003.params')
    original = load_params(pretrained / 'ckpt.params')
    assert tuned['output.weight'].shape == (5, 500)
    changed = not np.array_equal(tuned['features.0.weight'], original['features.0.weight'])
    assert changed == (features == 'lr_mult')


def test_zoo_model_pretrain_then_finetune(mnist_dir_module, tmp_path):
    """A GluonCV model with BatchNorm through both recipes on the fused path: each epoch's
    evaluation leaves its convolution weights in oneDNN's layouts before the next step."""
    run('mnist_pretrain.py', '--model', 'resnet18_v1', '--classes', '0-1', '--shots', 40,
        '--epochs', 2, '--batch-size', 20, '--data-dir', mnist_dir_module, '--no-progress',
        '--out', tmp_path / 'pre.json', '--save', tmp_path / 'resnet.params')
    run('mnist_finetune.py', '--pretrained', tmp_path / 'resnet.params', '--classes', '2-3',
        '--shots', 20, '--epochs', 2, '--batch-size', 20, '--data-dir', mnist_dir_module,
        '--no-progress', '--out', tmp_path / 'ft.json')
    pre = json.loads((tmp_path / 'pre.json').read_text())
    tuned = json.loads((tmp_path / 'ft.json').read_text())
    assert pre['config']['model'] == 'resnet18_v1' and len(pre['history']) == 2
    assert 0.5 < pre['test_accuracy'] <= 1 and 0 < tuned['test_accuracy'] <= 1


@pytest.mark.parametrize('states', [[], ['--opt-arg', 'state_bits=8']], ids=['float32', '8-bit'])
def test_resume_equals_uninterrupted_and_skips_a_corrupted_checkpoint(mnist_dir_module, tmp_path, states):
    args = ['--model', 'mlp', '--shots', 30, '--epochs', 4, '--batch-size', 32, '--optimizer',
            'adan', '--lr-schedule', 'cosine', '--warmup-epochs', 1, '--data-dir', mnist_dir_module,
            '--no-progress', '--keep', 4] + states
    run('mnist_pretrain.py', *args, '--checkpoint-dir', tmp_path / 'a', '--out', tmp_path / 'a.json')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    for ext in ('.json', '.params', '.states'):  # as if killed during epoch 4 ...
        os.remove(tmp_path / 'b' / ('epoch-0004' + ext))
    with open(tmp_path / 'b' / 'epoch-0003.states', 'r+b') as f:  # ... and epoch 3 damaged
        f.truncate(100)
    proc = run('mnist_pretrain.py', *args, '--checkpoint-dir', tmp_path / 'b', '--resume',
               '--out', tmp_path / 'b.json')
    assert 'epoch-0003.states: checksum mismatch' in proc.stderr
    a, b = load_params(tmp_path / 'a' / 'epoch-0004.params'), load_params(tmp_path / 'b' / 'epoch-0004.params')
    assert all(np.array_equal(a[k], b[k]) for k in a)
    history_a = json.loads((tmp_path / 'a.json').read_text())['history']
    history_b = json.loads((tmp_path / 'b.json').read_text())['history']
    assert [h['test_accuracy'] for h in history_a] == [h['test_accuracy'] for h in history_b]


def test_compare_optimizers_writes_json_markdown_and_plot(mnist_dir_module, tmp_path):
    proc = run('compare_optimizers.py', '--models', 'mlp', '--optimizers', 'sgd,adanag',
               '--seeds', 2, '--epochs', 1, '--data-dir', mnist_dir_module, '--out-dir', tmp_path)
    result = json.loads((tmp_path / 'sweep.json').read_text())
    assert len(result['runs']) == 4 and [r['optimizer'] for r in result['summary']] == ['sgd', 'adanag']
    table = (tmp_path / 'sweep.md').read_text()
    assert table in proc.stdout and '| mlp | adanag | 0.002 |' in table
    assert (tmp_path / 'sweep.png').read_bytes()[:4] == b'\x89PNG'


def corrupted_copy(mnist_dir, target):
    shutil.copytree(mnist_dir, target)
    path = os.path.join(target, 'train-labels-idx1-ubyte.gz')
    os.chmod(path, 0o644)
    raw = gzip.decompress(open(path, 'rb').read())
    with open(path, 'wb') as f:
        f.write(gzip.compress(raw[:-10]))
    return target


BAD_INPUTS = [
    ('mnist_pretrain.py', ['--data-dir', '{empty}'], 'train-images-idx3-ubyte'),
    ('mnist_pretrain.py', ['--data-dir', '{corrupted}'], 'train-labels-idx1-ubyte.gz: SHA-256'),
    ('mnist_pretrain.py', ['--model', 'resnet9000'], "unknown model 'resnet9000'"),
    ('mnist_pretrain.py', ['--optimizer', 'adamw9'], "--optimizer: unknown 'adamw9'"),
    ('mnist_pretrain.py', ['--opt-arg', 'betaa=0.9'], "unexpected keyword argument 'betaa'"),
    ('mnist_pretrain.py', ['--opt-arg', 'beta1=1.5'], 'beta1 must be in [0.0, 1.0), got 1.5'),
    ('mnist_pretrain.py', ['--ctx', 'gpu:3'], '--ctx: gpu:3 does not exist'),
    ('mnist_pretrain.py', ['--classes', '3-12'], 'classes'),
    ('mnist_pretrain.py', ['--lr-schedule', 'step'], '--lr-step-epochs'),
    ('mnist_pretrain.py', ['--resume'], '--resume: needs --checkpoint-dir'),
    ('mnist_pretrain.py', ['--kvstore', 'dist_sync'], 'not in a ps-lite cluster'),
    ('mnist_pretrain.py', ['--kvstore', 'nccl'], "--kvstore: 'nccl' is not one of"),
    ('mnist_pretrain.py', ['--amp'], '--amp: needs GPU contexts'),
    ('mnist_finetune.py', ['--pretrained', '{ckpt}', '--model', 'mlp'], 'checkpoint of a lenet model, not mlp'),
    ('mnist_finetune.py', ['--pretrained', '{garbage}'], 'garbage.json'),
    ('mnist_finetune.py', ['--pretrained', '{nowhere}'], 'checkpoint not found'),
]


@pytest.mark.parametrize('script,args,message', BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(script, args, message, pretrained, mnist_dir_module, tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'garbage.params').write_bytes(b'not a checkpoint')
    (tmp_path / 'garbage.json').write_text('{"format": "something else"}')
    places = {'empty': tmp_path / 'empty', 'ckpt': pretrained / 'ckpt.params',
              'garbage': tmp_path / 'garbage.params', 'nowhere': tmp_path / 'nowhere.params'}
    if '{corrupted}' in args:
        places['corrupted'] = corrupted_copy(mnist_dir_module, str(tmp_path / 'corrupted'))
    args = [a.format(**places) for a in args]
    if '--data-dir' not in args:
        args += ['--data-dir', mnist_dir_module]
    proc = run(script, *args, '--out', tmp_path / 'out.json', '--epochs', 1, '--no-progress',
               check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / 'out.json').exists()


def test_finetune_on_fashion_mnist(pretrained, tmp_path):
    if not os.path.exists('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'):
        pytest.skip('Debian package dataset-fashion-mnist not installed')
    run('mnist_finetune.py', '--pretrained', pretrained / 'ckpt.params', '--dataset', 'fashion-mnist',
        '--classes', 'all', '--shots', 30, '--epochs', 5, '--batch-size', 50, '--lr', 0.01,
        '--features', 'freeze', '--no-progress',
        '--out', tmp_path / 'ft.json')
    result = json.loads((tmp_path / 'ft.json').read_text())
    assert result['config']['dataset'] == 'fashion-mnist' and result['test_accuracy'] > 0.4


def test_too_many_skips_stop_the_recipe_with_exit_1(mnist_dir_module, tmp_path):
    """A learning rate of 1e30 sends the weights to infinity after one step: every later
    step is skipped, and the fourth in a row (--max-skips 3) stops the run, naming the option."""
    proc = run('mnist_pretrain.py', '--model', 'mlp', '--shots', 20, '--epochs', 1,
               '--batch-size', 10, '--optimizer', 'sgd', '--lr', 1e30, '--max-skips', 3,
               '--data-dir', mnist_dir_module, '--no-progress', '--out', tmp_path / 'out.json',
               check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert lines[0].startswith('mnist_pretrain.py: stopped: epoch 1, batch ')
    assert '4 steps in a row' in lines[0] and '(limit --max-skips 3)' in lines[0], lines[0]
    assert not (tmp_path / 'out.json').exists()


OUTPUT_CLASHES = [
    ('mnist_pretrain.py', ['--save', '{d}/ck.params', '--out', '{d}/ck.json'],
     '--save writes {d}/ck.json, which --out writes too'),
    ('mnist_pretrain.py', ['--save', '{d}/ck', '--log', '{d}/ck.states'],
     '--save writes {d}/ck.states, which --log writes too'),
    ('mnist_pretrain.py', ['--out', '{d}/r.json', '--log', '{d}/sub/../r.json'],
     '--log writes {d}/sub/../r.json, which --out writes too'),
    ('mnist_pretrain.py', ['--checkpoint-dir', '{d}/ck', '--save', '{d}/ck/epoch-0002.params'],
     '--checkpoint-dir: {d}/ck holds {d}/ck/epoch-0002.params, a name of its own checkpoints'),
    ('mnist_pretrain.py', ['--out', '{d}'], '--out: {d} is a folder, not a file'),
    ('mnist_pretrain.py', ['--checkpoint-dir', '{d}/file'], '--checkpoint-dir: {d}/file is a file, not a folder'),
    ('mnist_pretrain.py', ['--out', '/proc/x/r.json'],
     '--out: cannot create the folder /proc/x ('),
    ('mnist_pretrain.py', ['--log', '/proc/r.jsonl'], '--log: cannot write in the folder /proc ('),
    ('mnist_pretrain.py', ['--checkpoint-dir', '/proc/ck'], '--checkpoint-dir: cannot create the folder /proc/ck ('),
    ('mnist_finetune.py', ['--pretrained', '{ckpt}', '--out', '{ckpt_json}'],
     '--out writes {ckpt_json}, a file of the checkpoint that --pretrained reads'),
    ('mnist_finetune.py', ['--pretrained', '{ckpt}', '--log', '{d}/../pretrain/ckpt.states'],
     'a file of the checkpoint that --pretrained reads'),
]


@pytest.mark.parametrize('script,args,message', OUTPUT_CLASHES)
def test_unsafe_outputs_exit_2_before_anything_is_trained_or_written(script, args, message, pretrained,
                                                                    mnist_dir_module, tmp_path):
    """Two outputs that are one file, an output that would overwrite the checkpoint being
    read, an output whose folder cannot be created or written: one line, exit 2, at once."""
    d = tmp_path / 'run'
    d.mkdir()
    (d / 'file').write_text('')
    copy = tmp_path / 'pretrain'
    shutil.copytree(pretrained, copy)
    places = {'d': d, 'ckpt': copy / 'ckpt.params', 'ckpt_json': copy / 'ckpt.json'}
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    args = [a.format(**places) for a in args]
    proc = run(script, *args, '--data-dir', mnist_dir_module, '--shots', 10, '--epochs', 1,
               '--no-progress', check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert message.format(**places) in lines[0], lines[0]
    assert proc.stdout == ''  # nothing trained
    assert sorted(p.name for p in d.iterdir()) == ['file']  # nothing written
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # the input untouched
