"""BiT's ResNetV2 (Kolesnikov et al., 2020, "Big Transfer"), as timm builds ``resnetv2_*_bit``.

A pre-activation ResNet (He et al., 2016, "Identity Mappings") with GroupNorm(32) and
Weight-Standardized convolutions, and timm's structural parameter names, so that timm's state
dicts load by name (gn_mxnet.convert maps only GroupNorm's ``weight``/``bias`` to our
``gamma``/``beta``)::

    stem.conv.weight                                  7x7/2 StdConv, no bias
    stages.{i}.blocks.{j}.norm1|norm2|norm3.gamma|beta GN(32) + relu (fused), eps 1e-5
    stages.{i}.blocks.{j}.conv1|conv2|conv3.weight    1x1, 3x3 (stride here), 1x1 StdConv
    stages.{i}.blocks.0.downsample.conv.weight        1x1 StdConv (stride), no norm
    norm.gamma|beta                                   final GN(32) + relu
    head.fc.weight|bias                               1x1 conv with bias, after global avg

What timm's ``_create_resnetv2_bit`` sets and this module mirrors (timm 1.0.31,
timm/models/resnetv2.py; checked against timm's logits by tests/test_resnetv2.py):

- convs are timm's StdConv2d with eps=1e-8: w_hat = (w - mean) / sqrt(var_biased + 1e-8) per
  output channel (gn_mxnet.gluon.StdConv2D, ws_convention='timm'), symmetric padding
  ((stride - 1) + (k - 1)) // 2, no bias;
- the 'fixed' stem: conv 7x7/2 (padding 3), then a zero ConstantPad2d(1) and a 3x3/2 max-pool
  with no padding of its own (the stem conv's output is not yet normalized, so a zero pad and
  max-pool's usual -inf pad differ);
- blocks (PreActBottleneck): x_pre = relu(GN(x)); shortcut = downsample(x_pre) in each stage's
  first block, else x; out = conv3(relu(GN(conv2(relu(GN(conv1(x_pre))))))) + shortcut; the
  3x3 conv carries the stride (1 in stage 0, 2 after); mid width = out width / 4;
- widths: stem 64 * wf, stage outputs (256, 512, 1024, 2048) * wf, each rounded by timm's
  ``make_divisible`` (to a multiple of 8); the model names give depth and wf (``50x3``).

The add of a block is the next block's norm1 input, not the output of a norm, so only
norm -> relu is fused (GroupNorm(activation='relu')).
"""
import re

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..operator.gluon import GroupNorm, StdConv2D
from ..operator.weight_standardization import DEFAULT_BACKEND as DEFAULT_WS_BACKEND

# depth -> blocks per stage (He et al.'s bottleneck ResNets).
BIT_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# timm's registered BiT models: depth -> width factors.
BIT_WIDTHS = {50: (1, 3), 101: (1, 3), 152: (2, 4)}
BIT_CHANNELS = (256, 512, 1024, 2048)
BIT_STEM_CHANNELS = 64
GN_GROUPS = 32
GN_EPS = 1e-5       # timm's GroupNormAct default; BiT does not change it
WS_EPS = 1e-8       # timm's _create_resnetv2_bit: partial(StdConv2d, eps=1e-8)
BOTTLE_RATIO = 0.25

_NAME = re.compile(r'^resnetv2_(\d+)x(\d+)_bit$')


def bit_model_names():
    """timm's BiT model names, which :func:`resnetv2_bit` (and get_model) build."""
    return ['resnetv2_%dx%d_bit' % (depth, wf) for depth in sorted(BIT_WIDTHS)
            for wf in BIT_WIDTHS[depth]]


def make_divisible(value, divisor=8, round_limit=0.9):
    """timm's channel rounding (timm.layers.make_divisible): the nearest multiple of
    ``divisor``, at least ``divisor``, and not more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class _Convs:
    """Makes the net's StdConv2D layers: timm's convention, BiT's eps, no bias."""

    def __init__(self, ws_backend):
        self.ws_backend = ws_backend

    def __call__(self, in_channels, channels, kernel_size, strides=1):
        padding = ((strides - 1) + (kernel_size - 1)) // 2   # timm's get_padding
        # timm's _init_weights: kaiming normal, fan_out, relu gain.
        return StdConv2D(channels, kernel_size, strides=strides, padding=padding,
                         in_channels=in_channels, use_bias=False,
                         weight_initializer=mx.init.MSRAPrelu('out', 0.0),
                         ws_convention='timm', ws_eps=WS_EPS, ws_backend=self.ws_backend)


class _Norms:
    """Makes the net's GN(32) + relu layers."""

    def __init__(self, num_groups, backend):
        self.num_groups, self.backend = num_groups, backend

    def __call__(self, channels):
        if channels % self.num_groups:
            raise ValueError("GroupNorm(%d) cannot normalize %d channels; every width (stem, "
                             "stage outputs and their quarters) must be a multiple of it"
                             % (self.num_groups, channels))
        return GroupNorm(self.num_groups, in_channels=channels, epsilon=GN_EPS,
                         backend=self.backend, activation='relu')


class Stem(HybridBlock):
    """timm's 'fixed' stem: ``conv`` (7x7/2), zero pad 1, max-pool 3x3/2 without padding."""

    def __init__(self, in_channels, channels, convs, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = convs(in_channels, channels, 7, strides=2)

    def hybrid_forward(self, F, x):
        x = F.pad(self.conv(x), mode='constant', constant_value=0,
                  pad_width=(0, 0, 0, 0, 1, 1, 1, 1))
        return F.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type='max',
                         pooling_convention='valid')


class Downsample(HybridBlock):
    """timm's DownsampleConv with preact=True: ``conv`` (1x1, the stage's stride), no norm."""

    def __init__(self, in_channels, channels, strides, convs, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = convs(in_channels, channels, 1, strides=strides)

    def hybrid_forward(self, F, x):
        return self.conv(x)


class PreActBottleneck(HybridBlock):
    """timm's PreActBottleneck (formula in the module docstring); ``downsample`` only when
    ``downsample=True`` (each stage's first block)."""

    def __init__(self, in_channels, channels, strides, downsample, convs, norms, **kwargs):
        super().__init__(**kwargs)
        mid = make_divisible(channels * BOTTLE_RATIO)
        with self.name_scope():
            self.downsample = (Downsample(in_channels, channels, strides, convs)
                               if downsample else None)
            self.norm1 = norms(in_channels)
            self.conv1 = convs(in_channels, mid, 1)
            self.norm2 = norms(mid)
            self.conv2 = convs(mid, mid, 3, strides=strides)
            self.norm3 = norms(mid)
            self.conv3 = convs(mid, channels, 1)

    def hybrid_forward(self, F, x):
        preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = self.conv2(self.norm2(self.conv1(preact)))
        return self.conv3(self.norm3(out)) + shortcut


class Stage(HybridBlock):
    """timm's ResNetStage: ``blocks``, the first one downsampling (and changing the width)."""

    def __init__(self, in_channels, channels, depth, strides, convs, norms, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.blocks = nn.HybridSequential()
            for index in range(depth):
                self.blocks.add(PreActBottleneck(
                    in_channels if index == 0 else channels, channels,
                    strides if index == 0 else 1, index == 0, convs, norms))

    def hybrid_forward(self, F, x):
        return self.blocks(x)


class Head(HybridBlock):
    """timm's ClassifierHead(use_conv=True): global average pool, ``fc`` (1x1 conv, bias),
    flatten."""

    def __init__(self, in_channels, num_classes, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            # timm's _init_weights for head.fc: normal(0, 0.01) weight, zero bias.
            self.fc = nn.Conv2D(num_classes, 1, in_channels=in_channels, use_bias=True,
                                weight_initializer=mx.init.Normal(0.01),
                                bias_initializer='zeros')

    def hybrid_forward(self, F, x):
        return F.flatten(self.fc(F.mean(x, axis=(2, 3), keepdims=True)))


class ResNetV2(HybridBlock):
    """Pre-activation ResNetV2 with GN + WS and timm's names; arguments as timm's ResNetV2
    (``layers``, ``channels``, ``width_factor``, ``stem_channels`` = timm's stem_chs,
    ``in_channels`` = timm's in_chans), BiT's settings fixed (module docstring).

    num_groups: GN groups (BiT: 32); backend: the GroupNorm backend ('native' | 'custom' |
    'ops'); ws_backend: the Weight Standardization backend ('native' | 'ops').
    Every parameter's shape is known at construction (no deferred initialization).
    """

    def __init__(self, layers, channels=BIT_CHANNELS, num_classes=1000, width_factor=1,
                 stem_channels=BIT_STEM_CHANNELS, in_channels=3, num_groups=GN_GROUPS,
                 backend='native', ws_backend=DEFAULT_WS_BACKEND, **kwargs):
        super().__init__(**kwargs)
        if len(layers) != len(channels) or not layers or min(layers) < 1:
            raise ValueError("ResNetV2 needs one positive block count per stage width; got "
                             "layers=%s, channels=%s" % (list(layers), list(channels)))
        if width_factor < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("width_factor, num_classes and in_channels must be >= 1; got "
                             "%r, %r, %r" % (width_factor, num_classes, in_channels))
        convs, norms = _Convs(ws_backend), _Norms(num_groups, backend)
        width = make_divisible(stem_channels * width_factor)
        self.layers, self.widths = list(layers), []
        with self.name_scope():
            self.stem = Stem(in_channels, width, convs)
            self.stages = nn.HybridSequential()
            for index, (depth, stage_width) in enumerate(zip(layers, channels)):
                out = make_divisible(stage_width * width_factor)
                self.stages.add(Stage(width, out, depth, 1 if index == 0 else 2, convs, norms))
                width = out
                self.widths.append(out)
            self.norm = norms(width)
            self.head = Head(width, num_classes)

    def hybrid_forward(self, F, x):
        return self.head(self.norm(self.stages(self.stem(x))))


def parse_bit_name(name):
    """(depth, width factor) of a name ``resnetv2_<depth>x<wf>_bit``, or None."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def resnetv2_bit(name, num_classes=1000, num_groups=GN_GROUPS, backend='native', **kwargs):
    """BiT ResNetV2 ``name`` (``resnetv2_50x1_bit``, any depth of BIT_LAYERS and width factor
    >= 1; timm registers :func:`bit_model_names`). ``kwargs`` go to :class:`ResNetV2`; giving
    ``layers``/``channels``/``stem_channels`` overrides the name's (a reduced-size net)."""
    parsed = parse_bit_name(name)
    if parsed is None or parsed[0] not in BIT_LAYERS or parsed[1] < 1:
        raise ValueError("unknown BiT ResNetV2 %r; known: %s (depths %s, any width >= 1)"
                         % (name, ', '.join(bit_model_names()), sorted(BIT_LAYERS)))
    depth, width_factor = parsed
    kwargs.setdefault('layers', BIT_LAYERS[depth])
    kwargs.setdefault('width_factor', width_factor)
    kwargs.setdefault('prefix', name + '_')
    return ResNetV2(num_classes=num_classes, num_groups=num_groups, backend=backend, **kwargs)


# --- the layout of a state dict ------------------------------------------------------------
_BLOCK_CONV3 = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.conv3\.weight$')
STEM_WEIGHT = 'stem.conv.weight'
HEAD_WEIGHT = 'head.fc.weight'


def is_resnetv2(names):
    """Whether tensor names (timm's or ours) are a ResNetV2's."""
    return STEM_WEIGHT in names and any(_BLOCK_CONV3.match(name) for name in names)


def layout_of(shapes):
    """:class:`ResNetV2`'s arguments (layers, channels, stem_channels, in_channels,
    num_classes) of the net whose tensors have ``shapes`` ({name: shape}, timm's or our names;
    only conv weights are read, named alike in both), and the timm name it has, or None."""
    blocks, widths = {}, {}
    for name, shape in shapes.items():
        match = _BLOCK_CONV3.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            if block == 0:
                widths[stage] = shape[0]
    if (not is_resnetv2(shapes) or HEAD_WEIGHT not in shapes
            or sorted(blocks) != list(range(len(blocks))) or sorted(widths) != sorted(blocks)):
        raise ValueError("not a ResNetV2 state dict (needs %s, %s and stages.<i>.blocks.<j>."
                         "conv3.weight for consecutive stages)" % (STEM_WEIGHT, HEAD_WEIGHT))
    stem = tuple(shapes[STEM_WEIGHT])
    layout = {'layers': [blocks[s] for s in sorted(blocks)],
              'channels': [widths[s] for s in sorted(widths)],
              'stem_channels': stem[0], 'in_channels': stem[1],
              'num_classes': tuple(shapes[HEAD_WEIGHT])[0]}
    name = None
    for depth, layers in BIT_LAYERS.items():
        width_factor = layout['stem_channels'] // BIT_STEM_CHANNELS
        if (tuple(layout['layers']) == layers
                and layout['stem_channels'] == BIT_STEM_CHANNELS * width_factor
                and layout['channels'] == [c * width_factor for c in BIT_CHANNELS]):
            name = 'resnetv2_%dx%d_bit' % (depth, width_factor)
    return layout, name
