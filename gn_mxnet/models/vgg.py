"""Gluon VGG-11/13/16/19 with a one-string norm choice (the GN paper trains VGG-16 with GN).

Layout: ``features`` (a HybridSequential: conv3x3, norm, relu per layer; a 2x2 max-pool
after each stage) then ``classifier`` (4096-4096-classes, dropout 0.5). With a norm the convs
have no bias (the norm's beta is the bias); with ``norm='none'`` they keep one.
The Symbol builder ``symbols/vgg.py`` builds the same graph with the same names
(``features.<i>.weight`` here is ``features_<i>_weight`` there). ``conv='ws'`` makes the
convs weight-standardized (:mod:`gn_mxnet.models.convs`), names unchanged.
"""
from mxnet.gluon import nn

from .convs import make_conv
from .norms import make_norm

# depth -> convs per stage; the stages have 64, 128, 256, 512, 512 channels.
VGG_LAYERS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
              19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_HIDDEN = 4096


def vgg_layout(depth):
    """List of stages, each a list of conv widths, for VGG-``depth``."""
    if depth not in VGG_LAYERS:
        raise ValueError("no VGG of depth %r; choose one of %s" % (depth, sorted(VGG_LAYERS)))
    return [[width] * count for width, count in zip(VGG_WIDTHS, VGG_LAYERS[depth])]


class VGG(nn.HybridBlock):
    """VGG-``depth``. Needs inputs of at least 32x32 (five 2x2 max-pools)."""

    def __init__(self, depth, num_classes=1000, norm='gn', num_groups=32, backend='native',
                 dropout=0.5, conv='plain', **kwargs):
        super().__init__(**kwargs)
        norm_layer = make_norm(norm, num_groups, backend)
        conv = make_conv(conv)
        stages = vgg_layout(depth)
        for width in VGG_WIDTHS:
            norm_layer.check_channels(width)
        self.depth = depth
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='features_')
            with self.features.name_scope():
                for stage in stages:
                    for width in stage:
                        self.features.add(conv.layer(width, kernel_size=3, padding=1,
                                                     use_bias=not norm_layer.has_parameters))
                        self.features.add(norm_layer(in_channels=width))
                        self.features.add(nn.Activation('relu'))
                    self.features.add(nn.MaxPool2D(pool_size=2, strides=2))
            self.classifier = nn.HybridSequential(prefix='classifier_')
            with self.classifier.name_scope():
                self.classifier.add(nn.Dense(VGG_HIDDEN, activation='relu'))
                self.classifier.add(nn.Dropout(dropout))
                self.classifier.add(nn.Dense(VGG_HIDDEN, activation='relu'))
                self.classifier.add(nn.Dropout(dropout))
                self.classifier.add(nn.Dense(num_classes))

    def hybrid_forward(self, F, x):
        return self.classifier(self.features(x))
