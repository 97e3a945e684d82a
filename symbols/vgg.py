"""VGG-11/13/16/19 Symbols with a one-string norm choice (the GN paper's VGG-16 with GN).

Mirrors ``gn_mxnet.models.vgg.VGG`` layer for layer, with its names: ``features_<i>`` counts
conv, norm, relu and pool layers like the Gluon HybridSequential does, and the classifier is
``classifier_0`` (fc6), ``classifier_2`` (fc7), ``classifier_4`` (the logits). ``conv='ws'``
makes the convs weight-standardized, with the same variables.
"""
import mxnet as mx

from gn_mxnet.models.vgg import VGG_HIDDEN, vgg_layout
from gn_mxnet.models.convs import make_conv
from gn_mxnet.models.norms import make_norm

from .common import cast_input, conv_layer, parse_image_shape, relu, softmax_head


def get_symbol(num_classes, num_layers, image_shape, norm='gn', num_groups=32,
               dtype='float32', backend='native', dropout=0.5, conv='plain', **kwargs):
    """VGG-``num_layers`` Symbol ending in SoftmaxOutput(name='softmax'); inputs >= 32x32."""
    _, height, width = parse_image_shape(image_shape)
    if min(height, width) < 32:
        raise ValueError("VGG halves the image five times and needs at least 32x32 inputs; "
                         "got %dx%d" % (height, width))
    norm = make_norm(norm, num_groups, backend)
    conv_kind = make_conv(conv)
    body = cast_input(mx.sym.Variable('data'), dtype)
    index = 0
    for stage in vgg_layout(num_layers):
        for channels in stage:
            body = conv_layer(body, 'features_%d' % index, channels, 3, 1, 1,
                              no_bias=norm.has_parameters, kind=conv_kind)
            body = relu(norm.symbol(body, 'features_%d' % (index + 1), channels))
            index += 3
        body = mx.sym.Pooling(body, kernel=(2, 2), stride=(2, 2), pool_type='max')
        index += 1
    for layer in (0, 2):
        body = mx.sym.FullyConnected(body, num_hidden=VGG_HIDDEN, name='classifier_%d' % layer)
        body = mx.sym.Dropout(relu(body), p=dropout)
    logits = mx.sym.FullyConnected(body, num_hidden=num_classes, name='classifier_4')
    return softmax_head(logits, dtype)
