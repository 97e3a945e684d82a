"""Gluon ResNets with a one-string norm choice.

ImageNet nets are gluoncv's ResNetV1b (stride on the 3x3 conv, like Detectron and torchvision)
with a :class:`gn_mxnet.norms.Norm` as ``norm_layer``; the blocks are gluoncv's, so the
structural parameter names (``layer1.0.bn1.gamma`` ...) are gluoncv's and its
``resnet50_v1b_gn`` ``.params`` load unchanged.

Small-image nets (CIFAR/MNIST style, depth 6n+2 with basic blocks or 9n+2 with bottlenecks)
reuse the same gluoncv blocks and stage builder behind a 3x3 stem without max-pooling.

With a group-wise norm (``Norm.fuses``) and ``fused=True`` (the default) every norm → relu and
every block's norm → add → relu is one fused GroupNorm call (docs/design.md §2): the blocks
below subclass gluoncv's, keep its children and its name alias, so parameter names (structural
and prefixed) are those of the unfused net and weights load either way. The downsample's norm
stays plain (its output is the residual). ``fused=False`` builds gluoncv's blocks as before.

``conv='ws'`` makes every convolution weight-standardized (:mod:`gn_mxnet.models.convs`): the
net is built with gluoncv's ``nn.Conv2D`` and :meth:`Conv.apply` swaps each for a ``StdConv2D``
sharing its Parameters, so the names are those of ``conv='plain'``; it combines with any norm
and with ``fused``.
"""
import functools

from mxnet.gluon import nn
from gluoncv.model_zoo.resnetv1b import BasicBlockV1b, BottleneckV1b, ResNetV1b

from .convs import make_conv
from .norms import make_norm

# depth -> (block, units per stage); the ImageNet table of He et al.
IMAGENET_RESNETS = {
    18: (BasicBlockV1b, [2, 2, 2, 2]),
    34: (BasicBlockV1b, [3, 4, 6, 3]),
    50: (BottleneckV1b, [3, 4, 6, 3]),
    101: (BottleneckV1b, [3, 4, 23, 3]),
    152: (BottleneckV1b, [3, 8, 36, 3]),
}

# Widths (the `planes` of each stage) of the small-image nets, as in He et al.'s CIFAR nets.
SMALL_IMAGE_PLANES = (16, 32, 64)


def small_image_layout(depth):
    """(bottleneck?, units per stage) for a small-image ResNet of ``depth`` layers.

    MXNet's example rule: 6n+2 uses basic blocks below 164 layers, 9n+2 uses bottlenecks
    (164 and deeper, or any depth that is 9n+2 but not 6n+2, e.g. 11, 29).
    """
    if depth >= 8 and (depth - 2) % 6 == 0 and depth < 164:
        return False, (depth - 2) // 6
    if depth >= 11 and (depth - 2) % 9 == 0:
        return True, (depth - 2) // 9
    raise ValueError("a small-image ResNet has depth 6n+2 (basic blocks, e.g. 8, 14, 20, 56) or "
                     "9n+2 (bottlenecks, e.g. 11, 29, 164); got %r" % (depth,))


def zero_last_gamma(net):
    """Zero-initialize gamma of the last norm in every residual block (Goyal et al.'s recipe).

    gluoncv's BottleneckV1b does this itself when given ``last_gamma=True``; its
    BasicBlockV1b ignores the flag, so its ``bn2`` gets the zero initializer here. Must run
    before ``initialize()``; a norm without parameters ('none') is left alone.
    """
    def visit(block):
        if isinstance(block, BasicBlockV1b) and hasattr(block.bn2, 'gamma'):
            block.bn2.gamma.init = 'zeros'
        for child in block._children.values():
            visit(child)
    visit(net)
    return net


def _relu_norm(norm_layer):
    """The norm layer factory whose layers end in relu (fused; called as layer(x[, residual]))."""
    return functools.partial(norm_layer, activation='relu')


class FusedBasicBlockV1b(BasicBlockV1b):
    """gluoncv's BasicBlockV1b with bn1 → relu and bn2 → add → relu fused into the norms.

    relu1/relu2 are still built (gluoncv's __init__ makes them; they own no parameters) but
    never called."""

    def __init__(self, planes, *args, norm_layer=None, **kwargs):
        super().__init__(planes, *args, norm_layer=_relu_norm(norm_layer), **kwargs)

    def _alias(self):
        # The prefix counter's hint: gluoncv's, so prefixed parameter names do not change.
        return BasicBlockV1b.__name__.lower()

    def hybrid_forward(self, F, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(self.bn1(self.conv1(x))), residual)


class FusedBottleneckV1b(BottleneckV1b):
    """gluoncv's BottleneckV1b with bn1/bn2 → relu and bn3 → add → relu fused into the norms."""

    def __init__(self, planes, *args, norm_layer=None, **kwargs):
        super().__init__(planes, *args, norm_layer=_relu_norm(norm_layer), **kwargs)

    def _alias(self):
        return BottleneckV1b.__name__.lower()

    def hybrid_forward(self, F, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.bn3(self.conv3(out), residual)


FUSED_BLOCKS = {BasicBlockV1b: FusedBasicBlockV1b, BottleneckV1b: FusedBottleneckV1b}


class FusedResNetV1b(ResNetV1b):
    """gluoncv's ResNetV1b with the fused blocks and the stem's bn1 → relu fused.

    The stem (and a deep stem's norms, each already followed by a relu that then changes
    nothing) get the relu norm; the stages get the plain one, so the downsample's norm stays
    plain and the blocks fuse their own."""

    def __init__(self, block, layers, norm_layer=None, **kwargs):
        self._plain_norm = norm_layer
        super().__init__(FUSED_BLOCKS[block], layers, norm_layer=_relu_norm(norm_layer),
                         **kwargs)

    def _alias(self):
        return ResNetV1b.__name__.lower()

    def _make_layer(self, *args, norm_layer=None, **kwargs):
        return super()._make_layer(*args, norm_layer=self._plain_norm, **kwargs)

    def hybrid_forward(self, F, x):
        x = self.maxpool(self.bn1(self.conv1(x)))  # bn1 ends in the relu
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.flat(self.avgpool(x))
        if self.drop is not None:
            x = self.drop(x)
        return self.fc(x)


def _check_widths(norm, widths):
    # Fail at build time, naming the width, rather than at the first forward pass.
    for channels in widths:
        norm.check_channels(channels)


def resnet_v1b(depth, num_classes=1000, norm='gn', num_groups=32, backend='native',
               last_gamma=True, fused=True, conv='plain', **kwargs):
    """ImageNet ResNet-``depth`` (18/34/50/101/152), v1b, with the chosen norm and conv.

    ``fused``: fuse norm → relu and norm → add → relu where the norm is group-wise.
    ``conv``: 'plain' | 'ws' (or a :class:`gn_mxnet.models.convs.Conv`).
    Extra ``kwargs`` go to gluoncv's ResNetV1b (e.g. ``dilated``, ``final_drop``).
    """
    if depth not in IMAGENET_RESNETS:
        raise ValueError("no ImageNet ResNet of depth %r; choose one of %s"
                         % (depth, sorted(IMAGENET_RESNETS)))
    block, units = IMAGENET_RESNETS[depth]
    norm_layer = make_norm(norm, num_groups, backend)
    conv = make_conv(conv)
    _check_widths(norm_layer, [64] + [64 * 2 ** i * block.expansion for i in range(4)]
                  + [64 * 2 ** i for i in range(4)])
    kwargs.setdefault('name_prefix', 'resnetv1b_')
    net_class = FusedResNetV1b if fused and norm_layer.fuses else ResNetV1b
    net = net_class(block, units, classes=num_classes, norm_layer=norm_layer,
                    last_gamma=last_gamma, **kwargs)
    conv.apply(net)
    return zero_last_gamma(net) if last_gamma else net


class SmallImageResNet(ResNetV1b):
    """ResNet for small images (CIFAR 32x32, MNIST 28x28): 3x3 stem, three stages, no max-pool.

    Subclasses ResNetV1b only to reuse its stage builder (``_make_layer``) and thus
    gluoncv's blocks; the ImageNet stem and the fourth stage are not built.
    Parameter names: ``conv1``, ``bn1``, ``layer1..3``, ``fc``. ``fused`` and ``conv`` as in
    :func:`resnet_v1b`.
    """

    def __init__(self, depth, num_classes=10, norm='gn', num_groups=32, backend='native',
                 last_gamma=True, name_prefix='resnetsmall_', fused=True, conv='plain',
                 **kwargs):
        bottleneck, units = small_image_layout(depth)
        conv = make_conv(conv)
        block = BottleneckV1b if bottleneck else BasicBlockV1b
        norm_layer = make_norm(norm, num_groups, backend)
        self._fused = fused and norm_layer.fuses
        if self._fused:
            block = FUSED_BLOCKS[block]
        stem_width = SMALL_IMAGE_PLANES[0]
        _check_widths(norm_layer, [stem_width] + [p * block.expansion for p in SMALL_IMAGE_PLANES]
                      + list(SMALL_IMAGE_PLANES))
        # Skip ResNetV1b.__init__ (it builds the ImageNet net); set what _make_layer reads.
        nn.HybridBlock.__init__(self, prefix=name_prefix, **kwargs)
        self.inplanes = stem_width
        self.norm_kwargs = {}
        self.depth = depth
        with self.name_scope():
            self.conv1 = conv.layer(stem_width, kernel_size=3, strides=1, padding=1,
                                    use_bias=False)
            self.bn1 = (_relu_norm(norm_layer) if self._fused else norm_layer)(
                in_channels=stem_width)
            self.relu = nn.Activation('relu')
            for index, planes in enumerate(SMALL_IMAGE_PLANES, start=1):
                stage = self._make_layer(index, block, planes, units,
                                         strides=1 if index == 1 else 2,
                                         norm_layer=norm_layer, last_gamma=last_gamma)
                setattr(self, 'layer%d' % index, stage)
            self.avgpool = nn.GlobalAvgPool2D()
            self.flat = nn.Flatten()
            self.fc = nn.Dense(num_classes, in_units=SMALL_IMAGE_PLANES[-1] * block.expansion)
        conv.apply(self)   # the stages' convs, built by gluoncv's blocks
        if last_gamma:
            zero_last_gamma(self)

    def hybrid_forward(self, F, x):
        x = self.bn1(self.conv1(x))
        if not self._fused:  # else bn1 ends in the relu
            x = self.relu(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flat(self.avgpool(x)))
