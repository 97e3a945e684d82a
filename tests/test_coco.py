"""Mask R-CNN with GroupNorm (train/train_coco.py, gn_mxnet.detection)."""
import csv
import dataclasses
import json
import os
import pickle
import warnings
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.detection import coco_data, engine, evaluation
from gn_mxnet.detection.engine import RUN_FILES, DetectionConfig, run
from gn_mxnet.training import checkpoint as ckpt
from gn_mxnet.detection.model import build_mask_rcnn
from gn_mxnet.convert import load_weights
from gn_mxnet.gluon import GroupNorm
from gn_mxnet.models.resnet import resnet_v1b
from gn_mxnet.training.grey_images import FASHION_CLASSES
from gn_mxnet.training.rundir import manifest_files
from test_user_files import assert_kept, plant

warnings.filterwarnings('ignore', message='.*already initialized.*')

SMALL_SPEC = coco_data.EmbeddedSpec(num_train=8, num_val=4)


@pytest.fixture(scope='module')
def embedded(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp('embedded_coco'))
    train, val = coco_data.embedded_coco(cache, SMALL_SPEC)
    return cache, train, val


def _gn_layers(block):
    found = []

    def visit(b):
        if isinstance(b, GroupNorm):
            found.append(b)
        for child in b._children.values():
            visit(child)
    visit(block)
    return found


# --- data -----------------------------------------------------------------------------------
def test_polygons_rasterize_to_exactly_the_pixel_mask():
    from pycocotools import mask as mask_util
    rng = np.random.RandomState(3)
    mask = np.zeros((40, 50), bool)
    mask[5:30, 7:40] = rng.rand(25, 33) > 0.4   # ragged shape with holes
    polygons = coco_data.mask_to_polygons(mask)
    rles = mask_util.frPyObjects(polygons, 40, 50)
    decoded = mask_util.decode(mask_util.merge(rles)).astype(bool)
    np.testing.assert_array_equal(decoded, mask)


def test_embedded_set_is_real_garments_written_once(embedded):
    cache, train, val = embedded
    assert train.classes == list(FASHION_CLASSES) and len(train) == 8 and len(val) == 4
    root = os.path.join(cache, SMALL_SPEC.folder_name())
    ann = os.path.join(root, 'annotations', 'instances_train.json')
    with open(ann) as f:
        doc = json.load(f)
    assert [c['name'] for c in doc['categories']] == list(FASHION_CLASSES)
    assert all(a['area'] > 20 for a in doc['annotations'])
    coco = train.coco
    for a in doc['annotations']:
        mask = coco.annToMask(a)
        assert mask.sum() == a['area']
        x, y, w, h = a['bbox']
        assert mask[:, :int(x)].sum() == 0 and mask[:int(y)].sum() == 0
        assert mask[int(y + h):].sum() == 0 and mask[:, int(x + w):].sum() == 0
    img, label, segm = train[0]
    assert img.shape == (SMALL_SPEC.canvas, SMALL_SPEC.canvas, 3)
    assert label.shape[1] == 5 and len(segm) == len(label)
    stamp = os.path.getmtime(ann)
    coco_data.embedded_coco(cache, SMALL_SPEC)  # a second call reads the cache
    assert os.path.getmtime(ann) == stamp


def test_missing_coco_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='--coco-root'):
        coco_data.real_coco(str(tmp_path / 'nowhere'))
    (tmp_path / 'annotations').mkdir()
    with pytest.raises(FileNotFoundError, match='instances_train2017.json'):
        coco_data.real_coco(str(tmp_path))


def test_cocoeval_gives_ap_1_for_the_ground_truth_and_0_for_nothing(embedded):
    from pycocotools import mask as mask_util
    _, _, val = embedded
    coco = val.coco
    results = []
    for a in coco.loadAnns(coco.getAnnIds()):
        rle = mask_util.encode(np.asfortranarray(coco.annToMask(a)))
        rle['counts'] = rle['counts'].decode('ascii')
        results.append({'image_id': a['image_id'], 'category_id': a['category_id'],
                        'score': 0.9, 'bbox': a['bbox'], 'segmentation': rle})
    ids = coco_data.image_ids(val)
    for kind in ('bbox', 'segm'):
        stats, _ = evaluation.coco_eval(coco, results, ids, kind)
        assert stats['AP'] == pytest.approx(1.0)
        assert evaluation.coco_eval(coco, [], ids, kind)[0]['AP'] == 0.0


# --- model ----------------------------------------------------------------------------------
def test_gn_recipe_puts_group_norm_in_backbone_fpn_box_and_mask_heads(native_library):
    net = build_mask_rcnn(list('0123456789'), small=True, image_short=128, image_max_size=128)
    params = net.collect_params()
    fpn_gn = [n for n in params.keys() if n.startswith('P_gn') and n.endswith('_gamma')]
    # lateral 1x1 + output 3x3 on P2..P5, and P6's conv
    assert len(fpn_gn) == 9 and all(params[n].shape == (256,) for n in fpn_gn)
    assert len([n for n in params.keys() if 'resnetv1b_' in n and 'groupnorm' in n
                and n.endswith('_gamma')]) == 53   # ResNet-50: stem + 16 blocks x 3 + 4 shortcuts
    assert len(_gn_layers(net.box_features)) == 4
    assert len(_gn_layers(net.mask)) == 4
    for name, p in params.items():
        if name.endswith(('_gamma', '_beta', '_bias')):
            assert p.wd_mult == 0.0, name
    with pytest.raises(ValueError, match='unknown --norm'):
        build_mask_rcnn(['a'], norm='sync')


def test_r101_fpn_takes_its_stage_outputs_from_the_deeper_third_stage(native_library):
    net = build_mask_rcnn(['a', 'b'], depth=101, small=True)
    backbone_gn = [n for n in net.collect_params().keys()
                   if n.startswith('resnetv1b_') and 'groupnorm' in n and n.endswith('_gamma')]
    assert len(backbone_gn) == 1 + 33 * 3 + 4
    with pytest.raises(ValueError, match='ResNet-50 or ResNet-101'):
        build_mask_rcnn(['a'], depth=34)


def test_fpn_roi_pooling_takes_each_roi_from_its_level_only(native_library):
    """The pooled features of a RoI are ROIAlign's on its own FPN level, whatever stale memory
    the other levels' outputs land in (MXNet's CPU ROIAlign leaves -1 RoIs' rows unwritten)."""
    net = build_mask_rcnn(['a', 'b'], small=True)
    strides, rng = (4, 8, 16, 32), np.random.RandomState(0)
    features = [mx.nd.array(rng.rand(1, 8, 512 // s, 512 // s)) for s in strides]
    # sqrt(area) 16, 112, 224, 448: levels 2, 3, 4, 5 (4 + log2(size / 224), clipped).
    rois = mx.nd.array([[0, 8, 8, 23, 23], [0, 40, 40, 151, 151], [0, 0, 0, 223, 223],
                        [0, 30, 30, 477, 477]])
    expected = [mx.nd.contrib.ROIAlign(features[k], rois[k:k + 1], net._roi_size,
                                       1.0 / strides[k], sample_ratio=2).asnumpy()[0]
                for k in range(4)]
    for _ in range(5):
        stale = mx.nd.full((4, 8) + tuple(net._roi_size), float('nan'))
        stale.wait_to_read()
        del stale   # its memory goes back to MXNet's pool, for the next outputs
        pooled = net._pyramid_roi_feats(mx.nd, features, rois, net._roi_size, strides)
        for k in range(4):
            np.testing.assert_allclose(pooled[k].asnumpy(), expected[k], rtol=1e-6, atol=1e-7)


def test_bn_star_freezes_the_backbone_norm_and_uses_no_head_norm():
    net = build_mask_rcnn(['a', 'b'], norm='bn', small=True)
    assert not _gn_layers(net)
    train = set(net.collect_train_params().keys())
    bn = [n for n in net.collect_params().keys() if 'batchnorm' in n]
    assert bn and not train.intersection(bn)


def test_pretrained_backbone_file_lands_in_the_detector(tmp_path, native_library):
    from test_convert import make_detectron_blobs
    blobs = make_detectron_blobs(classes=10)
    path = str(tmp_path / 'R-50-GN.pkl')
    with open(path, 'wb') as f:
        pickle.dump({'blobs': blobs}, f, protocol=2)
    net = build_mask_rcnn(['a'], pretrained_backbone=path, small=True)
    detector = net.collect_params()
    reference = resnet_v1b(50, norm='gn', last_gamma=False)
    reference.initialize()
    load_weights(reference, path, skip=('fc.',))
    compared = 0
    for name, param in reference.collect_params().items():
        if '_dense' not in name:   # the classifier is not part of the detector
            np.testing.assert_array_equal(detector[name].data().asnumpy(),
                                          param.data().asnumpy(), err_msg=name)
            compared += 1
    assert compared == 3 * 53   # 53 convs, each with GN gamma and beta
    np.testing.assert_array_equal(detector['resnetv1b_conv0_weight'].data().asnumpy(),
                                  blobs['conv1_w'])


# --- training + evaluation ------------------------------------------------------------------
def test_a_few_iterations_evaluate_checkpoint_and_resume(embedded, tmp_path, native_library,
                                                         monkeypatch):
    cache, _, _ = embedded
    out = str(tmp_path / 'run')
    plant(out)   # a user's files beside the run: every one stays, byte for byte
    cfg = DetectionConfig(cache_dir=cache, num_train=SMALL_SPEC.num_train,
                          num_val=SMALL_SPEC.num_val, epochs=1, train_limit=4, val_limit=2,
                          out_dir=out, progress=False, lr=0.01, warmup_iters=2)
    first = run(cfg)
    assert_kept(out)
    assert first['final_epoch'] == 1
    for name in (ckpt.CHECKPOINT_NAME, 'last.params', 'coco_log.csv', 'coco_curves.png',
                 'summary.json'):
        assert os.path.isfile(os.path.join(out, name)), name
    saved = ckpt.load_checkpoint(out)
    with pytest.raises(FileExistsError, match='--resume .* --overwrite'):
        run(replace(cfg))                  # a new run never replaces it silently
    assert_kept(out)
    with pytest.raises(ValueError, match="lr: saved 0.01, now 0.02; momentum: saved 0.9, now"):
        run(replace(cfg, resume=True, lr=0.02, momentum=0.8))

    # A NaN loss in epoch 2's first step: the run stops, epoch 1's files stay.
    class NaNLoss(engine.MaskRCNNLoss):
        def __call__(self, *args):
            parts = super().__call__(*args)
            return dict(parts, total=parts['total'] * float('nan'))
    monkeypatch.setattr(engine, 'MaskRCNNLoss', NaNLoss)
    with pytest.raises(FloatingPointError, match='epoch 2 step 1'):
        run(replace(cfg, epochs=2, resume=True))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(out)['epoch'] == 1
    last = {k: v.asnumpy() for k, v in mx.nd.load(os.path.join(out, 'last.params')).items()}
    for name, value in saved['params'].items():
        np.testing.assert_array_equal(last[name], value, err_msg=name)

    cfg.epochs, cfg.resume = 2, True   # the schedule does not depend on epochs: extend the run
    second = run(cfg)
    with open(os.path.join(out, 'coco_log.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert np.isfinite(float(row['loss_total'])) and float(row['loss_mask']) > 0
    # The log holds what each run evaluated; the lr at each epoch's last step (iterations 1
    # and 3) follows the warm-up from lr/3 over 2 iterations.
    for row, figures in ((rows[0], first['untrained']), (rows[1], first['final']),
                         (rows[2], second['final'])):
        assert {k: float(row[k]) for k in figures} == pytest.approx(figures)
    assert [float(r['lr']) for r in rows] == pytest.approx([0.0, 0.01 * 2 / 3, 0.01])
    assert second['untrained'] == first['untrained']   # epoch 0 was not re-run
    assert_kept(out)
    # What --overwrite may delete is the run record's list (rundir.claim_out_dir, the
    # classifier's overwrite run in test_user_files): the detector's own files, no more.
    assert manifest_files(out) == set(RUN_FILES)


def test_detector_resume_identity_is_every_field_but_bookkeeping():
    fields = {f.name for f in dataclasses.fields(DetectionConfig)}
    assert set(engine.BOOKKEEPING) < fields
    identity = DetectionConfig(gpus='0,1,2', conv='ws').identity()
    assert set(identity) == fields - set(engine.BOOKKEEPING)
    assert identity['gpus'] == 3
    # a setting added later is left out at the value every older run had (rundir)
    assert set(DetectionConfig().identity()) == fields - set(engine.BOOKKEEPING) - {'conv'}


def test_frozen_bn_variant_trains_and_keeps_its_statistics(embedded, tmp_path):
    cache, _, _ = embedded
    cfg = DetectionConfig(cache_dir=cache, num_train=SMALL_SPEC.num_train,
                          num_val=SMALL_SPEC.num_val, norm='bn', epochs=1, train_limit=2,
                          val_limit=1, out_dir=str(tmp_path / 'bn'), progress=False)
    summary = run(cfg)
    assert summary['final_epoch'] == 1
    params = ckpt.load_checkpoint(cfg.out_dir)['params']
    means = [v for k, v in params.items() if k.endswith('running_mean')]
    assert means and all(np.all(m == 0) for m in means)   # BN*: statistics never updated

