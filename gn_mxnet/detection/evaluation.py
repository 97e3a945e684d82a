"""COCO evaluation of a Mask R-CNN with pycocotools' COCOeval (bbox and segm)."""
import contextlib
import io

import numpy as np
from gluoncv.data.transforms import mask as tmask
from gluoncv.data.transforms.presets.rcnn import MaskRCNNDefaultValTransform
from gluoncv.nn.bbox import BBoxClipToImage

from .coco_data import image_ids

# COCOeval.stats order (see pycocotools.cocoeval.COCOeval.summarize).
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
MIN_SCORE = 0.001  # Detectron's TEST.SCORE_THRESH for evaluation


def predict(net, dataset, contexts, short, max_size, limit=None, progress=None):
    """COCO result dicts (bbox + RLE segmentation) for the first ``limit`` images."""
    from pycocotools import mask as mask_util
    transform = MaskRCNNDefaultValTransform(short, max_size, mean=dataset.MEAN, std=dataset.STD)
    clipper = BBoxClipToImage()
    ids = image_ids(dataset)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    to_json = dataset.contiguous_id_to_json
    results = []
    indices = range(count) if progress is None else progress(range(count))
    for i in indices:
        img, label, segm = dataset[i]
        data, info = transform(img, label, segm)
        # One image per device call; devices take turns (inference is per image in gluoncv).
        ctx = contexts[i % len(contexts)]
        x = data.expand_dims(0).as_in_context(ctx)
        cls_ids, scores, boxes, masks = net(x)
        boxes = clipper(boxes, x)
        cls_ids, scores = cls_ids[0].asnumpy().ravel(), scores[0].asnumpy().ravel()
        boxes, masks = boxes[0].asnumpy(), masks[0].asnumpy()
        height, width, scale = info.asnumpy()
        keep = np.flatnonzero((cls_ids >= 0) & (scores >= MIN_SCORE))
        if keep.size == 0:
            continue
        boxes = boxes[keep] / scale
        size = (int(round(width / scale)), int(round(height / scale)))
        full = tmask.fill(masks[keep], boxes, size)
        for k, box, mask in zip(keep, boxes, full):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle['counts'] = rle['counts'].decode('ascii')
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({'image_id': ids[i], 'category_id': to_json[int(cls_ids[k])],
                            'score': float(scores[k]), 'bbox': [x0, y0, x1 - x0, y1 - y0],
                            'segmentation': rle})
    return results, ids[:count]


def coco_eval(coco_gt, results, evaluated_ids, kind):
    """COCOeval stats for ``kind`` ('bbox' or 'segm') over ``evaluated_ids``; returns (dict, text)."""
    from pycocotools.cocoeval import COCOeval
    if not results:  # loadRes refuses an empty list; no detections means AP 0
        return {name: 0.0 for name in STAT_NAMES}, '%s: no detections, AP = 0\n' % kind
    if kind == 'bbox':
        # loadRes derives areas from segmentations when present; boxes are judged by boxes.
        results = [{k: v for k, v in r.items() if k != 'segmentation'} for r in results]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, kind)
        evaluator.params.imgIds = list(evaluated_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluator.stats)}
    return stats, text.getvalue()


def evaluate(net, dataset, contexts, short, max_size, limit=None, progress=None):
    """{'bbox': stats, 'segm': stats, 'num_images', 'num_detections', 'report': text}."""
    results, evaluated = predict(net, dataset, contexts, short, max_size, limit, progress)
    coco_gt = dataset.coco
    bbox, bbox_text = coco_eval(coco_gt, results, evaluated, 'bbox')
    segm, segm_text = coco_eval(coco_gt, results, evaluated, 'segm')
    return {'bbox': bbox, 'segm': segm, 'num_images': len(evaluated),
            'num_detections': len(results),
            'report': 'bbox\n' + bbox_text + 'segm\n' + segm_text}
