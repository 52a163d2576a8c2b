"""Fine-tuning: a pretrained mxnag checkpoint or a model-zoo parameter file, a new output
layer for the new classes, and the feature extractor either frozen or trained with a
smaller learning rate."""
import os
import re

import mxnet as mx
from mxnet.gluon import nn

from . import checkpoint, models, sources
from ..errors import MxnagError


# A model-zoo file as GluonCV and Gluon download it (~/.mxnet/models): NAME-HASH.params
_ZOO_FILE = re.compile(r'^(?P<name>.+)-[0-9a-f]{8}\.params$')
# the normalisation the zoo's weights were trained with: GluonCV's CIFAR scripts
# (scripts/classification/cifar/train_cifar10.py) and ImageNet's
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# ImageNet models made for another size than 224x224
_ZOO_SIZES = {'inceptionv3': 299}


def is_zoo_file(path):
    """Whether ``path`` is a model-zoo parameter file rather than an mxnag checkpoint
    (which has its ``.json`` beside it; a path that is neither is taken for a checkpoint,
    whose error names the missing ``.json``)."""
    return path.endswith('.params') and os.path.isfile(path) and \
        not os.path.exists(checkpoint.prefix_of(path) + '.json')


def pretrained_meta(path, model=None):
    """What a run fine-tunes: the verified metadata of an mxnag checkpoint, or of a
    model-zoo ``.params`` file: its model (``model``, else the file's name), its number of
    classes (its output layer's), its input size and normalisation (CIFAR's for the
    ``cifar_*`` models, else ImageNet's 224x224, 299x299 for Inception v3)."""
    if not is_zoo_file(path):
        return checkpoint.read_meta(path)
    match = _ZOO_FILE.match(os.path.basename(path))
    name = model or (match.group('name') if match else None)
    if not name:
        raise MxnagError('%s: neither an mxnag checkpoint (no %s.json) nor named like a model-zoo '
                         'file (NAME-HASH.params); give the model' % (path, checkpoint.prefix_of(path)),
                         ('model',))
    arrays = _zoo_arrays(path)
    try:
        attr = models.output_layer_name(models.get_model(name, 2, hybridize=False))
    except MxnagError as err:
        raise MxnagError('%s: %s' % (path, err), ('model',)) from None
    weights = [a for k, a in arrays.items() if k.startswith(attr + '.') and a.ndim >= 2]
    if not weights:
        raise MxnagError('%s: no weights of the output layer %r of a %s model (another model\'s '
                         'file?)' % (path, attr, name), ('model',))
    cifar = name.startswith('cifar_')
    size = 32 if cifar else _ZOO_SIZES.get(name, 224)
    return {'model': name, 'num_classes': int(weights[-1].shape[0]), 'zoo_file': True,
            'input': {'shape': [3, size, size],
                      'mean': list(_CIFAR_MEAN if cifar else sources.IMAGENET_MEAN),
                      'std': list(_CIFAR_STD if cifar else sources.IMAGENET_STD), 'class_names': None}}


def _zoo_arrays(path):
    try:
        return mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise MxnagError('%s: not an MXNet parameter file (%s)' % (path, str(err).splitlines()[0])) from None


def load_pretrained(path, contexts, model=None):
    """``(net, meta)``: the network of checkpoint (or model-zoo file) ``path``, its
    parameters loaded on ``contexts``. ``model``, if given, must be the checkpoint's model
    (a model-zoo file: names it)."""
    meta = pretrained_meta(path, model)
    if model is not None and model != meta.get('model'):
        raise MxnagError('%s: checkpoint of a %s model, not %s'
                         % (checkpoint.prefix_of(path) + '.params', meta.get('model'), model))
    net = models.get_model(meta['model'], meta['num_classes'], hybridize=False)
    params = path if meta.get('zoo_file') else checkpoint.prefix_of(path) + '.params'
    try:
        net.load_parameters(params, ctx=contexts)
    except (AssertionError, mx.base.MXNetError) as err:
        raise MxnagError('%s: parameters do not fit a %s model (%s)'
                         % (params, meta['model'], str(err).splitlines()[0])) from None
    return net, meta


def replace_head(net, classes, contexts, initializer=None):
    """Give ``net`` a new, freshly initialised output layer with ``classes`` outputs."""
    attr = models.output_layer_name(net)
    with net.name_scope():
        head = nn.Dense(classes)
    setattr(net, attr, head)
    head.initialize(initializer or mx.init.Xavier(), ctx=contexts)
    return head


def trailing_feature_layers(net, count):
    """The parameters of the last ``count`` layers (that have parameters) of
    ``net.features``: layers a fine-tuning run may keep training at the full rate."""
    if count == 0:
        return set()
    features = getattr(net, 'features', None)
    layers = [b for b in getattr(features, '_children', {}).values()
              if list(b.collect_params().values())]
    if len(layers) < count:
        raise MxnagError('train_last: %s has %d feature layers with parameters, %d asked'
                         % (type(net).__name__, len(layers), count), ('train_last',))
    return {p for layer in layers[len(layers) - count:] for p in layer.collect_params().values()}


def set_feature_training(net, head, mode, lr_mult=0.1, train_last=0):
    """``mode='freeze'``: the parameters outside ``head`` get no gradient;
    ``mode='lr_mult'``: they train with ``lr_mult`` times the learning rate. The last
    ``train_last`` feature layers are left to train at the full rate either way."""
    full_rate = set(head.collect_params().values()) | trailing_feature_layers(net, train_last)
    for param in net.collect_params().values():
        if param in full_rate:
            continue
        if mode == 'freeze':
            param.grad_req = 'null'
        elif mode == 'lr_mult':
            param.lr_mult = lr_mult
        else:
            raise MxnagError("features: mode must be 'freeze' or 'lr_mult', got %r" % mode)
