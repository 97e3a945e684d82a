"""The detector's feature pyramid (Lin et al. 2017): gluoncv's ``FPNFeatureExpander`` graph with
the convolution a choice (:mod:`gn_mxnet.models.convs`).

gluoncv writes its FPN convs as ``mx.sym.Convolution`` calls, so a weight-standardized FPN
(mmdetection's gn+ws configs standardize every FPN conv) needs the graph built here. It is
gluoncv's graph with the options the detector uses (1x1 laterals, nearest 2x upsampling,
element-wise sum, P6 by a stride-2 3x3 conv on C5's lateral): the same nodes, names and order,
so ``conv='plain'`` gives gluoncv's symbol exactly (tests compare the JSON) and every conv
variable keeps gluoncv's name (``P<k>_conv_lat_weight``, ``P<k>_conv1_weight``) whatever the
conv.
"""
import mxnet as mx
from mxnet.gluon import SymbolBlock
from gluoncv.nn.feature import _parse_network

from ..models.convs import make_conv


class FPNFeatures(SymbolBlock):
    """P2..P5 and P6 of ``network``'s stage outputs ``outputs`` (C2..C5, by node name).

    ``norm_layer(symbol)`` follows every conv when given (the GN recipe); ``conv`` is a
    :class:`gn_mxnet.models.convs.Conv` or its name. ``pretrained`` says whether the backbone's
    weights are already set (as gluoncv's argument: nothing is downloaded for a block).
    """

    def __init__(self, network, outputs, channels, conv='plain', norm_layer=None,
                 no_bias=True, pretrained=False):
        conv = make_conv(conv)
        inputs, stages, params = _parse_network(network, outputs, ('data',), pretrained,
                                                mx.cpu())
        # gluoncv's initializer attribute, kept so that the graph is gluoncv's node for node.
        weight_init = mx.init.Xavier(rnd_type='uniform', factor_type='in', magnitude=1.)

        def conv_norm(data, name, kernel, stride=1):
            pad = kernel // 2
            out = conv.symbol(data, name, num_filter=channels, kernel=(kernel, kernel),
                              pad=(pad, pad), stride=(stride, stride), no_bias=no_bias,
                              attr={'__init__': weight_init})
            return norm_layer(out) if norm_layer is not None else out

        top = len(stages) + 1   # 5 for C2..C5
        pyramid = []
        for i, stage in enumerate(stages[::-1]):   # C5 first
            level = top - i
            lateral = conv_norm(stage, 'P%d_conv_lat' % level, 1)
            if i == 0:
                y = lateral
                p6 = conv_norm(y, 'P%d_conv1' % (top + 1), 3, stride=2)
            else:
                y = mx.sym.UpSampling(y, scale=2, sample_type='nearest',
                                      name='P%d_upsp' % level)
                y = mx.sym.slice_like(y, lateral, axes=(2, 3), name='P%d_clip' % level)
                y = mx.sym.ElementWiseSum(lateral, y, name='P%d_sum' % level)
            # the 3x3 conv that reduces the upsampling's aliasing
            pyramid.append(conv_norm(y, 'P%d_conv1' % level, 3))
        super().__init__(pyramid[::-1] + [p6], inputs, params)
