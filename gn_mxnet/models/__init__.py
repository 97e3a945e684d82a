"""The models layer: the norm factory (norms), the conv factory (convs: ``make_conv('ws')``,
weight-standardized convs), Gluon ResNet/VGG builders (resnet, vgg) with
``get_model(name, norm='gn', ...)`` and ``list_models()``, the Gluon-to-Symbol naming rule
shared with the Symbol builders in symbols/ (symbol_names), BiT's pre-activation ResNetV2 with
timm's parameter names (resnetv2), and weight converters (convert).

Names: ``resnet{18,34,50,101,152}_v1b`` (ImageNet, gluoncv's ResNetV1b with our norm),
``resnet{depth}_small`` (small images: depth 6n+2 basic / 9n+2 bottleneck, any number of
input channels, 28x28 and up), ``vgg{11,13,16,19}``, and BiT's
``resnetv2_{50,101,152}x{wf}_bit`` (timm's names; GN(32) + WS always: norm 'gn', conv 'ws').
"""
import re

from .convs import CONVS, Conv, make_conv
from .resnet import IMAGENET_RESNETS, SmallImageResNet, resnet_v1b, small_image_layout
from .resnetv2 import ResNetV2, bit_model_names, parse_bit_name, resnetv2_bit
from .symbol_names import from_symbol_params, symbol_name, to_symbol_params
from .vgg import VGG, VGG_LAYERS

# Small-image depths listed by list_models(); get_model accepts any valid 6n+2 / 9n+2 depth.
_LISTED_SMALL_DEPTHS = (8, 11, 14, 20, 29, 32, 44, 56, 110, 164)

_IMAGENET_NAME = re.compile(r'^resnet(\d+)_v1b$')
_SMALL_NAME = re.compile(r'^resnet(\d+)_small$')
_VGG_NAME = re.compile(r'^vgg(\d+)$')


def list_models():
    """Model names that :func:`get_model` builds."""
    return (['resnet%d_v1b' % d for d in sorted(IMAGENET_RESNETS)]
            + ['resnet%d_small' % d for d in _LISTED_SMALL_DEPTHS]
            + ['vgg%d' % d for d in sorted(VGG_LAYERS)] + bit_model_names())


def get_model(name, num_classes=1000, norm='gn', num_groups=32, backend='native',
              last_gamma=True, **kwargs):
    """Build the Gluon HybridBlock ``name`` (see :func:`list_models`), not yet initialized.

    norm: 'bn' | 'gn' | 'ln' | 'in' | 'none' (or a :class:`gn_mxnet.norms.Norm`);
    num_groups: GN groups, must divide every layer's width (small-image nets are 16/32/64
    wide, so use at most 16 there); backend: the GN backend 'native' | 'custom' | 'ops';
    last_gamma: zero-init the last norm's gamma in each residual block (ignored by VGG and
    ResNetV2, whose blocks end in a conv); conv: 'plain' | 'ws' (weight-standardized convs,
    :mod:`gn_mxnet.models.convs`, names unchanged; ResNetV2 is 'ws' only). ResNetV2 takes
    ResNetV2's keywords too (``layers``, ``channels``, ``stem_channels``: a reduced-size net;
    ``ws_backend``).
    """
    match = _IMAGENET_NAME.match(name)
    if match:
        return resnet_v1b(int(match.group(1)), num_classes, norm, num_groups, backend,
                          last_gamma, **kwargs)
    match = _SMALL_NAME.match(name)
    if match:
        return SmallImageResNet(int(match.group(1)), num_classes, norm, num_groups, backend,
                                last_gamma, **kwargs)
    match = _VGG_NAME.match(name)
    if match:
        return VGG(int(match.group(1)), num_classes, norm, num_groups, backend, **kwargs)
    if parse_bit_name(name):
        conv = kwargs.pop('conv', 'ws')
        if norm != 'gn' or conv != 'ws':
            raise ValueError("%s is GroupNorm + Weight Standardization by definition; got "
                             "norm=%r, conv=%r (use norm='gn', conv='ws': --norm gn --conv ws)"
                             % (name, norm, conv))
        return resnetv2_bit(name, num_classes, num_groups, backend, **kwargs)
    raise ValueError("unknown model %r; known: %s (any resnet<6n+2 or 9n+2>_small works)"
                     % (name, ', '.join(list_models())))


__all__ = ['get_model', 'list_models', 'resnet_v1b', 'SmallImageResNet', 'small_image_layout',
           'VGG', 'ResNetV2', 'resnetv2_bit', 'symbol_name', 'to_symbol_params',
           'from_symbol_params', 'CONVS', 'Conv', 'make_conv']
