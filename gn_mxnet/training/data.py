"""Training data from files: ImageNet-style `.rec` files and image folders, and the factory that
picks a run's source (these two, or the in-memory grey image sets of grey_images.py).

Every source follows gn_mxnet.training.source.DataSource: batches from ``train_batches(epoch)``
depend only on ``(seed, epoch)``, and workers get disjoint parts of equal size.

Data that contradict the options (labels beyond ``num_classes``, too few samples for the batch,
a `.rec` without the index that distributed reading needs) raise :class:`DataError`, which the
scripts report as a usage error.
"""
import os

import mxnet as mx

from . import record_index
from .grey_images import MNIST_MEAN, MNIST_STD, FashionMNISTSource, MNIST5kSource
from .source import DataError, DataSource, MissingDataError, epoch_rng

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


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
        for path, what in ((train_rec, 'the training .rec file'),
                           (val_rec, 'the validation .rec file')):
            _require_file(path, what)
            record_index.check_recordio(path, what)
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
    if cfg.data_dir and cfg.inferred_dataset() == 'imagenet':
        # Decoding processes trade the bit-exact augmentation order for speed; one thread
        # decodes in this process and stays deterministic.
        processes = cfg.data_threads if cfg.data_threads > 1 else 0
        source = ImageFolderSource(cfg.data_dir, batch, cfg.data_shape, seed=cfg.seed,
                                   decode_processes=processes, **parts)
    else:
        subsets = dict(train_subset=cfg.train_subset, val_subset=cfg.val_subset)
        if cfg.inferred_dataset() == 'fashion-mnist':
            source = FashionMNISTSource(batch, seed=cfg.seed, folder=cfg.data_dir, **subsets,
                                        **parts)
        else:
            source = MNIST5kSource(batch, seed=cfg.seed, **subsets, **parts)
    if source.num_classes > cfg.num_classes:
        raise DataError(f"{source.describe()}: more classes than --num-classes "
                        f"{cfg.num_classes}")
    return source
