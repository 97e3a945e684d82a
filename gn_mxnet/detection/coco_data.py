"""COCO-format instance data: real COCO 2017, or an embedded set made offline.

The embedded sets put real 28x28 grey images on larger dark canvases, 1-3 per image at random
scales and non-overlapping places: Fashion-MNIST garments (``source='fashion'``, the default:
filled shapes, 10 classes; train canvases from its 60,000 training images, val canvases from its
10,000 test images) or MNIST-5k digits (``'mnist'``: the classifier's fixed 4000/1000 split;
1-2 px strokes, whose masks rarely reach IoU 0.5). Train and val never share a source image.
Each pasted image is one instance of its class; its mask is its pixels (>= MASK_THRESHOLD after
resizing), written as COCO polygons (one rectangle per run of pixels, so the polygons' union is
exactly the pixel mask), its box is the mask's tight box. A set is written once as ordinary COCO
files (``annotations/instances_<split>.json`` + ``<split>/*.png``) into a cache folder named
after its settings, and read back through gluoncv's ``COCOInstance`` exactly like real COCO.

Pixels are normalized as the classifier that pretrains the backbone normalized them (the grey
set's mean/std in all three channels; ImageNet's for real COCO), so a pretrained grey stem
spread over the three identical channels (``gn_mxnet.convert --input-channels 3``) sees the
inputs it was trained on.
"""
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
from gluoncv.data import COCOInstance
from PIL import Image

from ..training.data import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ..training.grey_images import (FASHION_CLASSES, FASHION_MEAN, FASHION_STD, MNIST_MEAN,
                                    MNIST_STD, load_fashion_mnist, mnist5k_split)
from ..utils.files import atomic_write_text

DIGIT_CLASSES = tuple(str(d) for d in range(10))
EMBEDDED_FORMAT_VERSION = 2
# A pasted image's mask: its resized pixels at least this bright; the canvas noise stays below.
MASK_THRESHOLD = 16
COCO_TRAIN_SPLIT, COCO_VAL_SPLIT = 'instances_train2017', 'instances_val2017'


def default_cache_dir():
    return os.path.join(os.path.expanduser('~'), '.cache', 'gn_mxnet', 'embedded_coco')


@dataclass(frozen=True)
class EmbeddedSpec:
    """What the embedded set holds; the cache folder's name is derived from all of it."""
    source: str = 'fashion'     # one of EMBEDDED_SOURCES
    num_train: int = 160
    num_val: int = 40
    canvas: int = 128
    min_digits: int = 1         # instances per canvas (digits or garments)
    max_digits: int = 3
    min_scale: float = 1.25     # instance side = 28 * scale pixels
    max_scale: float = 2.0
    seed: int = 0

    def folder_name(self):
        return ('v%d_%s_train%d_val%d_px%d_d%d-%d_s%g-%g_seed%d'
                % (EMBEDDED_FORMAT_VERSION, self.source, self.num_train, self.num_val,
                   self.canvas, self.min_digits, self.max_digits, self.min_scale,
                   self.max_scale, self.seed))


class PixelStats:
    """The per-channel mean/std (of 0-1 pixels) the detector's transforms normalize with."""
    MEAN, STD = IMAGENET_MEAN_RGB, IMAGENET_STD_RGB


class DigitCOCOInstance(PixelStats, COCOInstance):
    """gluoncv's COCOInstance with the ten digit categories instead of COCO's 80."""
    CLASSES = list(DIGIT_CLASSES)
    MEAN, STD = (MNIST_MEAN,) * 3, (MNIST_STD,) * 3


class GarmentCOCOInstance(PixelStats, COCOInstance):
    """gluoncv's COCOInstance with Fashion-MNIST's ten garment categories."""
    CLASSES = list(FASHION_CLASSES)
    MEAN, STD = (FASHION_MEAN,) * 3, (FASHION_STD,) * 3


class RealCOCOInstance(PixelStats, COCOInstance):
    """COCO itself: ImageNet-pretrained backbones expect ImageNet's normalization."""


def _mnist_splits():
    (x_train, y_train), (x_val, y_val) = mnist5k_split()
    return ('mnist5k-train', x_train, y_train), ('mnist5k-val', x_val, y_val)


def _fashion_splits():
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    return ('fashion-train', x_train, y_train), ('fashion-test', x_test, y_test)


# source -> (class names, supercategory, dataset class, canvas noise (exclusive max),
# the (train, val) source images as (name, images, labels)).
EMBEDDED_SOURCES = {
    'fashion': (FASHION_CLASSES, 'garment', GarmentCOCOInstance, 8, _fashion_splits),
    'mnist': (DIGIT_CLASSES, 'digit', DigitCOCOInstance, 8, _mnist_splits),
}


def mask_to_polygons(mask):
    """COCO polygons whose union is exactly the binary ``mask``: one rectangle per pixel run.

    Runs with the same columns on consecutive rows are merged into one taller rectangle.
    Coordinates are pixel edges: pixel (y, x) spans [x, x+1] x [y, y+1].
    """
    open_runs, polygons = {}, []

    def close(run, top, bottom):
        x0, x1 = run
        polygons.append([float(v) for v in (x0, top, x1, top, x1, bottom, x0, bottom)])

    for y in range(mask.shape[0] + 1):
        row = mask[y] if y < mask.shape[0] else np.zeros(mask.shape[1], bool)
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        runs = set(zip(edges[::2].tolist(), edges[1::2].tolist()))
        for run in list(open_runs):
            if run not in runs:
                close(run, open_runs.pop(run), y)
        for run in runs:
            open_runs.setdefault(run, y)
    return polygons


def _place_digits(rng, digits, canvas, spec):
    """Non-overlapping random boxes for the digits; returns [(digit_index, x, y, side)]."""
    placed = []
    for index in digits:
        for _ in range(50):  # a few tries; a digit that does not fit is left out
            side = int(round(28 * rng.uniform(spec.min_scale, spec.max_scale)))
            x, y = rng.randint(0, canvas - side + 1, size=2)
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                   for _, px, py, ps in placed):
                placed.append((index, int(x), int(y), side))
                break
    return placed


def _render_split(folder, split, source, count, spec, rng, first_image_id):
    """Draw ``count`` canvases into folder/split and return the COCO 'images' and 'annotations'.

    Each annotation names its source image (``source_split``, ``source_index``), so that the
    train/val separation can be checked."""
    source_split, images, labels = source
    noise = EMBEDDED_SOURCES[spec.source][3]
    os.makedirs(os.path.join(folder, split))
    coco_images, annotations = [], []
    order = rng.permutation(len(images))
    cursor = 0
    for n in range(count):
        image_id = first_image_id + n
        canvas = rng.randint(0, noise, size=(spec.canvas, spec.canvas)).astype(np.uint8)
        wanted = rng.randint(spec.min_digits, spec.max_digits + 1)
        chosen = [order[(cursor + k) % len(order)] for k in range(wanted)]
        cursor += wanted
        for index, x, y, side in _place_digits(rng, chosen, spec.canvas, spec):
            digit = np.asarray(Image.fromarray(images[index]).resize((side, side),
                                                                     Image.BILINEAR))
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, digit, out=region)
            mask = np.zeros((spec.canvas, spec.canvas), bool)
            mask[y:y + side, x:x + side] = digit >= MASK_THRESHOLD
            if mask.sum() < 4:
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            x0, y0, x1, y1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id,
                'category_id': int(labels[index]) + 1, 'iscrowd': 0,
                'area': float(mask.sum()), 'segmentation': mask_to_polygons(mask),
                'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                'source_split': source_split, 'source_index': int(index)})
        name = '%06d.png' % image_id
        Image.fromarray(np.stack([canvas] * 3, axis=-1)).save(os.path.join(folder, split, name))
        coco_images.append({'id': image_id, 'file_name': name, 'width': spec.canvas,
                            'height': spec.canvas,
                            'coco_url': 'embedded://%s/%s' % (split, name)})
    return coco_images, annotations


def write_embedded_coco(root, spec):
    """Generate the embedded set into ``root`` (complete, or not there at all)."""
    names, supercategory, _, _, splits = EMBEDDED_SOURCES[spec.source]
    train_source, val_source = splits()
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.staging-', dir=parent)
    try:
        categories = [{'id': d + 1, 'name': name, 'supercategory': supercategory}
                      for d, name in enumerate(names)]
        os.makedirs(os.path.join(staging, 'annotations'))
        rng = np.random.RandomState(spec.seed)
        for split, source, count, first_id in (
                ('train', train_source, spec.num_train, 1),
                ('val', val_source, spec.num_val, 1 + spec.num_train)):
            coco_images, annotations = _render_split(staging, split, source, count, spec, rng,
                                                     first_id)
            doc = {'info': {'description': 'embedded %s COCO set' % spec.source,
                            'spec': asdict(spec)},
                   'images': coco_images, 'annotations': annotations,
                   'categories': categories}
            atomic_write_text(os.path.join(staging, 'annotations', 'instances_%s.json' % split),
                              json.dumps(doc))
        try:
            os.rename(staging, root)
        except OSError:
            if not os.path.isdir(root):  # not a concurrent writer that finished first
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return root


def embedded_coco(cache_dir=None, spec=EmbeddedSpec()):
    """(train, val) datasets of the embedded set, generating it if needed."""
    if spec.source not in EMBEDDED_SOURCES:
        raise ValueError('unknown embedded set %r; choose one of %s'
                         % (spec.source, ', '.join(EMBEDDED_SOURCES)))
    root = os.path.join(cache_dir or default_cache_dir(), spec.folder_name())
    if not os.path.isfile(os.path.join(root, 'annotations', 'instances_val.json')):
        write_embedded_coco(root, spec)
    dataset = EMBEDDED_SOURCES[spec.source][2]
    return (dataset(root, splits='instances_train'),
            dataset(root, splits='instances_val', skip_empty=False))


def real_coco(root, train_split=COCO_TRAIN_SPLIT, val_split=COCO_VAL_SPLIT):
    """(train, val) COCOInstance datasets of COCO in ``root`` (annotations/ + train2017/ ...)."""
    if not os.path.isdir(root):
        raise FileNotFoundError('--coco-root: no such folder: %s' % root)
    for split in (train_split, val_split):
        path = os.path.join(root, 'annotations', split + '.json')
        if not os.path.isfile(path):
            raise FileNotFoundError('--coco-root: missing annotation file %s (expected COCO '
                                    "2017's layout: annotations/, train2017/, val2017/)" % path)
    return (RealCOCOInstance(root, splits=train_split),
            RealCOCOInstance(root, splits=val_split, skip_empty=False))


def image_ids(dataset):
    """COCO image ids in dataset order (COCOInstance keeps sorted ids when nothing is skipped)."""
    ids = [i for coco in dataset._coco for i in sorted(coco.getImgIds())]
    if len(ids) != len(dataset):
        raise ValueError('evaluation needs a dataset that keeps every image '
                         '(COCOInstance(..., skip_empty=False))')
    return ids
