"""gluoncv Mask R-CNN, ResNet-FPN, with Detectron's GroupNorm recipe or frozen BatchNorm (BN*).

``norm='gn'`` (Wu & He 2018, Detectron's ``e2e_mask_rcnn_R-50-FPN_2x_gn``): GN in
  (i) the backbone, (ii) every FPN conv (lateral 1x1, output 3x3, P6), (iii) a 4conv+1fc box
  head, (iv) the 4 convs of the mask head; everything trains.
``norm='bn'`` (BN*): the backbone's BatchNorm is frozen into an affine layer
  (``use_global_stats``, gamma/beta not trained), no norm in FPN/heads, a 2fc box head, and
  stem + first stage frozen: gluoncv's own ``mask_rcnn_fpn_resnet50_v1b_coco`` recipe.

``conv='ws'`` (GN+WS, mmdetection's ``mask_rcnn_r50_fpn_gn_ws-all_2x_coco``: ``conv_cfg=ConvWS``
  in backbone, neck, box head and mask head) weight-standardizes every conv that a GN follows:
  all of the backbone's (stem, bottlenecks, shortcuts), the FPN's 9 (laterals, outputs, P6) and
  the 4+4 head convs. The convs no norm follows stay plain, as mmdetection's do: the RPN's 3x3
  and its 1x1 predictors, the mask head's 2x deconv and 1x1 predictor (and the box head's fc
  layers are no convs). WS is paired with GN only (:func:`check_conv`).

gluoncv cannot build the GN variant itself in MXNet 1.x: its Mask head only inserts a norm
when it is SyncBatchNorm, its FPN calls the norm as a *Symbol* function, and MXNet's own
GroupNorm has per-group gamma. Here the backbone and box head take our Gluon ``GroupNorm``
(per-channel gamma/beta) through gn_mxnet's norm factory, the FPN (gluoncv's graph, built by
:class:`~gn_mxnet.detection.fpn.FPNFeatures` so that its convs can be WS) gets
:class:`FPNSymbolNorm`, and the mask head's conv tower is rebuilt with GN after construction.
"""
import warnings

import mxnet as mx
from mxnet.gluon import nn
from gluoncv.model_zoo.rcnn.mask_rcnn import MaskRCNN as GluonCVMaskRCNN

from ..models.convert import load_weights
from ..models.convs import CONVS, make_conv
from ..models.norms import make_norm
from ..models.resnet import IMAGENET_RESNETS, resnet_v1b
from ..operator.library import load_library
from .fpn import FPNFeatures

DETECTION_NORMS = ('gn', 'bn')
FPN_CHANNELS = 256
HEAD_CHANNELS = 256
BOX_HEAD_FC = 1024
NUM_HEAD_CONVS = 4
# Frozen-BN recipe: parameters matching this are trained; the stem and layer1 stay fixed.
BN_TRAIN_PATTERNS = '|'.join(['.*dense', '.*rpn', '.*mask', 'P', '.*down(2|3|4)_conv',
                              '.*layers(2|3|4)_conv'])


class MaskRCNN(GluonCVMaskRCNN):
    """gluoncv's Mask R-CNN with FPN RoI pooling that does not trip over MXNet's ROIAlign.

    gluoncv gives each RoI one FPN level: for every level it marks the other levels' RoIs with
    batch index -1, pools, and sums the levels, counting on ROIAlign to write zeros for -1 RoIs.
    MXNet 1.9.1's CPU ROIAlign leaves those rows unwritten (stale memory, sometimes NaN) and
    writes its zeros into the first RoI's row instead: box and mask heads got garbage, losses
    differed from run to run, and a NaN row, hidden from the loss by ReLU, made the gradients
    NaN (0 x NaN). Here each level pools every RoI (no -1) and F.where keeps its own RoIs'
    rows. (Same class name as gluoncv's: parameter names, and the train patterns matching
    them, stay.)
    """

    def _pyramid_roi_feats(self, F, features, rpn_rois, roi_size, strides, roi_mode='align',
                           roi_canonical_scale=224.0, sampling_ratio=2, eps=1e-6):
        if roi_mode != 'align':
            return super()._pyramid_roi_feats(F, features, rpn_rois, roi_size, strides,
                                              roi_mode, roi_canonical_scale, sampling_ratio, eps)
        max_stage = self._max_stage - 1 if self._max_stage > 5 else self._max_stage  # no P6
        _, x1, y1, x2, y2 = F.split(rpn_rois, axis=-1, num_outputs=5)
        # gluoncv's level rule: 4 + log2(sqrt(area) / 224), clipped to the pooled levels.
        level = F.floor(4 + F.log2(F.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
                                   / roi_canonical_scale + eps))
        level = F.squeeze(F.clip(level, self._min_stage, max_stage))
        pooled = []
        for i, stage in enumerate(range(self._min_stage, max_stage + 1)):
            feature = F.contrib.ROIAlign(features[i], rpn_rois, roi_size, 1.0 / strides[i],
                                         sample_ratio=sampling_ratio)
            pooled.append(F.where(level == stage, feature, F.zeros_like(feature)))
        return F.ElementWiseSum(*pooled)


class FPNSymbolNorm:
    """gluoncv's FPN calls ``norm_layer(symbol, **norm_kwargs)``; this applies GN to a Symbol.

    Each call makes fresh gamma/beta variables ``P_gn<k>_gamma``/``_beta`` of shape (channels,)
    (every FPN conv has the same width), so the SymbolBlock gets named, per-channel parameters.
    """

    def __init__(self, norm, channels):
        self.norm = norm
        self.channels = channels
        self.calls = 0

    def __call__(self, data, **_unused):
        name = 'P_gn%d' % self.calls
        self.calls += 1
        return self.norm.symbol(data, name, self.channels)


def fpn_output_names(depth):
    """The last ReLU of each ResNet stage (gluoncv's symbol names), the FPN's C2..C5."""
    _, units = IMAGENET_RESNETS[depth]
    return ['layers%d_relu%d_fwd' % (stage + 1, 3 * count - 1)
            for stage, count in enumerate(units)]


def check_conv(norm, conv):
    """Refuses a conv the detector does not build, and WS without GN: mmdetection pairs WS
    with GN only, and under BN* no conv is followed by a norm that normalizes (the backbone's
    BN is a frozen affine layer, the FPN and heads have none)."""
    if conv not in CONVS:
        raise ValueError('unknown --conv %r for the detector; choose %s'
                         % (conv, ', '.join(CONVS)))
    if conv == 'ws' and norm != 'gn':
        raise ValueError("--conv ws needs --norm gn: weight standardization is paired with "
                         "GroupNorm (mmdetection's gn+ws); BN* freezes its norm and has none in "
                         "the FPN and heads")


def _conv_norm_relu_tower(norm, conv, channels, count, weight_init=None):
    tower = nn.HybridSequential()
    for _ in range(count):
        # A norm follows, so a conv bias would be cancelled by its mean subtraction.
        tower.add(conv.layer(channels, 3, padding=1, use_bias=False,
                             weight_initializer=weight_init),
                  norm(in_channels=channels), nn.Activation('relu'))
    return tower


def _box_head(norm, conv):
    head = nn.HybridSequential()
    # gluoncv pools RoIs to 14x14 (shared with the mask head); the box head works at 7x7.
    head.add(nn.AvgPool2D(pool_size=(3, 3), strides=2, padding=1))
    if norm is None:
        for _ in range(2):
            head.add(nn.Dense(BOX_HEAD_FC, weight_initializer=mx.init.Normal(0.01)),
                     nn.Activation('relu'))
        return head
    head.add(_conv_norm_relu_tower(norm, conv, HEAD_CHANNELS, NUM_HEAD_CONVS))
    head.add(nn.Dense(BOX_HEAD_FC, weight_initializer=mx.init.Normal(0.01)),
             nn.Activation('relu'))
    return head


def _put_gn_into_mask_head(net, norm, conv):
    """Replace gluoncv's mask conv tower (no norm) by convs + GN + ReLU, then the 2x deconv."""
    mask = net.mask
    init = mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)
    with mask.name_scope():
        deconv = _conv_norm_relu_tower(norm, conv, HEAD_CHANNELS, NUM_HEAD_CONVS,
                                       weight_init=init)
        deconv.add(nn.Conv2DTranspose(HEAD_CHANNELS, kernel_size=(2, 2), strides=(2, 2),
                                      padding=(0, 0), weight_initializer=init))
    mask.deconv = deconv


def detector_settings(image_short, image_max_size, small=False):
    """Keyword arguments for gluoncv's MaskRCNN: COCO's (Detectron) or a reduced CPU budget.

    ``small`` keeps the architecture and shrinks only the sampling budgets (proposals, RoIs per
    image, detections), which dominate the head cost on small images with few objects.
    """
    settings = dict(
        short=image_short, max_size=image_max_size, min_stage=2, max_stage=6,
        nms_thresh=0.5, nms_topk=-1, post_nms=-1, roi_mode='align', roi_size=(14, 14),
        strides=(4, 8, 16, 32, 64), clip=4.42, rpn_channel=FPN_CHANNELS, base_size=16,
        scales=(2, 4, 8, 16, 32), ratios=(0.5, 1, 2), alloc_size=(384, 384),
        rpn_nms_thresh=0.7, rpn_train_pre_nms=12000, rpn_train_post_nms=2000,
        rpn_test_pre_nms=6000, rpn_test_post_nms=1000, rpn_min_size=1, num_sample=512,
        pos_iou_thresh=0.5, pos_ratio=0.25, target_roi_scale=2, num_fcn_convs=NUM_HEAD_CONVS,
        mask_channels=HEAD_CHANNELS, rcnn_max_dets=100, max_num_gt=100)
    if small:
        settings.update(rpn_train_pre_nms=1000, rpn_train_post_nms=200, rpn_test_pre_nms=300,
                        rpn_test_post_nms=50, num_sample=32, rcnn_max_dets=20,
                        alloc_size=(128, 128), max_num_gt=10)
    return settings


def build_backbone(depth, norm, num_groups, backend, pretrained_backbone=None, conv='plain'):
    """ResNet-``depth`` v1b with GN or frozen BN, every conv ``conv``; loads
    ``pretrained_backbone`` if given."""
    if depth not in (50, 101):
        raise ValueError('Mask R-CNN FPN is built for ResNet-50 or ResNet-101, got depth %r'
                         % (depth,))
    if norm == 'gn':
        # Unfused: gluoncv's FPN takes the stage outputs by their relu nodes' names
        # (stage_output_names), which the fused form has no longer.
        backbone = resnet_v1b(depth, norm='gn', num_groups=num_groups, backend=backend,
                              last_gamma=False, fused=False, conv=conv)
    else:
        # use_global_stats freezes mean/var: Detectron's BN* (an affine layer).
        backbone = resnet_v1b(depth, norm='bn', last_gamma=False, use_global_stats=True)
    backbone.initialize()
    if pretrained_backbone:
        # The classifier is not part of a detector backbone.
        load_weights(backbone, pretrained_backbone, skip=('fc.',))
    return backbone


def build_mask_rcnn(classes, depth=50, norm='gn', num_groups=32, backend='native',
                    pretrained_backbone=None, per_device_batch_size=1, image_short=800,
                    image_max_size=1333, small=False, conv='plain'):
    """Mask R-CNN ResNet-``depth``-FPN for ``classes`` (foreground names), initialized.

    ``conv='ws'``: every conv that a GN follows is weight-standardized (module docstring);
    the parameter names are those of ``conv='plain'``.

    ``pretrained_backbone``: a weight file gn_mxnet.convert reads (Detectron ``R-50-GN.pkl``,
    gluoncv ``.params``, torchvision ``.npz``); without it the backbone starts from scratch.
    """
    if norm not in DETECTION_NORMS:
        raise ValueError('unknown --norm %r for the detector; choose gn (GroupNorm everywhere) '
                         'or bn (frozen BatchNorm, BN*)' % (norm,))
    if not classes:
        raise ValueError('the detector needs at least one class')
    check_conv(norm, conv)
    if norm == 'gn' and backend == 'native':
        load_library()
    backbone = build_backbone(depth, norm, num_groups, backend, pretrained_backbone, conv)
    gn = make_norm('gn', num_groups, backend) if norm == 'gn' else None
    conv = make_conv(conv)
    features = FPNFeatures(
        backbone, fpn_output_names(depth), FPN_CHANNELS, conv,
        norm_layer=FPNSymbolNorm(gn, FPN_CHANNELS) if gn is not None else None,
        # A norm after the conv makes its bias redundant.
        no_bias=gn is not None, pretrained=bool(pretrained_backbone))
    net = MaskRCNN(features, None, list(classes), box_features=_box_head(gn, conv),
                   train_patterns=None if gn is not None else BN_TRAIN_PATTERNS,
                   per_device_batch_size=per_device_batch_size,
                   **detector_settings(image_short, image_max_size, small))
    if gn is not None:
        _put_gn_into_mask_head(net, gn, conv)
    # The backbone's parameters are already initialized (or loaded): initialize only the rest
    # (Gluon would warn once per backbone parameter).
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*already initialized.*')
        net.initialize()
    # Gluon infers the remaining shapes (FPN GN, head convs) at the first forward pass; do it
    # now on a tiny image so that checkpoints and weight files can be loaded before training.
    net(mx.nd.zeros((1, 3, 64, 64)))
    # The R-CNN target generator (box-encoder constants, no learnable weights) is made on first
    # use in training; make it now so checkpoints of trained and fresh nets list the same arrays.
    net.target_generator  # noqa: B018 (property with a side effect)
    configure_weight_decay(net)
    return net


def trainable_parameters(net):
    """Parameters the optimizer updates: gluoncv's train_patterns, minus frozen statistics."""
    params = net.collect_train_params()
    return {name: p for name, p in params.items()
            if p.grad_req != 'null' and 'running_' not in name and 'moving_' not in name}


def configure_weight_decay(net):
    """No weight decay on biases and on norm gamma/beta (Detectron: WEIGHT_DECAY_GN = 0)."""
    for name, param in net.collect_params().items():
        if name.endswith(('_bias', '_gamma', '_beta')):
            param.wd_mult = 0.0
