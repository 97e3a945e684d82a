"""What every training data source is: the DataSource interface, and the random state fixed by
(seed, epoch) that makes an epoch's order and augmentation repeat exactly on resume."""
import numpy as np


class DataError(ValueError):
    """The data do not fit the options (a usage error: the scripts exit 2 with its message)."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder the options name does not exist."""


def epoch_rng(seed, epoch, salt=0):
    """A RandomState fixed by (seed, epoch): the same epoch draws the same numbers on resume."""
    return np.random.RandomState([seed & 0xFFFFFFFF, epoch, salt])


class DataSource:
    """Yields ``(data, label)`` NDArray batches from ``train_batches(epoch)`` and
    ``val_batches()``. Training order depends only on ``(seed, epoch)``, never on what ran
    before. With several workers (``num_parts``) each worker reads a disjoint part of equal
    size, so every worker runs the same number of steps (each step's Horovod allreduce waits
    for every rank: a worker that ran out of data early would leave the others waiting)."""
    num_classes: int
    data_shape: tuple          # (C, H, W) of one sample
    num_train: int             # training samples this worker sees per epoch

    def train_batches(self, epoch):
        raise NotImplementedError

    def val_batches(self):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError
