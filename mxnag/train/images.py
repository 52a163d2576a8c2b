"""Batches of a source's images: GluonCV's training and evaluation transforms, seeded per
image, decoded by ``gluon.data.DataLoader`` workers where the source reads lazily.

Transforms (``augment``), as GluonCV's training scripts make them:

* ``none``: the image resized to the input size (evaluation of the two below is the same,
  except that ``resized-crop-flip`` evaluates on a centre crop of the image resized to
  size / 0.875, as GluonCV's ImageNet scripts do);
* ``crop-flip`` (CIFAR's): zero-padded by an eighth of the size, a random crop of the
  size, a horizontal flip with probability 1/2;
* ``resized-crop-flip`` (ImageNet's): a random crop of 8%-100% of the area and aspect
  ratio 3/4-4/3, resized to the size, a horizontal flip with probability 1/2.

Then each channel is standardised by the mean and standard deviation given (the data's,
or ImageNet's for a model pretrained on it). The random numbers of image ``i`` in epoch
``e`` come from ``RandomState([seed, e, i])``: the same whichever worker decodes it and
whenever, so a resumed run sees exactly the batches of an uninterrupted one.
"""
import logging

import numpy as np

from ..errors import MxnagError, TrainingError
from . import data  # (data imports this module's ArrayLoader at its end)

logger = logging.getLogger(__name__)

AUGMENTS = ('none', 'crop', 'crop-flip', 'resized-crop-flip')


def default_augment(source_kind, size):
    """The transform a source gets by default: none for the MNIST family (its published
    numbers were measured so), CIFAR's up to 64x64, ImageNet's above."""
    if source_kind in ('mnist', 'fashion-mnist'):
        return 'none'
    return 'crop-flip' if max(size) <= 64 else 'resized-crop-flip'


def _resize(image, size):
    """uint8 HxWxC -> (height, width) = ``size``, bilinear (PIL); unchanged if already so."""
    if image.shape[:2] == tuple(size):
        return image
    from .sources import _pil
    Image = _pil()
    grey = image.shape[2] == 1
    resized = Image.fromarray(image[..., 0] if grey else image).resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(resized)
    return array[..., None] if grey else array


class Transform:
    """uint8 HxWxC -> float32 CxHxW of ``size``, standardised; ``train`` applies
    ``augment`` with the random numbers given."""

    def __init__(self, size, augment, train, mean, std):
        if augment not in AUGMENTS:
            raise MxnagError('augment: %r is not one of %s' % (augment, ', '.join(AUGMENTS)), ('augment',))
        self.size, self.augment, self.train = tuple(size), augment, train
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]

    @property
    def random(self):
        return self.train and self.augment != 'none'

    def __call__(self, image, rng=None):
        if self.train and self.augment in ('crop', 'crop-flip'):
            image = self._crop_flip(_resize(image, self.size), rng, self.augment == 'crop-flip')
        elif self.train and self.augment == 'resized-crop-flip':
            image = self._resized_crop_flip(image, rng)
        elif self.augment == 'resized-crop-flip':
            image = self._centre_crop(image)
        else:
            image = _resize(image, self.size)
        return self.standardise(image)

    def standardise(self, images):
        """uint8 (N)xHxWxC -> float32 (N)xCxHxW standardised."""
        x = np.moveaxis(images.astype(np.float32), -1, -3) / 255.0
        return (x - self.mean) / self.std

    def _crop_flip(self, image, rng, flip=True):
        """CIFAR's augmentation: pad by an eighth of the size, crop at random, and (with
        ``flip``) mirror half the images; without it for digits and text."""
        pad = max(1, self.size[0] // 8)
        padded = np.zeros((image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, image.shape[2]), np.uint8)
        padded[pad:-pad, pad:-pad] = image
        top, left = rng.randint(0, 2 * pad + 1, 2)
        image = padded[top:top + self.size[0], left:left + self.size[1]]
        return image[:, ::-1] if flip and rng.rand() < 0.5 else image

    def _resized_crop_flip(self, image, rng):
        height, width = image.shape[:2]
        area = height * width
        for _ in range(10):  # GluonCV/torchvision: 10 tries, then the centre crop
            target = area * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top, left = rng.randint(0, height - h + 1), rng.randint(0, width - w + 1)
                image = _resize(image[top:top + h, left:left + w], self.size)
                break
        else:
            image = self._centre_crop(image)
        return image[:, ::-1] if rng.rand() < 0.5 else image

    def _centre_crop(self, image):
        height, width = image.shape[:2]
        scale = max(self.size) / 0.875 / min(height, width)
        image = _resize(image, (max(self.size[0], int(round(height * scale))),
                                max(self.size[1], int(round(width * scale)))))
        top = (image.shape[0] - self.size[0]) // 2
        left = (image.shape[1] - self.size[1]) // 2
        return image[top:top + self.size[0], left:left + self.size[1]]


class Batches:
    """The order of a data set's examples in each epoch and its batches, seeded: epoch
    ``e``'s order depends only on ``(seed, e)``, so a resumed run sees the same batches.

    ``shard=(rank, num_shards)`` keeps the rank-th of ``num_shards`` equal slices of every
    global batch of ``batch_size`` (distributed workers: together they see exactly the
    batches of one process); the last partial batch is then dropped."""

    def __init__(self, count, batch_size, shuffle=True, seed=0, last_batch='keep', shard=(0, 1)):
        rank, num_shards = shard
        if batch_size < 1 or batch_size % num_shards:
            raise MxnagError('batch_size: must be a positive multiple of the number of '
                             'workers (%d), got %r' % (num_shards, batch_size), ('batch_size',))
        if num_shards > 1:
            last_batch = 'discard'
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.last_batch, self.rank, self.num_shards = last_batch, rank, num_shards
        self.epoch = 0

    def __len__(self):
        n = self.count
        return n // self.batch_size if self.last_batch == 'discard' else -(-n // self.batch_size)

    def order(self, epoch):
        n = self.count
        return np.random.RandomState([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def batches(self, epoch):
        """This worker's indices of each batch of ``epoch``."""
        order = self.order(epoch)
        part = self.batch_size // self.num_shards
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.num_shards > 1:
                idx = idx[self.rank * part:(self.rank + 1) * part]
            yield idx


class BadImages:
    """The images a run could not decode, each counted once (a file seen again in the
    next epoch is the same file); more than ``limit`` stop the run."""

    def __init__(self, limit=0):
        self.limit, self.seen = limit, {}

    def add(self, where, reason):
        if where in self.seen:
            return
        self.seen[where] = reason
        logger.warning('skipping an image that does not decode: %s', reason)
        if len(self.seen) > self.limit:
            raise TrainingError('%s; %d image%s that do not decode, more than max_bad_images (%d)'
                                % (reason, len(self.seen), '' if len(self.seen) == 1 else 's',
                                   self.limit), ('max_bad_images',))


class _Unreadable:
    """What a DataLoader gets in place of an image that does not decode."""

    def __init__(self, where, reason):
        self.where, self.reason = where, reason


class _Examples:
    """A split's examples as a DataLoader reads them: key ``(epoch, i)`` -> (transformed
    image ``i``, its label), image ``i``'s random numbers from ``(seed, epoch, i)``; an
    image that does not decode -> ``_Unreadable``."""

    def __init__(self, split, transform, seed):
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self):
        return len(self.split)

    def __getitem__(self, key):
        epoch, i = key
        rng = np.random.RandomState([self.seed, epoch, int(i)]) if self.transform.random else None
        try:
            image = self.split.image(i)
        except data.DataError as err:
            return _Unreadable(self.split.where(i), str(err))
        return self.transform(image, rng), np.float32(self.split.labels[i])


class _Batchify:
    """A batch of the examples that decoded (in shared memory when made by a worker
    process), and the ``(where, why)`` of those that did not."""

    def __init__(self, shared):
        self.shared = shared

    def __call__(self, items):
        from mxnet.gluon.data.dataloader import default_batchify_fn, default_mp_batchify_fn
        good = [item for item in items if not isinstance(item, _Unreadable)]
        bad = [(item.where, item.reason) for item in items if isinstance(item, _Unreadable)]
        if not good:
            return None, None, bad
        x, y = (default_mp_batchify_fn if self.shared else default_batchify_fn)(good)
        return x, y, bad


class _KeyedSampler:
    """Batches of ``(epoch, i)`` keys for ``gluon.data.DataLoader``'s batch_sampler."""

    def __init__(self, batches):
        self.batches, self.epoch = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for idx in self.batches.batches(self.epoch):
            yield [(self.epoch, int(i)) for i in idx]


class ImageLoader(Batches):
    """Batches (NDArrays) of a split transformed image by image; with ``workers`` > 0,
    decoded in that many processes (``gluon.data.DataLoader``). Seeded as ``Batches``
    says, and each image's augmentation as the module doc says."""

    def __init__(self, split, transform, batch_size, shuffle=True, seed=0, last_batch='keep',
                 shard=(0, 1), workers=0, bad_images=None):
        super().__init__(len(split), batch_size, shuffle, seed, last_batch, shard)
        from mxnet import gluon
        self.split, self.transform = split, transform
        self.bad_images = bad_images if bad_images is not None else BadImages()
        self.input_shape = (transform.mean.shape[0],) + tuple(transform.size)
        self._sampler = _KeyedSampler(self)
        self._loader = gluon.data.DataLoader(_Examples(split, transform, seed),
                                             batch_sampler=self._sampler, num_workers=workers,
                                             batchify_fn=_Batchify(shared=workers > 0))

    def __iter__(self):
        """The batches of the next epoch; an image that does not decode is left out of
        its batch and counted (``bad_images``)."""
        self._sampler.epoch = self.epoch
        self.epoch += 1
        for x, y, bad in self._loader:
            for where, reason in bad:
                self.bad_images.add(where, reason)
            if x is not None:
                yield x, y


class ArrayLoader(Batches):
    """Batches of examples already in memory as float32 arrays, as NDArrays: one fancy
    index per batch (faster than a DataLoader over an ArrayDataset)."""

    def __init__(self, data, labels, batch_size, shuffle=True, seed=0, last_batch='keep',
                 shard=(0, 1)):
        if len(data) != len(labels):
            raise MxnagError('ArrayLoader: %d examples but %d labels' % (len(data), len(labels)))
        super().__init__(len(data), batch_size, shuffle, seed, last_batch, shard)
        self.data, self.labels = data, labels
        self.input_shape = tuple(data.shape[1:])

    def __iter__(self):
        from mxnet import nd
        epoch, self.epoch = self.epoch, self.epoch + 1
        for idx in self.batches(epoch):
            yield nd.array(self.data[idx]), nd.array(self.labels[idx])
