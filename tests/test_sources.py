"""Data sources (mxnag.train.sources, images): image folders (PNG, JPEG), RecordIO files as
im2rec writes them, CIFAR-10/100 files of the python and binary versions, all made here
on small data; what each tells the toolkit; the transforms; bad input named; and the
recipes end to end on each source, with decoding workers and an exact resume."""
import io
import json
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from mxnag.train import data, images, run, settings, sources
from mxnag.train.data import DataError

from conftest import ROOT, run_recipe


def pictures(rng, count, size=(12, 10), channels=3):
    """uint8 images whose mean brightness says their class (learnable), and labels."""
    labels = np.arange(count) % 3
    base = (labels * 80 + 20)[:, None, None, None]
    noise = rng.integers(0, 30, (count,) + size + (channels,))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int32)


def write_image(path, image, image_format='PNG'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(path, format=image_format)


def image_folder(root, rng, split=True, channels=3, image_format='PNG', count=24, size=(12, 10)):
    names = ['cat', 'dog', 'fox']
    ext = '.png' if image_format == 'PNG' else '.jpg'
    for part in (['train', 'test'] if split else ['']):
        x, y = pictures(rng, count, size=size, channels=channels)
        for k, (image, label) in enumerate(zip(x, y)):
            write_image(os.path.join(root, part, names[label], '%03d%s' % (k, ext)), image, image_format)
    return root


def record_file(prefix, rng, count=24, lst=True):
    """PREFIX.rec/.idx (and PREFIX.lst) as MXNet's im2rec writes them: PNG-encoded images."""
    x, y = pictures(rng, count)
    writer = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    lines = []
    for k, (image, label) in enumerate(zip(x, y)):
        blob = io.BytesIO()
        Image.fromarray(image).save(blob, format='PNG')
        writer.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), k, 0), blob.getvalue()))
        lines.append('%d\t%f\t%s/%03d.png' % (k, label, ['cat', 'dog', 'fox'][label], k))
    writer.close()
    if lst:
        with open(prefix + '.lst', 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return x, y


def cifar_files(root, rng, fine=False, version='python', per_file=6):
    """CIFAR-10 (or -100 with ``fine``) files of the python or binary version, tiny."""
    kind = 'cifar100' if fine else 'cifar10'
    folder, train_files, test_files, names_file = sources._CIFAR_FILES[kind][version]
    path = os.path.join(root, folder)
    os.makedirs(path)
    classes = 100 if fine else 10
    written = {}
    for name in train_files + test_files:
        pixels = rng.integers(0, 256, (per_file, 3072)).astype(np.uint8)
        labels = rng.permutation(np.arange(per_file) % 3)  # classes 0-2 in every file
        written[name] = (pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
        if version == 'python':
            batch = {b'data': pixels, (b'fine_labels' if fine else b'labels'): list(map(int, labels)),
                     b'batch_label': b'x'}
            if fine:
                batch[b'coarse_labels'] = [0] * per_file
            with open(os.path.join(path, name), 'wb') as f:
                pickle.dump(batch, f)
        else:
            head = np.stack([np.zeros(per_file, np.uint8), labels.astype(np.uint8)], 1) if fine \
                else labels.astype(np.uint8)[:, None]
            np.concatenate([head, pixels], 1).tofile(os.path.join(path, name))
    names = ['class%d' % k for k in range(classes)]
    if version == 'python':
        with open(os.path.join(path, names_file), 'wb') as f:
            pickle.dump({(b'fine_label_names' if fine else b'label_names'): [n.encode() for n in names]}, f)
    else:
        with open(os.path.join(path, names_file), 'w') as f:
            f.write('\n'.join(names) + '\n')
    return written, train_files, test_files, names


# -- what each source tells ------------------------------------------------------------------

@pytest.mark.parametrize('channels', [1, 3])
def test_image_folder_with_train_and_test(tmp_path, rng, channels):
    image_folder(str(tmp_path), rng, channels=channels)
    source = sources.parse('folder:%s' % tmp_path)
    assert source.class_names == ('cat', 'dog', 'fox') and source.channels == channels
    assert source.size == (12, 10) and len(source.train) == len(source.test) == 24
    assert list(source.train.labels[:3]) == [0, 0, 0] and not source.in_memory
    image = source.train.image(0)
    assert image.shape == (12, 10, channels) and image.dtype == np.uint8
    stored = np.asarray(Image.open(source.train.names[0]))
    np.testing.assert_array_equal(image[..., 0] if channels == 1 else image, stored)
    pixels = np.stack([source.train.image(i) for i in range(24)]) / 255.0
    np.testing.assert_allclose(source.mean, pixels.reshape(-1, channels).mean(0), rtol=1e-9)
    np.testing.assert_allclose(source.std, pixels.reshape(-1, channels).std(0), rtol=1e-6)


def test_image_folder_without_a_split_is_split_per_class_with_the_seed(tmp_path, rng):
    image_folder(str(tmp_path), rng, split=False, count=30)
    a = sources.parse('folder:%s' % tmp_path, val_fraction=0.2, seed=1)
    b = sources.parse('folder:%s' % tmp_path, val_fraction=0.2, seed=1)
    c = sources.parse('folder:%s' % tmp_path, val_fraction=0.2, seed=2)
    assert len(a.train) == 24 and len(a.test) == 6
    assert np.bincount(a.test.labels).tolist() == [2, 2, 2]
    assert a.test.names == b.test.names and a.test.names != c.test.names
    assert not set(a.test.names) & set(a.train.names)


def test_jpeg_folder(tmp_path, rng):
    image_folder(str(tmp_path), rng, image_format='JPEG')
    source = sources.parse('folder:%s' % tmp_path)
    x, _ = pictures(np.random.default_rng(0), 1)
    assert source.train.image(5).shape == (12, 10, 3)
    assert abs(float(source.train.image(0).mean()) - 20 - 15) < 10  # class 0 is dark


@pytest.mark.parametrize('layout', ['prefix', 'folder'])
def test_record_file(tmp_path, rng, layout):
    if layout == 'prefix':
        x, y = record_file(str(tmp_path / 'all'), rng, count=30)
        source = sources.parse('rec:%s' % (tmp_path / 'all'), val_fraction=0.2)
        assert len(source.train) == 24 and len(source.test) == 6
        k = int(np.flatnonzero(source.train.labels == 2)[0])
        assert source.train.labels[k] == 2
    else:
        x, y = record_file(str(tmp_path / 'train'), rng)
        record_file(str(tmp_path / 'val'), rng, lst=False)
        source = sources.parse('rec:%s' % tmp_path)
        assert len(source.train) == 24 and len(source.test) == 24
        np.testing.assert_array_equal(source.train.image(7), x[7])
        np.testing.assert_array_equal(source.train.labels, y)
    assert source.class_names == ('cat', 'dog', 'fox') and source.channels == 3


@pytest.mark.parametrize('version', ['python', 'binary'])
@pytest.mark.parametrize('fine', [False, True])
def test_cifar_files(tmp_path, rng, version, fine):
    written, train_files, test_files, names = cifar_files(str(tmp_path), rng, fine, version)
    source = sources.parse('%s:%s' % ('cifar100' if fine else 'cifar10', tmp_path))
    assert source.class_names == tuple(names) and source.channels == 3 and source.size == (32, 32)
    assert source.in_memory and len(source.train) == 6 * len(train_files)
    want_x = np.concatenate([written[f][0] for f in train_files])
    np.testing.assert_array_equal(source.train.images, want_x)
    np.testing.assert_array_equal(source.train.labels, np.concatenate([written[f][1] for f in train_files]))
    np.testing.assert_array_equal(source.test.images, written[test_files[0]][0])
    np.testing.assert_allclose(source.mean, (want_x.reshape(-1, 3) / 255.0).mean(0))


def test_cifar_download_is_checked_and_extracted_whole(tmp_path, rng, monkeypatch):
    """--download (here from a file:// URL standing for CIFAR's own): the archive's folder
    lands in PATH and reads as the files do; a wrong MD5 or a failed fetch is named and
    leaves nothing behind; without --download nothing is fetched."""
    import hashlib
    import tarfile
    written, train_files, _, names = cifar_files(str(tmp_path / 'made'), rng)
    archive = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(tmp_path / 'made' / 'cifar-10-batches-py', 'cifar-10-batches-py')
        tar.add(tmp_path / 'made' / 'cifar-10-batches-py' / 'test_batch', 'elsewhere/test_batch')
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    url = archive.as_uri()
    target = tmp_path / 'data'
    with pytest.raises(DataError, match='the downloaded file has MD5 %s, not 0123' % md5):
        sources.download_cifar('cifar10', str(target), url, '0123')
    assert os.listdir(target) == []
    with pytest.raises(DataError, match='download failed'):
        sources.download_cifar('cifar10', str(target), url + '.missing', md5)
    assert os.listdir(target) == []
    with pytest.raises(DataError, match='no CIFAR10 files'):
        sources.parse('cifar10:%s' % target)  # nothing is fetched without download
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, 'cifar10', (url, md5))
    source = sources.parse('cifar10:%s' % target, download=True)
    assert os.listdir(target) == ['cifar-10-batches-py']
    assert source.class_names == tuple(names)
    np.testing.assert_array_equal(source.train.images, np.concatenate([written[f][0] for f in train_files]))
    archive.write_bytes(b'not this')  # found now: not fetched again
    assert sources.parse('cifar10:%s' % target, download=True).class_names == tuple(names)
    partial = tmp_path / 'partial'
    (partial / 'cifar-10-batches-py').mkdir(parents=True)  # a download cut short by hand
    (partial / 'cifar-10-batches-py' / 'data_batch_1').write_bytes(b'x')
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(tmp_path / 'made' / 'cifar-10-batches-py', 'cifar-10-batches-py')
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, 'cifar10', (url, hashlib.md5(archive.read_bytes()).hexdigest()))
    with pytest.raises(DataError, match='cifar-10-batches-py: exists but is not a whole CIFAR10 set'):
        sources.parse('cifar10:%s' % partial, download=True)


def test_mnist_source_is_the_idx_path_bit_for_bit(mnist_dir):
    source = sources.parse('mnist', mnist_dir)
    assert source.class_names == tuple('0123456789') and source.in_memory and source.channels == 1
    transform = images.Transform((28, 28), 'none', True, source.mean, source.std)
    got = transform.standardise(source.train.images[:3000])
    np.testing.assert_array_equal(got, data.normalize(source.train.images[:3000, ..., 0], 'mnist'))


# -- transforms ---------------------------------------------------------------------------

def test_transforms_shapes_and_seeding(rng):
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    for augment in images.AUGMENTS:
        for train in (True, False):
            t = images.Transform((32, 32), augment, train, (0.5,) * 3, (0.25,) * 3)
            a = t(image, np.random.RandomState([1, 2, 3]))
            b = t(image, np.random.RandomState([1, 2, 3]))
            assert a.shape == (3, 32, 32) and a.dtype == np.float32
            np.testing.assert_array_equal(a, b)  # the same random numbers, the same image
    crop = images.Transform((40, 50), 'crop-flip', True, (0.0,) * 3, (1 / 255.0,) * 3)
    outs = [crop(image, np.random.RandomState(k)) for k in range(20)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    for out in outs:  # a shifted (maybe flipped) copy of the image, zeros where padded
        assert set(np.unique(np.round(out))) <= set(np.unique(image)) | {0}
    shift = images.Transform((40, 50), 'crop', True, (0.0,) * 3, (1 / 255.0,) * 3)
    for k in range(20):  # no flip: the crop a crop-flip of the same numbers starts from
        state = np.random.RandomState(k)
        top, left = state.randint(0, 2 * 5 + 1, 2)
        padded = np.zeros((50, 60, 3), np.uint8)
        padded[5:-5, 5:-5] = image
        want = padded[top:top + 40, left:left + 50].transpose(2, 0, 1)
        np.testing.assert_allclose(shift(image, np.random.RandomState(k)), want, rtol=1e-6)
    plain = images.Transform((40, 50), 'none', True, (0.0,) * 3, (1 / 255.0,) * 3)
    np.testing.assert_allclose(plain(image), image.transpose(2, 0, 1), rtol=1e-6)


def test_centre_crop_for_evaluation_of_imagenet_style_training():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 90:110] = 255  # a bright bar in the middle
    out = images.Transform((64, 64), 'resized-crop-flip', False, (0.0,) * 3, (1 / 255.0,) * 3)(image)
    assert out.shape == (3, 64, 64) and out[:, :, 32].min() > 200 and out[:, :, 0].max() < 10


# -- bad input ----------------------------------------------------------------------------

def test_bad_sources_are_named(tmp_path, rng):
    def refused(spec, pattern, **kwargs):
        with pytest.raises(DataError, match=pattern):
            sources.parse(spec, **kwargs)
    refused('imagenet', "unknown source 'imagenet'")
    refused('folder:', 'folder needs a path')
    refused('folder:%s' % (tmp_path / 'none'), 'none: no such folder')
    (tmp_path / 'empty').mkdir()
    refused('folder:%s' % (tmp_path / 'empty'), 'empty: no class folders')
    image_folder(str(tmp_path / 'a'), rng)
    (tmp_path / 'a' / 'train' / 'owl').mkdir()
    refused('folder:%s' % (tmp_path / 'a'), 'train/owl: a class folder with no images')
    image_folder(str(tmp_path / 'b'), rng)
    os.rename(tmp_path / 'b' / 'test' / 'fox', tmp_path / 'b' / 'test' / 'wolf')
    refused('folder:%s' % (tmp_path / 'b'), 'b/test: test classes that are not training classes: wolf')
    record_file(str(tmp_path / 'r'), rng)
    os.remove(tmp_path / 'r.idx')
    refused('rec:%s' % (tmp_path / 'r'), r'r.idx: missing \(a record file is PREFIX.rec with its index')
    cifar_files(str(tmp_path / 'c100'), rng, fine=True)
    refused('cifar10:%s' % (tmp_path / 'c100'), 'holds CIFAR100 files, not CIFAR10')
    refused('cifar10:%s' % (tmp_path / 'empty'), 'no CIFAR10 files')
    refused('mnist:%s' % tmp_path, 'mnist takes no path')


def test_a_crafted_cifar_pickle_runs_nothing(tmp_path, rng):
    cifar_files(str(tmp_path), rng)
    marker = tmp_path / 'ran'

    class RunsCode:
        def __reduce__(self):
            return os.system, ('touch %s' % marker,)
    with open(tmp_path / 'cifar-10-batches-py' / 'data_batch_3', 'wb') as f:
        pickle.dump({b'data': RunsCode()}, f)
    with pytest.raises(DataError, match='data_batch_3: not a CIFAR python file'):
        sources.parse('cifar10:%s' % tmp_path)
    assert not marker.exists()


def test_a_corrupt_image_is_named(tmp_path, rng):
    """When the source measures its images (a sample of up to 1000 of them: listed), and
    when an image is read."""
    image_folder(str(tmp_path), rng)
    broken = tmp_path / 'train' / 'dog' / '001.png'
    good = broken.read_bytes()
    broken.write_bytes(b'not a png')
    assert sources.parse('folder:%s' % tmp_path).unreadable == (str(broken),)
    broken.write_bytes(good)
    source = sources.parse('folder:%s' % tmp_path)
    broken.write_bytes(b'not a png')
    with pytest.raises(DataError, match='dog/001.png: not an image this build can decode'):
        source.train.image(source.train.names.index(str(broken)))


# -- the recipes on every source ----------------------------------------------------------

recipe = run_recipe

COMMON = ['--model', 'lenet', '--epochs', 2, '--batch-size', 12, '--no-progress']


@pytest.mark.parametrize('kind', ['folder-png', 'folder-jpeg', 'rec', 'cifar10', 'cifar100-binary'])
def test_pretrain_and_finetune_on_each_source(tmp_path, rng, kind):
    if kind.startswith('folder'):
        spec = 'folder:%s' % image_folder(str(tmp_path / 'd'), rng,
                                          image_format='JPEG' if kind.endswith('jpeg') else 'PNG')
    elif kind == 'rec':
        record_file(str(tmp_path / 'all'), rng, count=36)
        spec = 'rec:%s' % (tmp_path / 'all')
    else:
        cifar_files(str(tmp_path / 'd'), rng, fine=kind.startswith('cifar100'),
                    version='binary' if kind.endswith('binary') else 'python')
        spec = '%s:%s' % (kind.split('-')[0], tmp_path / 'd')
    recipe('pretrain.py', '--data', spec, *COMMON, '--input-size', 16, '--out', tmp_path / 'p.json',
           '--save', tmp_path / 'ck.params')
    result = json.loads((tmp_path / 'p.json').read_text())
    assert result['config']['data'] == spec and 0 <= result['test_accuracy'] <= 1
    meta = json.loads((tmp_path / 'ck.json').read_text())
    assert meta['input']['shape'] == [3, 16, 16] and len(meta['input']['mean']) == 3
    assert result['class_names'] == meta['input']['class_names']
    recipe('finetune.py', '--pretrained', tmp_path / 'ck.params', '--data', spec, '--classes', '0-1',
           '--epochs', 1, '--batch-size', 6, '--no-progress', '--out', tmp_path / 'f.json')
    tuned = json.loads((tmp_path / 'f.json').read_text())
    assert tuned['config']['num_classes'] == 2 and tuned['class_names'] == result['class_names'][:2]


def test_the_optimizer_sweep_on_a_folder(tmp_path, rng):
    """compare_optimizers.py --data: shapes and classes from the source; --tune validates on
    a sixth of each class of the training images; --target times the runs."""
    spec = 'folder:%s' % image_folder(str(tmp_path / 'd'), rng, count=36, size=(28, 28))
    proc = recipe('compare_optimizers.py', '--data', spec, '--models', 'lenet', '--optimizers',
                  'adanag', '--tune', '--out-dir', tmp_path)
    tuned = json.loads((tmp_path / 'tuned_lr.json').read_text())
    assert list(tuned) == ['lenet'] and tuned['lenet']['adanag'] in (1e-3, 2e-3, 4e-3)
    assert proc.stdout.count('tune lenet adanag') == 3
    recipe('compare_optimizers.py', '--data', spec, '--models', 'lenet,mlp', '--optimizers',
           'adanag,sgd', '--seeds', 1, '--epochs', 2, '--lrs', tmp_path / 'tuned_lr.json',
           '--target', 'mlp=0.01', '--out-dir', tmp_path)
    result = json.loads((tmp_path / 'sweep.json').read_text())
    assert result['data'] == spec and result['targets'] == {'mlp': 0.01}
    lrs = {(r['model'], r['optimizer']): r['lr'] for r in result['runs']}
    assert lrs == {('lenet', 'adanag'): tuned['lenet']['adanag'], ('lenet', 'sgd'): 0.01,
                   ('mlp', 'adanag'): 2e-3, ('mlp', 'sgd'): 0.01}  # tuned, else the defaults
    mlp = [r for r in result['runs'] if r['model'] == 'mlp']
    assert all(r['epochs_to_target'] == 1 for r in mlp)
    assert '| lenet | adanag |' in (tmp_path / 'sweep.md').read_text()
    bad = recipe('compare_optimizers.py', '--data', spec, '--target', 'vgg=0.5', check=False)
    assert bad.returncode == 2 and "--target: 'vgg=0.5': want one of --models" in bad.stderr


def test_the_mnist_presets_and_data_mnist_are_one_run(tmp_path, mnist_dir):
    args = ['--model', 'mlp', '--shots', 20, '--epochs', 1, '--batch-size', 50, '--data-dir', mnist_dir,
            '--no-progress', '--save']
    recipe('mnist_pretrain.py', *args, tmp_path / 'a.params')
    recipe('pretrain.py', '--data', 'mnist', *args, tmp_path / 'b.params')
    a, b = mx.nd.load(str(tmp_path / 'a.params')), mx.nd.load(str(tmp_path / 'b.params'))
    assert all(np.array_equal(a[k].asnumpy(), b[k].asnumpy()) for k in a)


def test_workers_and_resume_give_exactly_the_uninterrupted_weights(tmp_path, rng):
    """Augmented images decoded by 2 worker processes, a run stopped after its first
    epoch and resumed: the same weights as one process's uninterrupted run."""
    spec = 'folder:%s' % image_folder(str(tmp_path / 'd'), rng, count=30)
    args = ['--data', spec, '--model', 'lenet', '--batch-size', 10, '--no-progress', '--augment',
            'crop-flip', '--input-size', 16]
    recipe('pretrain.py', *args, '--epochs', 2, '--save', tmp_path / 'one.params')
    recipe('pretrain.py', *args, '--epochs', 2, '--workers', 2, '--checkpoint-dir', tmp_path / 'ck',
           '--target-accuracy', 1e-9)  # stops after epoch 1 (any accuracy reaches it)
    assert sorted(os.listdir(tmp_path / 'ck'))[0].startswith('epoch-0001')
    recipe('pretrain.py', *args, '--epochs', 2, '--workers', 2, '--checkpoint-dir', tmp_path / 'ck',
           '--resume', '--save', tmp_path / 'two.params')
    a, b = mx.nd.load(str(tmp_path / 'one.params')), mx.nd.load(str(tmp_path / 'two.params'))
    assert all(np.array_equal(a[k].asnumpy(), b[k].asnumpy()) for k in a)


@pytest.mark.parametrize('args, message', [
    (['--data', 'folder:{tmp}/none'], 'none: no such folder'),
    (['--data', 'folder:{tmp}/d', '--classes', '0-4'], "--classes: '0-4' must name distinct classes in 0-2"),
    (['--data', 'folder:{tmp}/d', '--normalize', 'imagenet', '--input-size', '8'], None),
    (['--data', 'mnist', '--dataset', 'fashion-mnist'], '--data: give it or --dataset, not both'),
])
def test_bad_data_options_exit_2_with_one_line(tmp_path, rng, args, message):
    image_folder(str(tmp_path / 'd'), rng, channels=1)
    args = [a.replace('{tmp}', str(tmp_path)) for a in args]
    proc = recipe('pretrain.py', *args, '--model', 'mlp', '--epochs', 1, '--no-progress', check=False)
    if message is None:  # imagenet normalisation of grey images
        message = '--normalize: imagenet needs 3-channel images'
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_settings_of_the_sources_are_resume_keys():
    for name in ('data', 'val_fraction', 'input_size', 'augment', 'normalize'):
        assert settings.BY_NAME[name].resume
    assert not settings.BY_NAME['workers'].config  # decoding processes change no result
    args = settings.namespace('pretrain', data='folder:x', dataset='fashion-mnist')
    with pytest.raises(Exception, match='give it or dataset, not both'):
        run.open_source(args)


# -- a model-zoo parameter file as --pretrained -------------------------------------------

def zoo_file(directory, name, classes, size):
    """A parameter file as GluonCV's model zoo downloads it (NAME-HASH.params: the
    network's save_parameters), with made-up weights."""
    from mxnag.train import models
    net = models.get_model(name, classes, hybridize=False)
    mx.random.seed(3)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, size, size)))
    path = os.path.join(directory, '%s-0123abcd.params' % name)
    net.save_parameters(path)
    return path


def test_finetune_a_model_zoo_file_on_a_folder(tmp_path, rng):
    """The README's example: a GluonCV model-zoo file copied from ~/.mxnet/models,
    fine-tuned on a folder of images; its model, classes, input size and normalisation
    come from the file; the features start from its weights."""
    from mxnag.train import finetune
    path = zoo_file(str(tmp_path), 'cifar_resnet20_v1', 10, 32)
    meta = finetune.pretrained_meta(path)
    assert (meta['model'], meta['num_classes'], meta['input']['shape']) == ('cifar_resnet20_v1', 10, [3, 32, 32])
    assert meta['input']['mean'] == [0.4914, 0.4822, 0.4465]
    net, _ = finetune.load_pretrained(path, [mx.cpu()])
    saved = mx.nd.load(path)
    some = sorted(saved)[0]
    np.testing.assert_array_equal(_param(net, some).data().asnumpy(), saved[some].asnumpy())
    spec = 'folder:%s' % image_folder(str(tmp_path / 'd'), rng)
    recipe('finetune.py', '--pretrained', path, '--data', spec, '--classes', 'all', '--epochs', 1,
           '--batch-size', 8, '--features', 'freeze', '--no-progress', '--out', tmp_path / 'f.json')
    result = json.loads((tmp_path / 'f.json').read_text())
    assert result['config']['num_classes'] == 3 and result['class_names'] == ['cat', 'dog', 'fox']


def _param(net, structural_name):
    """The parameter ``save_parameters`` calls ``structural_name`` ('features.0.weight')."""
    block = net
    *path, attr = structural_name.split('.')
    for part in path:
        block = block._children[part]
    return block._reg_params[attr]


def test_imagenet_zoo_file_defaults_and_bad_zoo_files(tmp_path):
    from mxnag.errors import MxnagError
    from mxnag.train import finetune
    path = zoo_file(str(tmp_path), 'mobilenetv2_0.25', 1000, 64)
    meta = finetune.pretrained_meta(path)
    assert meta['num_classes'] == 1000 and meta['input']['shape'] == [3, 224, 224]
    assert meta['input']['mean'] == list(sources.IMAGENET_MEAN)
    unnamed = tmp_path / 'weights.params'
    unnamed.write_bytes(open(path, 'rb').read())
    with pytest.raises(MxnagError, match='nor named like a model-zoo file'):
        finetune.pretrained_meta(str(unnamed))
    assert finetune.pretrained_meta(str(unnamed), 'mobilenetv2_0.25')['num_classes'] == 1000
    with pytest.raises(MxnagError, match='weights.params: parameters do not fit a resnet18_v1 model'):
        finetune.load_pretrained(str(unnamed), [mx.cpu()], 'resnet18_v1')
    with pytest.raises(MxnagError, match="no weights of the output layer 'fc' of a resnet50_v1b"):
        finetune.pretrained_meta(str(unnamed), 'resnet50_v1b')
    (tmp_path / 'junk-0123abcd.params').write_bytes(b'junk')
    with pytest.raises(MxnagError, match='junk-0123abcd.params: not an MXNet parameter file'):
        finetune.pretrained_meta(str(tmp_path / 'junk-0123abcd.params'), 'resnet18_v1')


# -- images that do not decode ------------------------------------------------------------

def test_unreadable_images_are_skipped_counted_and_named(tmp_path, rng):
    """In a loader (with and without decoding workers): left out of their batch, each
    counted once however often it is met, named in the log; one more than the limit
    stops the run naming the file."""
    from mxnag.errors import TrainingError
    image_folder(str(tmp_path), rng)
    source = sources.parse('folder:%s' % tmp_path)
    for name in ('dog/001.png', 'fox/002.png'):
        (tmp_path / 'train' / name).write_bytes(b'not a png')
    transform = images.Transform((12, 10), 'crop-flip', True, source.mean, source.std)
    for workers in (0, 2):
        bad = images.BadImages(limit=2)
        loader = images.ImageLoader(source.train, transform, 8, workers=workers, bad_images=bad)
        for _ in range(2):
            sizes = [len(y) for _, y in loader]
            assert sum(sizes) == 22 and len(sizes) == 3
        assert sorted(os.path.basename(os.path.dirname(w)) + '/' + os.path.basename(w)
                      for w in bad.seen) == ['dog/001.png', 'fox/002.png']
        loader = images.ImageLoader(source.train, transform, 8, workers=workers,
                                    bad_images=images.BadImages(limit=1))
        with pytest.raises(TrainingError, match=r'(dog/001|fox/002).png: not an image this build can '
                                                r'decode .*2 images that do not decode, more than '
                                                r'max_bad_images \(1\)'):
            list(loader)


def test_recipes_skip_or_stop_on_unreadable_images(tmp_path, rng):
    root = image_folder(str(tmp_path / 'd'), rng)
    (tmp_path / 'd' / 'train' / 'cat' / '003.png').write_bytes(b'junk')
    args = ['--data', 'folder:%s' % root, '--model', 'mlp', '--epochs', 1, '--batch-size', 8, '--no-progress']
    proc = recipe('pretrain.py', *args, check=False)  # found when measuring the data: bad input
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'cat/003.png: does not decode' in proc.stderr and '--max-bad-images is 0' in proc.stderr
    proc = recipe('pretrain.py', *args, '--max-bad-images', 1, '--out', tmp_path / 'r.json')
    assert 'warning: skipping an image that does not decode: ' in proc.stderr and 'cat/003.png' in proc.stderr
    assert json.loads((tmp_path / 'r.json').read_text())['epochs_run'] == 1
    (tmp_path / 'd' / 'test' / 'dog' / '004.png').write_bytes(b'junk')  # met while evaluating
    proc = recipe('pretrain.py', *args, '--max-bad-images', 1, check=False)
    assert proc.returncode == 1, proc.stderr
    assert 'pretrain.py: stopped: ' in proc.stderr and 'dog/004.png: not an image' in proc.stderr
    assert 'more than --max-bad-images (1)' in proc.stderr


# -- the stream on any source ------------------------------------------------------------

def test_stream_learns_a_folder_after_pretraining_on_some_of_its_classes(tmp_path, rng):
    """pretrain.py on cat and dog, then mnist_stream.py --source folder:... bringing fox:
    the model's classes are names (the checkpoint's, then the stream's new one), kept
    images of cat and dog are replayed, and the results speak of each group."""
    root = image_folder(str(tmp_path / 'd'), rng, count=45)
    spec = 'folder:%s' % root
    recipe('pretrain.py', '--data', spec, '--classes', '0-1', '--model', 'mlp', '--epochs', 2,
           '--batch-size', 10, '--no-progress', '--save', tmp_path / 'ck.params')
    recipe('mnist_stream.py', '--pretrained', tmp_path / 'ck.params', '--source', spec,
           '--classes', '2', '--arrival-batch', 5, '--replay', 20, '--no-progress',
           '--out', tmp_path / 's.json', '--checkpoint-dir', tmp_path / 'ck')
    result = json.loads((tmp_path / 's.json').read_text())
    assert result['config']['model_classes'] == ['cat', 'dog', 'fox']
    assert result['config']['classes'] == 'fox' and result['examples_learned'] == 15
    assert result['old_classes_test_accuracy_before'] is not None
    assert 0 <= result['new_classes_test_accuracy'] <= 1


def test_stdin_stream_of_image_files_and_base64_with_class_names(tmp_path, rng):
    root = image_folder(str(tmp_path / 'd'), rng, count=12)
    lines = []
    for k, name in enumerate(['cat', 'dog', 'fox'] * 4):
        path = next(p for p in sorted(os.listdir(os.path.join(root, 'train', name))))
        full = os.path.join(root, 'train', name, path)
        if k % 2:
            lines.append(json.dumps({'image': full, 'label': name}))
        else:
            import base64
            lines.append(json.dumps({'png_base64': base64.b64encode(open(full, 'rb').read()).decode(),
                                     'label': name}))
    lines.append(json.dumps({'image': full, 'label': 'wolf'}))
    proc = subprocess.run([sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'mnist_stream.py'),
                           '--source', 'stdin', '--data', 'folder:%s' % root, '--classes', 'all',
                           '--model', 'mlp', '--arrival-batch', '4', '--reservoir', '8', '--no-progress',
                           '--out', str(tmp_path / 'r.json')],
                          input='\n'.join(lines) + '\n', capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(predictions) == 12 and {p['prediction'] for p in predictions} <= {'cat', 'dog', 'fox'}
    assert [p['label'] for p in predictions] == ['cat', 'dog', 'fox'] * 4
    assert 'line 13 rejected: label "wolf" is not a class of this stream (cat,dog,fox)' in proc.stderr
    assert json.loads((tmp_path / 'r.json').read_text())['rejected'] == 1
    # recipes/stream.py, with --grow: the wolf is a new class, learned from then on
    lines += [json.dumps({'image': full, 'label': 'wolf'})] * 3 + lines[:4]
    proc = subprocess.run([sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', 'stream.py'),
                           '--source', 'stdin', '--grow', '--data', 'folder:%s' % root, '--classes',
                           'all', '--model', 'mlp', '--arrival-batch', '4', '--reservoir', '8',
                           '--no-progress', '--out', str(tmp_path / 'g.json')],
                          input='\n'.join(lines) + '\n', capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(predictions) == 20 and [p['label'] for p in predictions[12:16]] == ['wolf'] * 4
    assert 'class "wolf" added: output 3' in proc.stderr and 'test accuracy' in proc.stderr
    result = json.loads((tmp_path / 'g.json').read_text())
    assert result['class_names'] == ['cat', 'dog', 'fox', 'wolf'] and result['grown_classes'] == ['wolf']
    assert result['rejected'] == 0 and result['examples_learned'] == 20


# -- channels, names and edges the review found ----------------------------------------------

def test_a_folder_with_any_colour_image_is_read_in_colour(tmp_path, rng):
    image_folder(str(tmp_path), rng, split=False, channels=1, count=12)
    x, _ = pictures(rng, 1)
    write_image(str(tmp_path / 'fox' / 'zz-colour.png'), x[0])  # one colour image among grey ones
    source = sources.parse('folder:%s' % tmp_path, val_fraction=0.25)
    assert source.channels == 3 and len(source.mean) == 3
    grey = source.train.image(0)
    assert grey.shape[2] == 3 and np.array_equal(grey[..., 0], grey[..., 2])


def test_grey_and_colour_data_follow_the_pretrained_models_channels(tmp_path, rng):
    """A grey checkpoint fine-tuned on a colour folder, and a colour one on grey data."""
    grey_root = image_folder(str(tmp_path / 'grey'), rng, channels=1)
    colour_root = image_folder(str(tmp_path / 'colour'), rng, channels=3)
    for first, second in ((grey_root, colour_root), (colour_root, grey_root)):
        recipe('pretrain.py', '--data', 'folder:%s' % first, *COMMON, '--input-size', 16,
               '--save', tmp_path / 'ck.params')
        recipe('finetune.py', '--pretrained', tmp_path / 'ck.params', '--data', 'folder:%s' % second,
               '--classes', 'all', '--epochs', 1, '--batch-size', 8, '--no-progress', '--out', tmp_path / 'f.json')
    source = sources.with_channels(sources.parse('folder:%s' % colour_root), 1)
    assert source.channels == 1 and source.train.image(0).shape[2] == 1


def test_split_and_record_edges(tmp_path, rng):
    image_folder(str(tmp_path / 'two'), rng, split=False, count=6)  # 2 images per class
    source = sources.parse('folder:%s' % (tmp_path / 'two'), val_fraction=0.75)
    assert np.bincount(source.train.labels).tolist() == [1, 1, 1]  # at least one to train on
    record_file(str(tmp_path / 'all'), rng, count=30)
    by_file = sources.parse('rec:%s' % (tmp_path / 'all.rec'))
    assert len(by_file.train) + len(by_file.test) == 30
    assert by_file.train.where(0).startswith(str(tmp_path / 'all.rec record '))


def test_stream_edges(tmp_path, rng):
    root = image_folder(str(tmp_path / 'd'), rng, count=12)
    other = image_folder(str(tmp_path / 'e'), rng, count=12)
    for part in ('train', 'test'):  # classes bat, fox, owl: none of cat and dog
        os.rename(os.path.join(other, part, 'cat'), os.path.join(other, part, 'owl'))
        os.rename(os.path.join(other, part, 'dog'), os.path.join(other, part, 'bat'))
    proc = recipe('mnist_stream.py', '--source', 'photos:%s' % root, '--no-progress', check=False)
    assert proc.returncode == 2 and "--source: 'photos:" in proc.stderr
    zoo = zoo_file(str(tmp_path), 'cifar_resnet20_v1', 10, 32)
    proc = recipe('mnist_stream.py', '--pretrained', zoo, '--source', 'folder:%s' % root, '--classes', 2,
                  '--no-progress',
                  check=False)
    assert proc.returncode == 2 and 'a model-zoo file names no classes' in proc.stderr
    # pretrained on cat and dog of one folder, streaming owl of another that has neither
    recipe('pretrain.py', '--data', 'folder:%s' % root, '--classes', '0-1', '--model', 'mlp', '--epochs', 1,
           '--batch-size', 8, '--no-progress', '--save', tmp_path / 'ck.params')
    proc = recipe('mnist_stream.py', '--pretrained', tmp_path / 'ck.params', '--source', 'folder:%s' % other,
                  '--classes', '2', '--arrival-batch', 4, '--no-progress', '--out', tmp_path / 's.json')
    assert "has no training images of the checkpoint's classes (cat,dog)" in proc.stderr
    result = json.loads((tmp_path / 's.json').read_text())
    assert result['config']['model_classes'] == ['cat', 'dog', 'owl']
    from mxnag.train import stream
    image, name, why = stream.parse_line(json.dumps({'pixels': [0] * 784, 'label': 1}), {'cat', 'dog'},
                                         numbered=('cat', 'dog', 'fox'))
    assert why is None and name == 'dog'


def test_inception_zoo_file_is_made_for_299(tmp_path):
    from mxnag.train import finetune
    path = tmp_path / 'inceptionv3-0123abcd.params'
    mx.nd.save(str(path), {'output.weight': mx.nd.zeros((1000, 2048)), 'output.bias': mx.nd.zeros((1000,))})
    assert finetune.pretrained_meta(str(path))['input']['shape'] == [3, 299, 299]


def test_distributed_workers_take_no_max_bad_images(tmp_path, rng):
    from types import SimpleNamespace
    from mxnag.errors import MxnagError
    args = settings.namespace('pretrain', data='folder:%s' % image_folder(str(tmp_path), rng),
                              max_bad_images=1, model='mlp', batch_size=8)
    with pytest.raises(MxnagError, match='max_bad_images: skipping images needs one process'):
        run.load_data(args, workers=SimpleNamespace(rank=0, num_workers=2))
