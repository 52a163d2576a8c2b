"""IDX reading, verification, data set lookup, subsets, batching."""
import gzip
import os
import shutil

import numpy as np
import pytest

from mxnag.train import data
from mxnag.errors import MxnagError


def write_idx(path, array, compress=True, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, 'wb') as f:
        f.write(raw)
    return raw


@pytest.mark.parametrize('compress', [True, False])
def test_read_idx_round_trip(tmp_path, compress, rng):
    array = rng.integers(0, 256, (7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / 'x', array, compress)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / 'x')), array)


def test_read_idx_checks_sha256(tmp_path, rng):
    import hashlib
    raw = write_idx(tmp_path / 'x.gz', rng.integers(0, 256, (4, 4)))
    assert data.read_idx(str(tmp_path / 'x.gz'), hashlib.sha256(raw).hexdigest()).shape == (4, 4)
    with pytest.raises(data.DataError, match=r'x\.gz: SHA-256'):
        data.read_idx(str(tmp_path / 'x.gz'), '0' * 64)


def test_truncated_file_is_named(tmp_path, rng):
    raw = write_idx(tmp_path / 'x', rng.integers(0, 256, (10, 4)), compress=False)
    (tmp_path / 'x').write_bytes(raw[:-3])
    with pytest.raises(data.DataError, match=r"x: 49 bytes, the header \(10, 4\) promises 52"):
        data.read_idx(str(tmp_path / 'x'))


def test_truncated_gzip_is_named(tmp_path, rng):
    write_idx(tmp_path / 'x.gz', rng.integers(0, 256, (100, 40)))
    blob = (tmp_path / 'x.gz').read_bytes()
    (tmp_path / 'x.gz').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(data.DataError, match=r'x\.gz: cannot read'):
        data.read_idx(str(tmp_path / 'x.gz'))


def test_bad_magic_is_named(tmp_path):
    (tmp_path / 'x').write_bytes(b'\x01\x02\x08\x01' + b'\x00' * 8)
    with pytest.raises(data.DataError, match='x: not an IDX file'):
        data.read_idx(str(tmp_path / 'x'))


def test_missing_file_in_explicit_dir_is_named(tmp_path):
    with pytest.raises(data.DataError, match='train-images-idx3-ubyte.*not found'):
        data.load('mnist', str(tmp_path), download=False)


def test_lookup_order_env_then_home(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.setenv('MXNAG_DATA_DIR', str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    with pytest.raises(data.DataError, match='mnist not found in'):
        data.find_dataset('mnist', download=False)
    os.symlink(os.path.abspath(mnist_dir), tmp_path / 'mnist')
    assert data.find_dataset('mnist', download=False) == str(tmp_path / 'mnist')


def test_real_mnist_verified(mnist_dir):
    splits = data.load('mnist', mnist_dir, download=False)
    assert splits['train'][0].shape == (60000, 28, 28)
    assert np.bincount(splits['test'][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_altered_mnist_file_is_named(tmp_path, mnist_dir):
    for name in os.listdir(mnist_dir):
        shutil.copy(os.path.join(mnist_dir, name), tmp_path / name)
    labels = tmp_path / 't10k-labels-idx1-ubyte.gz'
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(data.DataError, match='t10k-labels-idx1-ubyte.gz: SHA-256'):
        data.load('mnist', str(tmp_path), download=False)


def test_parse_classes():
    assert data.parse_classes('0-4') == [0, 1, 2, 3, 4]
    assert data.parse_classes('3,8') == [3, 8]
    assert data.parse_classes('0-2,7') == [0, 1, 2, 7]
    assert data.parse_classes(None) is None
    for bad in ('a-b', '0-11', '3,3', ''):
        with pytest.raises(MxnagError, match='classes'):
            data.parse_classes(bad)


def test_subset_relabels_and_samples_k_per_class(rng):
    labels = rng.integers(0, 10, 1000).astype(np.int32)
    images = np.arange(1000)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    x, y = data.subset(images, labels, classes=[5, 6, 7], shots=4, seed=3)
    assert sorted(np.bincount(y).tolist()) == [4, 4, 4] and set(y) == {0, 1, 2}
    np.testing.assert_array_equal(labels[x[:, 0, 0]] - 5, y)
    x2, _ = data.subset(images, labels, classes=[5, 6, 7], shots=4, seed=3)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(MxnagError, match='shots'):
        data.subset(images, labels, classes=[5], shots=10 ** 6)


def test_loader_order_depends_only_on_seed_and_epoch(rng):
    x = rng.standard_normal((103, 1, 2, 2)).astype(np.float32)
    y = np.arange(103)
    loader = data.ArrayLoader(x, y, 10, seed=5)
    assert len(loader) == 11
    first = [b[1].asnumpy() for b in loader]
    second = [b[1].asnumpy() for b in loader]
    assert sorted(np.concatenate(first).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    again = data.ArrayLoader(x, y, 10, seed=5)
    again.epoch = 1
    np.testing.assert_array_equal(np.concatenate([b[1].asnumpy() for b in again]), np.concatenate(second))
