"""Image classifiers for 1x28x28 inputs, all Gluon HybridBlocks, by name.

``get_model(name, classes)`` knows ``mlp``, ``lenet``, ``seed-cnn``, ``mlp-100-100``, ``mlp-1000-1000`` and every classifier
of the GluonCV model zoo (``resnet18_v1``, ``mobilenetv2_0.25``, ...). The mxnag models
keep a ``features`` block and an ``output`` layer, so fine-tuning can replace the head.
"""
import sys

from mxnet import gluon
from mxnet.gluon import nn

from . import extras
from ..errors import MxnagError

MXNAG_MODELS = ('mlp', 'lenet', 'seed-cnn', 'mlp-100-100', 'mlp-1000-1000')


class Classifier(nn.HybridBlock):
    """``output(features(x))``: the shape every mxnag model has."""

    def __init__(self, features, classes, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = features
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):  # noqa: N802 (Gluon's name)
        return self.output(self.features(x))


def _mlp():
    """784-128-64 ReLU, as MXNet's Gluon MNIST example."""
    features = nn.HybridSequential(prefix='')
    features.add(nn.Flatten(), nn.Dense(128, activation='relu'), nn.Dense(64, activation='relu'))
    return features


def _mlp_100_100():
    """784-100-100 ReLU: the MLP of continual-learning benchmarks on MNIST (Lopez-Paz &
    Ranzato 2017; the DER paper's Split-MNIST, mammoth's MNISTMLP)."""
    features = nn.HybridSequential(prefix='')
    features.add(nn.Flatten(), nn.Dense(100, activation='relu'), nn.Dense(100, activation='relu'))
    return features


def _mlp_1000_1000():
    """784-1000-1000 ReLU with dropout (0.5 after each hidden layer): the MLP of the Adam
    paper's MNIST experiment (Kingma & Ba 2015, section 6.2)."""
    features = nn.HybridSequential(prefix='')
    features.add(nn.Flatten(), nn.Dense(1000, activation='relu'), nn.Dropout(0.5),
                 nn.Dense(1000, activation='relu'), nn.Dropout(0.5))
    return features


def _lenet():
    """LeNet-5 style, with the widths of MXNet's and Caffe's MNIST LeNet (20-50-500)."""
    features = nn.HybridSequential(prefix='')
    features.add(nn.Conv2D(20, 5, activation='relu'), nn.MaxPool2D(2, 2),
                 nn.Conv2D(50, 5, activation='relu'), nn.MaxPool2D(2, 2),
                 nn.Flatten(), nn.Dense(500, activation='relu'))
    return features


def _seed_cnn():
    """Two 3x3 convolutions of 64 channels, a 512-unit dense layer: the seed design's
    network, with the pooling and flattening that 1x28x28 input needs."""
    features = nn.HybridSequential(prefix='')
    features.add(nn.Conv2D(64, 3, padding=1, activation='relu'), nn.MaxPool2D(2, 2),
                 nn.Conv2D(64, 3, padding=1, activation='relu'), nn.MaxPool2D(2, 2),
                 nn.Flatten(), nn.Dense(512, activation='relu'))
    return features


_BUILDERS = {'mlp': _mlp, 'lenet': _lenet, 'seed-cnn': _seed_cnn, 'mlp-100-100': _mlp_100_100,
             'mlp-1000-1000': _mlp_1000_1000}


def gluoncv_model_zoo():
    """``gluoncv.model_zoo``, imported with PyTorch hidden: GluonCV 0.10 refuses to import
    when any torch other than 1.x is installed (its ``_require_pytorch_version`` raises),
    although its MXNet models never use torch."""
    try:
        if 'gluoncv' not in sys.modules:
            saved = sys.modules.get('torch')
            sys.modules['torch'] = None  # makes `import torch` raise ImportError
            try:
                import gluoncv  # noqa: F401
            finally:
                if saved is None:
                    del sys.modules['torch']
                else:
                    sys.modules['torch'] = saved
        from gluoncv import model_zoo
    except ImportError as err:
        raise extras.missing('GluonCV models', err) from None
    return model_zoo


def model_names():
    """The names ``get_model`` accepts: mxnag's own, then the GluonCV zoo's."""
    model_zoo = gluoncv_model_zoo()
    return list(MXNAG_MODELS) + sorted(model_zoo.get_model_list())


def check_model(name):
    """MxnagError unless ``name`` is one of mxnag's models or a GluonCV zoo classifier."""
    if name in _BUILDERS:
        return
    if name.lower() not in gluoncv_model_zoo().get_model_list():
        raise MxnagError('unknown model %r; use mlp, lenet, seed-cnn, mlp-100-100, mlp-1000-1000 or a GluonCV model '
                         'zoo classifier (e.g. resnet18_v1)' % name)


def get_model(name, classes=10, hybridize=True):
    """A new, uninitialised classifier ``name`` with ``classes`` outputs."""
    check_model(name)
    if name in _BUILDERS:
        net = Classifier(_BUILDERS[name](), classes, prefix=name.replace('-', '_') + '_')
    else:
        net = gluoncv_model_zoo().get_model(name, classes=classes, pretrained=False)
    if hybridize:  # static memory and shapes: 7% faster (MXNet's CachedOp plans once)
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def output_layer_name(net):
    """The attribute holding ``net``'s classifier layer (``output`` for mxnag and most
    GluonCV models, ``fc`` for the ResNet-v1b family)."""
    for attr in ('output', 'fc', 'classifier'):
        if isinstance(getattr(net, attr, None), gluon.Block):
            return attr
    raise MxnagError('%s has no output layer named output, fc or classifier' % type(net).__name__)
