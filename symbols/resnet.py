"""ResNet Symbols with a one-string norm choice (MXNet example/image-classification style).

``image_shape`` picks the family, as MXNet's example does: height > 32 gives the ImageNet
ResNet-18/34/50/101/152 (v1b: the stride sits on the 3x3 conv, as in gluoncv, Detectron and
torchvision), height <= 32 the small-image ResNet of depth 6n+2 (basic) or 9n+2 (bottleneck).
Names mirror the Gluon nets of ``gn_mxnet.models`` (conv1, bn1, layer<s>_<i>_conv<k>,
layer<s>_<i>_bn<k>, layer<s>_<i>_downsample_0/1, fc) so the two load the same weights.
With a group-wise norm and ``fused=True`` (the default), norm → relu and a block's
norm → add → relu are one fused GroupNorm node named as the norm; the variables (and so the
argument names) are the unfused net's. ``conv='ws'`` makes every convolution
weight-standardized (gn_mxnet.models.convs), with the same variables.
"""
import mxnet as mx

from gn_mxnet.models.resnet import IMAGENET_RESNETS, SMALL_IMAGE_PLANES, small_image_layout
from gn_mxnet.models.convs import make_conv
from gn_mxnet.models.norms import make_norm

from .common import cast_input, conv_layer, parse_image_shape, relu, softmax_head

BOTTLENECK_EXPANSION = 4


def norm_relu(norm, data, name, channels, fused, zero_gamma=False, residual=None):
    """relu(norm(data) [+ residual]): one fused node where ``fused`` and the norm fuses."""
    if fused and norm.fuses:
        return norm.symbol(data, name, channels, zero_gamma, act_type='relu', residual=residual)
    out = norm.symbol(data, name, channels, zero_gamma)
    return relu(out if residual is None else out + residual)


def residual_block(data, name, in_channels, planes, stride, bottleneck, norm, last_gamma,
                   fused=True, conv_kind='plain'):
    """One residual block, basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1).

    The same code serves every norm and conv: ``norm`` is a :class:`gn_mxnet.norms.Norm`,
    ``conv_kind`` a :class:`gn_mxnet.models.convs.Conv` or its name.
    Returns (output Symbol, output channels).
    """
    if bottleneck:
        out_channels = planes * BOTTLENECK_EXPANSION
        convs = [(planes, 1, 1), (planes, 3, stride), (out_channels, 1, 1)]
    else:
        out_channels = planes
        convs = [(planes, 3, stride), (planes, 3, 1)]
    shortcut = data
    if stride != 1 or in_channels != out_channels:
        shortcut = conv_layer(data, name + '_downsample_0', out_channels, 1, stride,
                              kind=conv_kind)
        shortcut = norm.symbol(shortcut, name + '_downsample_1', out_channels)
    body = data
    for index, (channels, kernel, conv_stride) in enumerate(convs, start=1):
        is_last = index == len(convs)
        body = conv_layer(body, '%s_conv%d' % (name, index), channels, kernel, conv_stride,
                          pad=kernel // 2, kind=conv_kind)
        body = norm_relu(norm, body, '%s_bn%d' % (name, index), channels, fused,
                         zero_gamma=is_last and last_gamma,
                         residual=shortcut if is_last else None)
    return body, out_channels


def residual_stages(data, in_channels, stage_planes, units, bottleneck, first_stride, norm,
                    last_gamma, fused=True, conv_kind='plain'):
    """Stages layer1, layer2, ...; the first block of every stage but the first strides by 2."""
    channels = in_channels
    for stage, planes in enumerate(stage_planes, start=1):
        for unit in range(units[stage - 1]):
            stride = (first_stride if stage == 1 else 2) if unit == 0 else 1
            data, channels = residual_block(data, 'layer%d_%d' % (stage, unit), channels,
                                            planes, stride, bottleneck, norm, last_gamma,
                                            fused, conv_kind)
    return data, channels


def get_symbol(num_classes, num_layers, image_shape, norm='gn', num_groups=32,
               last_gamma=True, dtype='float32', backend='native', fused=True, conv='plain',
               **kwargs):
    """ResNet-``num_layers`` Symbol ending in SoftmaxOutput(name='softmax').

    norm: 'bn' | 'gn' | 'ln' | 'in' | 'none'; backend: GroupNorm backend ('native' needs
    ``gn_mxnet.load_library()`` first); fused: see the module docstring; conv: 'plain' | 'ws'
    (or a :class:`gn_mxnet.models.convs.Conv`). Other keyword
    arguments (MXNet's example scripts pass all their options) are ignored.
    """
    _, height, _ = parse_image_shape(image_shape)
    norm = make_norm(norm, num_groups, backend)
    conv_kind = make_conv(conv)
    data = cast_input(mx.sym.Variable('data'), dtype)
    if height <= 32:
        bottleneck, per_stage = small_image_layout(num_layers)
        stage_planes, units = SMALL_IMAGE_PLANES, [per_stage] * len(SMALL_IMAGE_PLANES)
        stem_width = stage_planes[0]
        body = conv_layer(data, 'conv1', stem_width, 3, 1, 1, kind=conv_kind)
        body = norm_relu(norm, body, 'bn1', stem_width, fused)
    else:
        if num_layers not in IMAGENET_RESNETS:
            raise ValueError("no ImageNet ResNet of depth %r; choose one of %s"
                             % (num_layers, sorted(IMAGENET_RESNETS)))
        block, units = IMAGENET_RESNETS[num_layers]
        bottleneck = block.expansion == BOTTLENECK_EXPANSION
        stage_planes, stem_width = (64, 128, 256, 512), 64
        body = conv_layer(data, 'conv1', stem_width, 7, 2, 3, kind=conv_kind)
        body = norm_relu(norm, body, 'bn1', stem_width, fused)
        body = mx.sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type='max')
    body, channels = residual_stages(body, stem_width, stage_planes, units, bottleneck, 1,
                                     norm, last_gamma, fused, conv_kind)
    pooled = mx.sym.Pooling(body, global_pool=True, kernel=(1, 1), pool_type='avg')
    logits = mx.sym.FullyConnected(mx.sym.Flatten(pooled), num_hidden=num_classes, name='fc')
    return softmax_head(logits, dtype)
