import os
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.environ.get('MXNAG_TEST_MNIST', os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))


@pytest.fixture
def rng(request):
    """Fresh random data per test, reproducible from the test's name."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def mnist_dir():
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s (set MXNAG_TEST_MNIST)' % MNIST_DIR)
    return MNIST_DIR
