"""Data sources: where a run's images come from, chosen by name like a model.

``parse(spec)`` knows:

* ``mnist``, ``fashion-mnist``: the IDX files (``mxnag.train.data``), in memory; with
  ``download``, fetched from their mirrors where no local copy is found;
* ``cifar10:PATH``, ``cifar100:PATH``: the files of CIFAR's python or binary version in
  a local folder (``PATH`` itself or its ``cifar-10-batches-py``, ``cifar-10-batches-bin``,
  ``cifar-100-python``, ``cifar-100-binary``), in memory; with ``download`` a folder
  without them gets the python version's archive (MD5-checked) extracted into it;
* ``folder:PATH``: one sub-folder of images per class (JPEG, PNG, BMP), with ``train/`` and
  ``test/`` inside or, when there are none, a seeded split of ``val_fraction`` of each
  class for testing; class names are the folder names, sorted;
* ``rec:PREFIX``: ``PREFIX.rec`` and ``PREFIX.idx`` as MXNet's ``im2rec`` writes them
  (a label per record), split like a folder; or ``rec:DIR`` holding ``train.rec``/``.idx``
  and ``test.rec``/``.idx`` (or ``val``). Class names from ``PREFIX.lst``'s paths where
  that file is beside it, else the labels as numbers.

A source tells the rest of the toolkit what is specific to it: its class names, its
images' channels and size (``None`` where they vary), their per-channel mean and standard
deviation (published, or measured on the training split) and the two splits, each a
``Split`` of labels and a way to read image ``i`` as uint8 HxWxC. Reading is lazy for
folders and record files (``read``), so a loader's worker processes decode in parallel.
Everything that is wrong with the input raises ``DataError`` naming the file or folder.
"""
import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from . import data
from .data import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
KINDS = ('mnist', 'fashion-mnist', 'cifar10', 'cifar100', 'folder', 'rec')
# mean and standard deviation of ImageNet's images (0-1 scale), for models pretrained on it
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_STATS_SAMPLE = 1000  # images of a folder or record file whose pixels give its mean/std


@dataclass
class Split:
    """One split of a source: labels (int32, 0..classes-1) and image ``i`` as uint8 HxWxC,
    from ``images`` in memory or ``read(i)``; ``names[i]`` says where it came from."""
    labels: np.ndarray
    images: Optional[np.ndarray] = None
    read: Optional[Callable[[int], np.ndarray]] = None
    names: Optional[Sequence[str]] = None

    def __len__(self):
        return len(self.labels)

    def image(self, i):
        return self.images[i] if self.images is not None else self.read(int(i))

    def where(self, i):
        return self.names[i] if self.names is not None else 'image %d' % i

    def subset(self, keep):
        """The examples at indices ``keep`` (in memory: a copy of those images)."""
        keep = np.asarray(keep)
        if self.images is not None:
            return Split(self.labels[keep], images=self.images[keep])
        read, names = self.read, self.names
        return Split(self.labels[keep], read=_Reindexed(read, keep),
                     names=None if names is None else [names[i] for i in keep])


class _Reindexed:
    """``read`` of a subset (a class, not a closure: worker processes pickle it)."""

    def __init__(self, read, keep):
        self.read, self.keep = read, np.asarray(keep)

    def __call__(self, i):
        return self.read(int(self.keep[i]))


@dataclass
class Source:
    spec: str
    class_names: Tuple[str, ...]
    channels: int
    size: Optional[Tuple[int, int]]   # (height, width) when every image has it
    mean: Tuple[float, ...]           # per channel, 0-1 scale
    std: Tuple[float, ...]
    train: Split
    test: Split
    unreadable: Tuple[str, ...] = ()  # images found undecodable while measuring the source

    @property
    def in_memory(self):
        return self.train.images is not None

    @property
    def num_classes(self):
        return len(self.class_names)


def parse(spec, data_dir=None, val_fraction=0.1, seed=0, download=False):
    """The ``Source`` named by ``spec`` (see the module doc); ``data_dir`` is where the
    IDX sets are looked for; ``download``: fetch an IDX or CIFAR set that is not found
    (nothing is downloaded otherwise). Raises ``DataError`` naming what is wrong."""
    kind, sep, path = str(spec).partition(':')
    if kind not in KINDS:
        raise DataError('data: unknown source %r; use mnist, fashion-mnist, cifar10:PATH, '
                        'cifar100:PATH, folder:PATH or rec:PREFIX' % spec)
    if kind in ('mnist', 'fashion-mnist'):
        if sep:
            raise DataError('data: %s takes no path (give the folder with --data-dir)' % kind)
        return _idx(kind, data_dir, download)
    if not path:
        raise DataError('data: %s needs a path: %s:PATH' % (kind, kind))
    path = os.path.expanduser(path)
    if kind.startswith('cifar'):
        if download and _find_cifar(kind, path) is None:
            download_cifar(kind, path)
        return _cifar(spec, kind, path)
    if kind == 'folder':
        return _folder(spec, path, val_fraction, seed)
    return _records(spec, path, val_fraction, seed)


def _idx(name, data_dir, download=False):
    info = data.dataset_info(name)
    splits = data.load(name, data_dir, download=download)
    train, test = ({'images': x[..., None], 'labels': y} for x, y in (splits['train'], splits['test']))
    return Source(name, tuple(info.class_names), 1, (28, 28), (info.mean,), (info.std,),
                  Split(**train), Split(**test))


# -- CIFAR ---------------------------------------------------------------------------------

_CIFAR_FILES = {  # kind -> version -> (folder name, train files, test files, names file)
    'cifar10': {'python': ('cifar-10-batches-py', ['data_batch_%d' % i for i in range(1, 6)],
                           ['test_batch'], 'batches.meta'),
                'binary': ('cifar-10-batches-bin', ['data_batch_%d.bin' % i for i in range(1, 6)],
                           ['test_batch.bin'], 'batches.meta.txt')},
    'cifar100': {'python': ('cifar-100-python', ['train'], ['test'], 'meta'),
                 'binary': ('cifar-100-binary', ['train.bin'], ['test.bin'], 'fine_label_names.txt')},
}


def _cifar(spec, kind, path):
    found = _find_cifar(kind, path)
    if found is None:
        other = 'cifar100' if kind == 'cifar10' else 'cifar10'
        if _find_cifar(other, path) is not None:
            raise DataError('%s: holds %s files, not %s (the data set is the wrong version; '
                            'use --data %s:%s)' % (path, other.upper(), kind.upper(), other, path))
        if not os.path.isdir(path):
            raise DataError('%s: no such folder' % path)
        raise DataError('%s: no %s files (the python version\'s %s or the binary version\'s %s, '
                        'extracted)' % (path, kind.upper(), ', '.join(_CIFAR_FILES[kind]['python'][1][:1] +
                                                                       [_CIFAR_FILES[kind]['python'][3]]),
                                        _CIFAR_FILES[kind]['binary'][1][0]))
    folder, version = found
    _, train_files, test_files, names_file = _CIFAR_FILES[kind][version]
    read = _cifar_python if version == 'python' else _cifar_binary
    fine = kind == 'cifar100'
    train = read([os.path.join(folder, f) for f in train_files], fine)
    test = read([os.path.join(folder, f) for f in test_files], fine)
    names = _cifar_names(os.path.join(folder, names_file), version, fine)
    if len(names) != (100 if fine else 10):
        raise DataError('%s: %d class names, %s has %d' % (os.path.join(folder, names_file), len(names),
                                                          kind.upper(), 100 if fine else 10))
    pixels = train[0].reshape(-1, 3) / 255.0
    mean, std = tuple(pixels.mean(0)), tuple(pixels.std(0))
    return Source(spec, names, 3, (32, 32), mean, std, Split(train[1], images=train[0]),
                  Split(test[1], images=test[0]))


# the python version's archive of each set, and its MD5 as published with it
CIFAR_ARCHIVES = {
    'cifar10': ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                'c58f30108f718f92721af3b95e74349a'),
    'cifar100': ('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
                 'eb9058c3a382ffc7106e4002c42a8d85'),
}


def download_cifar(kind, path, url=None, md5=None):
    """Fetch ``kind``'s python-version archive (``url``, default CIFAR's own, checked
    against ``md5``) and extract its folder (``cifar-10-batches-py`` or
    ``cifar-100-python``) into ``path``. The folder appears whole or not at all; the
    archive is not kept. Raises ``DataError`` naming the URL and what failed."""
    default_url, default_md5 = CIFAR_ARCHIVES[kind]
    url, md5 = url or default_url, md5 or default_md5
    folder = _CIFAR_FILES[kind]['python'][0]
    os.makedirs(path, exist_ok=True)
    work = tempfile.mkdtemp(prefix='.%s-download-' % kind, dir=path)
    try:
        archive = os.path.join(work, 'archive.tar.gz')
        try:
            urllib.request.urlretrieve(url, archive)
        except (OSError, ValueError) as err:
            raise DataError('%s: download failed (%s)' % (url, getattr(err, 'reason', None) or err)) from None
        digest = hashlib.md5()
        with open(archive, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        if digest.hexdigest() != md5:
            raise DataError('%s: the downloaded file has MD5 %s, not %s (a damaged or different '
                            'file; nothing was extracted)' % (url, digest.hexdigest(), md5))
        _extract(archive, folder, work, url)
        if os.path.exists(os.path.join(path, folder)):
            raise DataError('%s: exists but is not a whole %s set; remove it to download again'
                            % (os.path.join(path, folder), kind.upper()))
        os.replace(os.path.join(work, folder), os.path.join(path, folder))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(archive, folder, work, url):
    """The regular files and folders under ``folder/`` of a .tar.gz, into ``work`` (no
    links, no absolute or upward paths)."""
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            members = [m for m in tar.getmembers() if m.name.split('/')[0] == folder]
            unsafe = [m.name for m in members if not (m.isfile() or m.isdir()) or
                      os.path.isabs(m.name) or '..' in m.name.split('/')]
            if unsafe:
                raise DataError('%s: the archive holds %s, not a plain file' % (url, unsafe[0]))
            tar.extractall(work, members=members)
    except (OSError, tarfile.TarError, EOFError) as err:
        raise DataError('%s: cannot extract (%s)' % (url, err)) from None
    if not os.path.isdir(os.path.join(work, folder)):
        raise DataError('%s: the archive holds no %s/ folder' % (url, folder))


def _find_cifar(kind, path):
    """``(folder, 'python'|'binary')`` holding ``kind``'s files under ``path``, else None."""
    for version, (folder, train_files, test_files, names_file) in _CIFAR_FILES[kind].items():
        for candidate in (path, os.path.join(path, folder)):
            if all(os.path.isfile(os.path.join(candidate, f)) for f in train_files + test_files + [names_file]):
                return candidate, version
    return None


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python files are pickles of dicts of lists and NumPy arrays: nothing else
    is admitted (a pickle can ask to run anything)."""
    ADMITTED = {('numpy.core.multiarray', '_reconstruct'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
                ('numpy._core.multiarray', '_reconstruct')}

    def find_class(self, module, name):
        if (module, name) not in self.ADMITTED:
            raise pickle.UnpicklingError('it asks for %s.%s' % (module, name))
        return super().find_class(module, name)


def _load_cifar_pickle(path):
    try:
        with open(path, 'rb') as f:
            return _CifarUnpickler(f, encoding='bytes').load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise DataError('%s: not a CIFAR python file (%s)' % (path, err)) from None


def _cifar_python(paths, fine):
    images, labels = [], []
    key = b'fine_labels' if fine else b'labels'
    for path in paths:
        batch = _load_cifar_pickle(path)
        if not isinstance(batch, dict) or b'data' not in batch or key not in batch:
            raise DataError('%s: not a %s python batch (no data/%s)'
                            % (path, 'CIFAR-100' if fine else 'CIFAR-10', key.decode()))
        pixels = np.asarray(batch[b'data'], np.uint8)
        if pixels.ndim != 2 or pixels.shape[1] != 3072 or len(batch[key]) != len(pixels):
            raise DataError('%s: %s pixels and %d labels, not N x 3072 and N'
                            % (path, pixels.shape, len(batch[key])))
        images.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[key], np.int32))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _cifar_binary(paths, fine):
    record = 3072 + (2 if fine else 1)
    images, labels = [], []
    for path in paths:
        raw = np.fromfile(path, np.uint8)
        if len(raw) == 0 or len(raw) % record:
            raise DataError('%s: %d bytes, not a whole number of %d-byte %s records'
                            % (path, len(raw), record, 'CIFAR-100' if fine else 'CIFAR-10'))
        rows = raw.reshape(-1, record)
        labels.append(rows[:, record - 3073].astype(np.int32))  # CIFAR-100: coarse, then fine
        images.append(rows[:, record - 3072:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _cifar_names(path, version, fine):
    if version == 'binary':
        with open(path) as f:
            return tuple(line.strip() for line in f if line.strip())
    meta = _load_cifar_pickle(path)
    key = b'fine_label_names' if fine else b'label_names'
    if not isinstance(meta, dict) or key not in meta:
        raise DataError('%s: no %s (not %s metadata)' % (path, key.decode(), 'CIFAR-100' if fine else 'CIFAR-10'))
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])


# -- image folders -------------------------------------------------------------------------

def _pil():
    """``PIL.Image`` (Pillow, the recipes extra), or the error saying which extra to install."""
    from . import extras
    extras.require('PIL', 'image files', ('data',))
    from PIL import Image
    return Image


def decode(blob, where, channels=None):
    """Encoded image bytes -> uint8 HxWxC (C = ``channels``, or 1 for a grey image and 3
    otherwise); ``DataError`` naming ``where`` if they are not an image."""
    Image = _pil()
    try:
        with Image.open(io.BytesIO(blob)) as image:
            grey = image.mode in ('1', 'L', 'I;16', 'I', 'LA') if channels is None else channels == 1
            array = np.asarray(image.convert('L' if grey else 'RGB'))
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError('%s: not an image this build can decode (%s)' % (where, err)) from None
    return array[..., None] if array.ndim == 2 else array


class _FileReader:
    def __init__(self, paths, channels):
        self.paths, self.channels = paths, channels

    def __call__(self, i):
        path = self.paths[i]
        try:
            with open(path, 'rb') as f:
                blob = f.read()
        except OSError as err:
            raise DataError('%s: cannot read (%s)' % (path, err.strerror or err)) from None
        return decode(blob, path, self.channels)


def _class_folders(path):
    """{class name: sorted image paths} of the sub-folders of ``path``."""
    if not os.path.isdir(path):
        raise DataError('%s: no such folder' % path)
    classes = {}
    for name in sorted(os.listdir(path)):
        folder = os.path.join(path, name)
        if not os.path.isdir(folder) or name.startswith('.'):
            continue
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))
        if not files:
            raise DataError('%s: a class folder with no images (%s)' % (folder, ', '.join(IMAGE_EXTENSIONS)))
        classes[name] = files
    if not classes:
        raise DataError('%s: no class folders (one sub-folder of images per class)' % path)
    return classes


def _folder(spec, path, val_fraction, seed):
    if not os.path.isdir(path):
        raise DataError('%s: no such folder' % path)
    has_split = os.path.isdir(os.path.join(path, 'train'))
    train = _class_folders(os.path.join(path, 'train') if has_split else path)
    names = tuple(train)
    if has_split:
        if not os.path.isdir(os.path.join(path, 'test')):
            raise DataError('%s: has train/ but no test/ folder' % path)
        test = _class_folders(os.path.join(path, 'test'))
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError('%s: test classes that are not training classes: %s'
                            % (os.path.join(path, 'test'), ', '.join(unknown)))
        train_paths, train_labels = _flatten(train, names)
        test_paths, test_labels = _flatten(test, names)
    else:
        paths, labels = _flatten(train, names)
        train_idx, test_idx = split_indices(labels, val_fraction, seed, path, names)
        train_paths, train_labels = [paths[i] for i in train_idx], labels[train_idx]
        test_paths, test_labels = [paths[i] for i in test_idx], labels[test_idx]
    train_split = Split(train_labels, read=_FileReader(train_paths, None), names=train_paths)
    test_split = Split(test_labels, read=_FileReader(test_paths, None), names=test_paths)
    return _lazy_source(spec, names, train_split, test_split, seed)


def _read_bytes(path):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as err:
        raise DataError('%s: cannot read (%s)' % (path, err.strerror or err)) from None


def _flatten(classes, names):
    index = {name: k for k, name in enumerate(names)}
    paths = [p for name in classes for p in classes[name]]
    labels = np.array([index[name] for name in classes for _ in classes[name]], np.int32)
    return paths, labels


def holdout(source, seed=0):
    """``source`` with its test split replaced by a sixth of its training split (the rest
    trains): a validation that never sees the test set, for tuning. MNIST's and
    Fashion-MNIST's training files are in no class order: their last sixth (MNIST: the
    last 10,000) validates; other sources keep a seeded sixth of each class."""
    if source.spec in ('mnist', 'fashion-mnist'):
        order = np.arange(len(source.train))
        keep = len(order) - len(order) // 6
        train, valid = order[:keep], order[keep:]
    else:
        train, valid = split_indices(source.train.labels, 1 / 6, seed, source.spec,
                                     source.class_names)
    return dataclasses.replace(source, train=source.train.subset(train),
                               test=source.train.subset(valid))


def split_indices(labels, val_fraction, seed, where, names=None):
    """Indices of a seeded, per-class split: (train, test), ``val_fraction`` of each class
    (at least one example) for testing; ``names``: the classes' names, for messages."""
    if not 0 < val_fraction < 1:
        raise DataError('val_fraction: must be in (0, 1) to split %s, got %r' % (where, val_fraction))
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise DataError('%s: class %s has %d image; a train/test split needs 2 or more'
                            % (where, names[c] if names else c, len(members)))
        n_test = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(train), np.sort(test)


def _lazy_source(spec, names, train, test, seed):
    """A source read image by image, measured on up to ``_STATS_SAMPLE`` training images
    (seeded): its channels (3 if any of them is in colour: grey images are then read as
    RGB, else 1), its size when they share one, its per-channel mean and std; those that
    do not decode are listed in ``unreadable``."""
    rng = np.random.RandomState(seed)
    sample = rng.choice(len(train), min(len(train), _STATS_SAMPLE), replace=False)
    sums = {1: np.zeros(1), 3: np.zeros(3)}
    squares = {1: np.zeros(1), 3: np.zeros(3)}
    counts, sizes, unreadable = {1: 0, 3: 0}, set(), []
    for i in sample:
        try:
            image = train.image(i).astype(np.float64) / 255.0
        except DataError:
            unreadable.append(train.where(i))
            continue
        c = image.shape[2]
        sizes.add(image.shape[:2])
        sums[c] += image.sum((0, 1))
        squares[c] += (image ** 2).sum((0, 1))
        counts[c] += image.shape[0] * image.shape[1]
    if not counts[1] + counts[3]:
        raise DataError('%s: none of the %d images measured decodes (%s, ...)'
                        % (spec, len(sample), unreadable[0]))
    channels = 3 if counts[3] else 1  # a grey image read as RGB has its value thrice
    count = counts[1] + counts[3]
    mean = (sums[3] + sums[1] if channels == 3 else sums[1]) / count
    std = np.sqrt(np.maximum((squares[3] + squares[1] if channels == 3 else squares[1]) / count
                             - mean ** 2, 1e-12))
    for split in (train, test):
        _set_channels(split.read, channels)
    size = sizes.pop() if len(sizes) == 1 else None
    return Source(spec, tuple(names), channels, size, tuple(mean), tuple(std), train, test,
                  tuple(unreadable))


def with_channels(source, channels):
    """``source`` read with ``channels`` (1 or 3) per image, as a pretrained model wants:
    grey images repeated into RGB, colour ones turned grey (ITU-R 601 luma, as PIL's
    'L'); the mean and std follow (grey from colour: the luma of the channels' values, an
    approximation of the grey images' own)."""
    if channels == source.channels:
        return source
    if channels not in (1, 3):
        raise DataError('%s: cannot give a model %d-channel images' % (source.spec, channels))
    luma = np.array([0.299, 0.587, 0.114])
    if channels == 3:
        mean, std = source.mean * 3, source.std * 3
    else:
        mean, std = (float(luma @ np.array(source.mean)),), (float(luma @ np.array(source.std)),)
    splits = []
    for split in (source.train, source.test):
        if split.images is not None:
            images = np.repeat(split.images, 3, axis=3) if channels == 3 else \
                np.round(split.images @ luma)[..., None].astype(np.uint8)
            splits.append(Split(split.labels, images=images, names=split.names))
        else:
            _set_channels(split.read, channels)
            splits.append(split)
    return Source(source.spec, source.class_names, channels, source.size, tuple(mean), tuple(std),
                  splits[0], splits[1], source.unreadable)


# -- RecordIO ------------------------------------------------------------------------------

class _RecordReader:
    """Image ``i`` of an indexed record file, opened once per process (worker processes
    get their own handle: a shared one's position would be raced)."""

    def __init__(self, prefix, keys, channels=None):
        self.prefix, self.keys, self.channels = prefix, list(keys), channels
        self._pid, self._file = None, None

    def __getstate__(self):
        return {'prefix': self.prefix, 'keys': self.keys, 'channels': self.channels,
                '_pid': None, '_file': None}

    def record(self, i):
        import mxnet as mx
        if self._pid != os.getpid():
            self._file = mx.recordio.MXIndexedRecordIO(self.prefix + '.idx', self.prefix + '.rec', 'r')
            self._pid = os.getpid()
        try:
            return mx.recordio.unpack(self._file.read_idx(self.keys[i]))
        except Exception as err:  # noqa: BLE001 (MXNet's reader raises anything on a bad record)
            raise DataError('%s.rec: record %s unreadable (%s)' % (self.prefix, self.keys[i], err)) from None

    def __call__(self, i):
        _, blob = self.record(i)
        return decode(blob, '%s.rec record %s' % (self.prefix, self.keys[i]), self.channels)


def _record_file(prefix):
    """``(reader, labels, names)`` of ``prefix.rec``/``.idx``: every record's label read
    once (the whole record is read for it: MXNet's reader has no header-only read)."""
    for ext in ('.rec', '.idx'):
        if not os.path.isfile(prefix + ext):
            other = '.idx' if ext == '.rec' else '.rec'
            raise DataError('%s%s: missing (a record file is PREFIX.rec with its index PREFIX.idx, '
                            'as im2rec writes them%s)' % (prefix, ext, '' if os.path.isfile(prefix + other)
                                                          else '; neither is there'))
    keys = []
    with open(prefix + '.idx') as f:
        for n, line in enumerate(f, 1):
            parts = line.split('\t')
            if len(parts) != 2 or not parts[0].strip().isdigit():
                raise DataError('%s.idx: line %d is not "key<TAB>offset"' % (prefix, n))
            keys.append(int(parts[0]))
    if not keys:
        raise DataError('%s.idx: no records' % prefix)
    reader = _RecordReader(prefix, keys)
    names = ['%s.rec record %d' % (prefix, key) for key in keys]
    labels = []
    for i in range(len(keys)):
        header, _ = reader.record(i)
        label = np.ravel(header.label)[0] if np.size(header.label) else header.label
        if float(label) != int(label) or label < 0:
            raise DataError('%s.rec: record %d has label %r, not a class index' % (prefix, keys[i], label))
        labels.append(int(label))
    reader._pid, reader._file = None, None  # closed: each process opens its own
    return reader, np.array(labels, np.int32), names


def _record_names(prefix, labels):
    """Class names from ``prefix.lst`` (im2rec's list: index, label, path; a class's name
    is the folder its images are in), else the labels."""
    names = {}
    if os.path.isfile(prefix + '.lst'):
        with open(prefix + '.lst') as f:
            for line in f:
                parts = line.rstrip('\n').split('\t')
                if len(parts) >= 3:
                    folder = os.path.basename(os.path.dirname(parts[-1]))
                    if folder:
                        names[int(float(parts[1]))] = folder
    count = int(labels.max()) + 1
    return tuple(names.get(k, str(k)) for k in range(count))


def _records(spec, path, val_fraction, seed):
    for ext in ('.rec', '.idx'):  # rec:data/train.rec names the prefix data/train
        if path.endswith(ext) and not os.path.isdir(path):
            path = path[:-len(ext)]
    if os.path.isdir(path):
        test_name = next((n for n in ('test', 'val') if os.path.isfile(os.path.join(path, n + '.rec'))), 'test')
        (train, train_labels, train_names), (test, test_labels, test_names) = (
            _record_file(os.path.join(path, n)) for n in ('train', test_name))
        names = _record_names(os.path.join(path, 'train'), np.concatenate([train_labels, test_labels]))
        train_split = Split(train_labels, read=train, names=train_names)
        test_split = Split(test_labels, read=test, names=test_names)
    else:
        reader, labels, where = _record_file(path)
        names = _record_names(path, labels)
        train_idx, test_idx = split_indices(labels, val_fraction, seed, path + '.rec', names)
        whole = Split(labels, read=reader, names=where)
        train_split, test_split = whole.subset(train_idx), whole.subset(test_idx)
    return _lazy_source(spec, names, train_split, test_split, seed)


def _set_channels(read, channels):
    while isinstance(read, _Reindexed):
        read = read.read
    read.channels = channels


# -- writing a source as a folder ----------------------------------------------------------

def folder_name(class_name):
    """A class name as a folder name ('T-shirt/top' -> 'T-shirt_top')."""
    name = ''.join('_' if c in '/\\\0' else c for c in class_name).strip()
    return name if name not in ('', '.', '..') else '_%s' % name


def export_folder(source, out_dir, image_format='png', per_class=None):
    """Write ``source``'s splits as ``out_dir/{train,test}/<class>/<n>.<format>``; returns
    the number of images written per split. Each file is written whole or not at all
    (under a dot name, which the folder source skips, then renamed)."""
    Image = _pil()
    names = [folder_name(n) for n in source.class_names]
    if len(set(names)) != len(names):
        raise DataError('%s: class names that make the same folder name: %s' % (source.spec, names))
    counts = {}
    for split_name, split in (('train', source.train), ('test', source.test)):
        written = np.zeros(source.num_classes, int)
        for i in range(len(split)):
            label = int(split.labels[i])
            if per_class is not None and written[label] >= per_class:
                continue
            image = split.image(i)
            path = os.path.join(out_dir, split_name, names[label], '%05d.%s' % (written[label], image_format))
            picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), '.' + os.path.basename(path))  # folders skip dot files
            picture.save(tmp, format='JPEG' if image_format == 'jpg' else 'PNG',
                         **({'quality': 95} if image_format == 'jpg' else {}))
            os.replace(tmp, path)
            written[label] += 1
        counts[split_name] = int(written.sum())
    return counts
