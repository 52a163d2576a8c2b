"""Fine-tuning: a pretrained mxnag checkpoint, a new output layer for the new classes,
and the feature extractor either frozen or trained with a smaller learning rate."""
import mxnet as mx
from mxnet.gluon import nn

from . import checkpoint, models
from ..errors import MxnagError


def load_pretrained(path, contexts, model=None):
    """``(net, meta)``: the network saved in checkpoint ``path``, its parameters loaded on
    ``contexts``. ``model``, if given, must be the checkpoint's model."""
    meta = checkpoint.read_meta(path)
    if model is not None and model != meta.get('model'):
        raise MxnagError('%s: checkpoint of a %s model, not %s'
                         % (checkpoint.prefix_of(path) + '.params', meta.get('model'), model))
    net = models.get_model(meta['model'], meta['num_classes'], hybridize=False)
    try:
        net.load_parameters(checkpoint.prefix_of(path) + '.params', ctx=contexts)
    except (AssertionError, mx.base.MXNetError) as err:
        raise MxnagError('%s: parameters do not fit a %s model (%s)'
                         % (checkpoint.prefix_of(path) + '.params', meta['model'],
                            str(err).splitlines()[0])) from None
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
