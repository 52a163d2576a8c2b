"""MNIST-family data: IDX files read and verified, in memory, batched fast.

The files are verified by the SHA-256 of their *decompressed* content, so a local copy
recompressed with other gzip settings is accepted (gluon's MNIST checks archive bytes and
would try to download). Where a data set is looked for, in order: an explicit directory
(``--data-dir``; nothing else is tried when one is given), ``$MXNAG_DATA_DIR/<name>``,
``~/.mxnet/datasets/<name>``, ``/usr/share/datasets/<name>`` (Debian's
``dataset-fashion-mnist``), and only then a download from the public mirrors.
"""
import gzip
import hashlib
import os
import urllib.request
from collections import namedtuple

import numpy as np

from ..errors import MxnagError

SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
DatasetInfo = namedtuple('DatasetInfo', 'name sha256 mirrors mean std class_names')
DATASETS = {
    'mnist': DatasetInfo(
        'mnist',
        {'train-images-idx3-ubyte': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
         'train-labels-idx1-ubyte': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
         't10k-images-idx3-ubyte': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
         't10k-labels-idx1-ubyte': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2'},
        ('https://ossci-datasets.s3.amazonaws.com/mnist/',
         'https://storage.googleapis.com/cvdf-datasets/mnist/'),
        0.1307, 0.3081, tuple(str(d) for d in range(10))),
    'fashion-mnist': DatasetInfo(
        'fashion-mnist',
        {'train-images-idx3-ubyte': 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
         'train-labels-idx1-ubyte': 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
         't10k-images-idx3-ubyte': '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
         't10k-labels-idx1-ubyte': '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34'},
        ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',),
        0.2860, 0.3530,
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
         'Bag', 'Ankle boot')),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


class DataError(MxnagError):
    """A data file is missing, corrupted or inconsistent; the message names it."""


def read_idx(path, sha256=None):
    """Read an IDX file (gzip-compressed or raw) into a NumPy array, all or nothing.

    ``sha256``, if given, is checked against the decompressed bytes first.
    """
    try:
        with open(path, 'rb') as f:
            raw = f.read()
        if raw[:2] == b'\x1f\x8b':
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError('%s: cannot read (%s)' % (path, err)) from None
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError('%s: SHA-256 of the content does not match the published one '
                        '(truncated or altered file)' % path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError('%s: not an IDX file (bad magic number %s)' % (path, raw[:4].hex()))
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError('%s: IDX header truncated' % path)
    shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, 4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError('%s: %d bytes, the header %s promises %d' % (path, len(raw), shape, expected))
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def _file_in(directory, base):
    for candidate in (base + '.gz', base):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    return None


def _complete(directory, info):
    return all(_file_in(directory, base) for base in info.sha256)


def dataset_info(name):
    if name not in DATASETS:
        raise DataError('unknown data set %r; known: %s' % (name, ', '.join(sorted(DATASETS))))
    return DATASETS[name]


def find_dataset(name, data_dir=None, download=True):
    """The directory holding data set ``name``'s four IDX files (see the module doc)."""
    info = dataset_info(name)
    if data_dir is not None:
        if not _complete(data_dir, info):
            missing = [b for b in info.sha256 if not _file_in(data_dir, b)]
            raise DataError('%s: %s not found in the data directory'
                            % (os.path.join(data_dir, missing[0]) + '[.gz]', name))
        return data_dir
    candidates = []
    if os.environ.get('MXNAG_DATA_DIR'):
        candidates.append(os.path.join(os.environ['MXNAG_DATA_DIR'], name))
    home = os.path.join(os.path.expanduser('~'), '.mxnet', 'datasets', name)
    candidates += [home, os.path.join('/usr/share/datasets', name)]
    for directory in candidates:
        if _complete(directory, info):
            return directory
    if not download:
        raise DataError('%s not found in %s (--download fetches it)' % (name, ', '.join(candidates)))
    _download(info, home)
    return home


def _download(info, directory):
    os.makedirs(directory, exist_ok=True)
    for base, sha in info.sha256.items():
        target = os.path.join(directory, base + '.gz')
        if os.path.exists(target):
            continue
        errors = []
        for mirror in info.mirrors:
            tmp = target + '.part%d' % os.getpid()
            try:
                urllib.request.urlretrieve(mirror + base + '.gz', tmp)
                read_idx(tmp, sha)
                os.replace(tmp, target)
                break
            except (OSError, DataError) as err:
                errors.append('%s: %s' % (mirror, err))
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DataError('%s: not found locally and download failed (%s)'
                            % (info.name, '; '.join(errors)))


def load(name='mnist', data_dir=None, download=True):
    """Load data set ``name`` verified: ``{'train': (images, labels), 'test': (...)}``,
    images uint8 of shape (N, 28, 28), labels int32."""
    info = dataset_info(name)
    directory = find_dataset(name, data_dir, download)
    splits = {}
    for split, (images_base, labels_base) in SPLIT_FILES.items():
        images_path = _file_in(directory, images_base)
        labels_path = _file_in(directory, labels_base)
        images = read_idx(images_path, info.sha256[images_base])
        labels = read_idx(labels_path, info.sha256[labels_base])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError('%s and %s disagree: %s images, %s labels'
                            % (images_path, labels_path, images.shape, labels.shape))
        splits[split] = (images, labels.astype(np.int32))
    return splits


def parse_classes(spec, num_classes=10):
    """``'0-4'`` -> [0, 1, 2, 3, 4]; ``'3,8'`` -> [3, 8]; None or ``'all'`` -> None; each
    in 0..``num_classes``-1."""
    if spec is None or spec == 'all':
        return None
    classes = []
    try:
        for part in str(spec).split(','):
            if '-' in part:
                lo, hi = (int(x) for x in part.split('-'))
                classes.extend(range(lo, hi + 1))
            else:
                classes.append(int(part))
    except ValueError:
        raise MxnagError("classes: %r is not like '0-4' or '3,8'" % spec, ('classes',)) from None
    if not classes or any(c < 0 or c >= num_classes for c in classes) or len(set(classes)) != len(classes):
        raise MxnagError('classes: %r must name distinct classes in 0-%d' % (spec, num_classes - 1),
                         ('classes',))
    return sorted(classes)


def subset(images, labels, classes=None, shots=None, seed=0):
    """Keep ``classes`` (relabelled 0..k-1 in the given order) and, with ``shots``, k
    examples of each chosen at random with ``seed``."""
    if classes is not None:
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
        remap = np.full(max(int(labels.max(initial=0)), max(classes)) + 1, -1, np.int32)
        remap[classes] = np.arange(len(classes))
        labels = remap[labels]
    if shots is not None:
        if shots < 1:
            raise MxnagError('shots: must be >= 1, got %r' % shots, ('shots',))
        rng = np.random.RandomState(seed)
        chosen = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if len(idx) < shots:
                raise MxnagError('shots: class %d has only %d examples, %d asked' % (c, len(idx), shots),
                                 ('shots',))
            chosen.append(rng.choice(idx, shots, replace=False))
        chosen = np.sort(np.concatenate(chosen))
        images, labels = images[chosen], labels[chosen]
    return images, labels


def normalize(images, name='mnist'):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), standardised with the set's mean/std."""
    info = dataset_info(name)
    x = images.astype(np.float32)[:, None] / 255.0
    return (x - info.mean) / info.std


def __getattr__(name):
    """``data.ArrayLoader``, where it was defined before ``mxnag.train.images``."""
    if name == 'ArrayLoader':
        from .images import ArrayLoader
        return ArrayLoader
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
