"""Mask R-CNN's training losses on one device's shard (Detectron's, in gluoncv's formulation).

RPN: sigmoid cross-entropy on sampled anchors + smooth-L1 (beta 1/9) on positive anchors.
R-CNN: softmax cross-entropy on sampled RoIs + smooth-L1 (beta 1) on the positive RoIs' class
boxes. Mask: per-pixel sigmoid cross-entropy on the positive RoIs' class masks. Each term is
averaged over the samples that define it across the shard's images (Detectron's per-GPU
normalization); the trainer then averages the devices' gradients.
"""
import mxnet as mx
from mxnet import gluon


class MaskRCNNLoss:
    def __init__(self, rpn_smoothl1_rho=1.0 / 9, rcnn_smoothl1_rho=1.0):
        self.rpn_cls = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
        self.rpn_box = gluon.loss.HuberLoss(rho=rpn_smoothl1_rho)    # smooth-L1
        self.rcnn_cls = gluon.loss.SoftmaxCrossEntropyLoss()
        self.rcnn_box = gluon.loss.HuberLoss(rho=rcnn_smoothl1_rho)
        self.mask = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)

    def __call__(self, net, data, label, gt_mask, rpn_cls_targets, rpn_box_targets,
                 rpn_box_masks):
        """Loss terms (scalars) of one shard; call inside autograd.record()."""
        gt_box, gt_label = label[:, :, :4], label[:, :, 4:5]
        (cls_pred, box_pred, mask_pred, rois, samples, matches, rpn_score, rpn_box, anchors,
         cls_targets, box_targets, box_masks, indices) = net(data, gt_box, gt_label)

        rpn_score = rpn_score.squeeze(axis=-1)
        valid_anchors = rpn_cls_targets >= 0
        num_anchors = mx.nd.maximum(valid_anchors.sum(), 1)
        # gluon losses give each image's mean over its elements; x (elements per image) / count
        # and a sum over images turn that into the shard's sum / count.
        per_image = lambda x: x.size / x.shape[0]
        rpn_cls = (self.rpn_cls(rpn_score, rpn_cls_targets, valid_anchors)
                   * per_image(rpn_cls_targets) / num_anchors).sum()
        rpn_box = (self.rpn_box(rpn_box, rpn_box_targets, rpn_box_masks)
                   * per_image(rpn_box) / num_anchors).sum()

        num_rois = mx.nd.maximum((cls_targets >= 0).sum(), 1)
        rcnn_cls = (self.rcnn_cls(cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0)
                    * per_image(cls_targets) / num_rois).sum()
        rcnn_box = (self.rcnn_box(box_pred, box_targets, box_masks)
                    * per_image(box_pred) / num_rois).sum()

        # Mask targets for the positive RoIs the network kept (``indices`` per image).
        batch = indices.shape[0]
        pick = lambda x: mx.nd.concat(*[mx.nd.take(x[i], indices[i]) for i in range(batch)],
                                      dim=0)
        pos_rois = pick(rois).reshape((batch, -1, 4))
        pos_cls = pick(cls_targets).reshape((batch, -1))
        pos_matches = pick(matches).reshape((batch, -1))
        mask_targets, mask_weights = net.mask_target(pos_rois, gt_mask, pos_matches, pos_cls)
        mask = (self.mask(mask_pred, mask_targets, mask_weights) * per_image(mask_targets)
                / mx.nd.maximum(mask_weights.sum(), 1)).sum()

        total = rpn_cls + rpn_box + rcnn_cls + rcnn_box + mask
        return {'total': total, 'rpn_cls': rpn_cls, 'rpn_box': rpn_box, 'rcnn_cls': rcnn_cls,
                'rcnn_box': rcnn_box, 'mask': mask}
