"""The GN paper's central claims (Wu & He, 2018), reproduced small: Tables 1-3 on MNIST-5k.

One *cell* is a network configuration (norm, groups or channels per group, per-device batch);
one *run* is a cell trained with one seed by :func:`gn_mxnet.training.train`. Every finished
run becomes one row of ``<out>/runs.csv`` (the file is rewritten atomically after each run),
so a study that was stopped resumes by skipping the runs already there. From that CSV the
study writes markdown tables (ours beside the paper's ImageNet figures) and PNG plots.

Protocol (the paper's, scaled down): ResNet-8 (small-image, 16/32/64 wide) on the fixed
MNIST-5k train split (all 4000 images by default, average-pooled to 14x14 so that the study fits
on 2 CPU cores), validated on the whole 1000-image val split; every batch size trains the same
number of epochs with lr = base_lr * B / 256 (linear scaling) and the same cosine schedule, as
the paper does; BN is evaluated in inference mode with its moving statistics. Layers are
16/32/64 channels wide, so G = 64 and 32 are impossible; G in {16, 8, 4, 2, 1} is the largest
set the widths allow, and channels-per-group variants fix D = C / G in every layer instead.
"""
import csv
import io
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import checkpoint as ckpt
from . import data as gn_data
from .norms import Norm, _BATCHNORM_ONLY

# The paper's numbers: ResNet-50 on ImageNet, val top-1 error (%), for comparison only.
PAPER_TABLE1 = {'BN': 23.6, 'LN': 25.3, 'IN': 28.4, 'GN': 24.1}
PAPER_TABLE2 = {'BN': {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                'GN': {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
PAPER_TABLE3_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}

CSV_NAME = 'runs.csv'
CSV_COLUMNS = ('cell', 'norm', 'num_groups', 'group_size', 'batch_size', 'seed', 'network',
               'epochs', 'train_subset', 'image_size', 'base_lr', 'lr', 'val_error',
               'best_val_error', 'train_error', 'train_loss', 'steps', 'seconds')
RUN_IDENTITY = ('cell', 'seed', 'network', 'epochs', 'train_subset', 'base_lr', 'image_size')


@dataclass(frozen=True)
class Cell:
    """norm 'bn' or 'gn'; a GN cell has either num_groups (G) or group_size (channels/group)."""
    norm: str
    batch_size: int
    num_groups: Optional[int] = None
    group_size: Optional[int] = None

    @property
    def key(self):
        if self.norm == 'bn':
            return f'bn_b{self.batch_size}'
        spec = f'g{self.num_groups}' if self.num_groups else f'c{self.group_size}'
        return f'gn_{spec}_b{self.batch_size}'


@dataclass
class StudySettings:
    out_dir: str = 'results'
    tables: tuple = (1, 2, 3)
    seeds: tuple = (0, 1, 2)
    epochs: int = 3
    train_subset: Optional[int] = None   # all 4000 train images
    base_lr: float = 0.8            # lr 0.1 at batch 32, the trainer's MNIST-5k preset
    network: str = 'resnet8_small'
    gn_groups: int = 8              # the GN of Tables 1 and 2
    batch_sizes: tuple = (32, 16, 8, 4, 2)
    table_batch: int = 32           # the batch of Tables 1 and 3
    groups: tuple = (16, 8, 4, 2, 1)
    group_sizes: tuple = (16, 8, 4, 2, 1)
    val_batch: int = 250            # eval batch only: BN uses moving stats, GN is per sample
    image_size: int = 14            # MNIST average-pooled 28 -> 14: ~4x cheaper steps
    val_subset: Optional[int] = None  # tests only: the study validates on all 1000 images
    jobs: int = 1
    resume: bool = True
    extra: dict = field(default_factory=dict)   # more TrainConfig fields for every run


def table_cells(s):
    """{table number: {row label: Cell}} for the chosen tables."""
    b, g = s.table_batch, s.gn_groups
    cells = {
        1: {'BN': Cell('bn', b), 'LN': Cell('gn', b, num_groups=1),
            'IN': Cell('gn', b, group_size=1), 'GN': Cell('gn', b, num_groups=g)},
        2: {**{('BN', n): Cell('bn', n) for n in s.batch_sizes},
            **{('GN', n): Cell('gn', n, num_groups=g) for n in s.batch_sizes}},
        3: {**{('G', n): Cell('gn', b, num_groups=n) for n in s.groups},
            **{('D', n): Cell('gn', b, group_size=n) for n in s.group_sizes}},
    }
    return {t: cells[t] for t in s.tables}


def planned_runs(s):
    """Distinct (Cell, seed) pairs, seed-major and in table order (2, 1, 3), so a study cut
    short still has every table with fewer seeds. LN is G=1 and IN is 1 channel per group."""
    cells = []
    for table in sorted(table_cells(s), key=lambda t: (2, 1, 3).index(t)):
        for cell in table_cells(s)[table].values():
            if cell not in cells:
                cells.append(cell)
    return [(cell, seed) for seed in s.seeds for cell in cells]


class ChannelsPerGroupNorm(Norm):
    """GroupNorm with a fixed number of channels per group (G = C / group_size per layer)."""

    def __init__(self, group_size, backend='native', epsilon=1e-5):
        super().__init__('gn', num_groups=1, backend=backend, epsilon=epsilon)
        self.group_size = group_size

    def __repr__(self):
        return f'ChannelsPerGroupNorm(group_size={self.group_size}, backend={self.backend!r})'

    def groups_for(self, channels):
        if not channels or channels % self.group_size:
            raise ValueError(f"{self.group_size} channels per group needs a channel count "
                             f"divisible by it, got {channels}")
        return channels // self.group_size

    def check_channels(self, channels):
        self.groups_for(channels)

    def __call__(self, in_channels=0, **kwargs):
        for option in _BATCHNORM_ONLY:
            kwargs.pop(option, None)
        from .gluon import GroupNorm
        return GroupNorm(num_groups=self.groups_for(in_channels), in_channels=in_channels,
                         epsilon=self.epsilon, backend=self.backend, **kwargs)

    def symbol(self, data, name, channels, zero_gamma=False):
        raise NotImplementedError("channels-per-group GN is built for Gluon nets only")


class StudyMNIST5k(gn_data.MNIST5kSource):
    """The trainer's MNIST-5k source (same split, subsets and shift augmentation), optionally
    average-pooled to ``image_size`` pixels a side (28 -> 14 makes every step ~4x cheaper),
    and evaluated in batches of ``val_batch`` whatever the training batch (inference-mode BN
    and GN do not depend on the batch)."""

    def __init__(self, batch_size, val_batch, image_size=28, **kwargs):
        super().__init__(batch_size, **kwargs)
        self.val_batch = val_batch
        if image_size != 28:
            if 28 % image_size:
                raise ValueError(f"image size must divide 28, got {image_size}")
            k = 28 // image_size
            self.x_train, self.x_val = (
                x.reshape(len(x), 1, image_size, k, image_size, k).mean(axis=(3, 5))
                for x in (self.x_train, self.x_val))
            self.shift_pixels = max(1, self.shift_pixels // k)
            self.data_shape = (1, image_size, image_size)

    def _shift(self, batch, rng):
        """Translate each image by up to shift_pixels in x and y (background fill)."""
        pad, size = self.shift_pixels, batch.shape[-1]
        background = -gn_data.MNIST_MEAN / gn_data.MNIST_STD
        padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                        constant_values=background)
        offsets = rng.randint(0, 2 * pad + 1, size=(len(batch), 2))
        out = np.empty_like(batch)
        for i, (dy, dx) in enumerate(offsets):
            out[i] = padded[i, :, dy:dy + size, dx:dx + size]
        return out

    def val_batches(self):
        import mxnet as mx
        for start in range(0, len(self.x_val), self.val_batch):
            end = start + self.val_batch
            yield (mx.nd.array(self.x_val[start:end]),
                   mx.nd.array(self.y_val[start:end], dtype='float32'))


def run_one(cell, seed, s, work_dir):
    """Train one (cell, seed); returns its CSV row. A run stopped midway resumes from its
    checkpoint in ``work_dir``; the directory is removed when the run is done."""
    return train_cell(cell, seed, s, work_dir)[0]


def train_cell(cell, seed, s, work_dir):
    """run_one's work: returns (CSV row, the trained net, its data source)."""
    from . import models
    from .train_config import TrainConfig
    from .training import train
    start = time.time()
    cfg = TrainConfig(network=s.network, norm=cell.norm, num_groups=cell.num_groups or 1,
                      epochs=s.epochs, batch_size=cell.batch_size, base_lr=s.base_lr,
                      train_subset=s.train_subset, seed=seed, out_dir=work_dir,
                      progress=False, **s.extra)
    cfg.resume = os.path.exists(os.path.join(work_dir, ckpt.CHECKPOINT_NAME))
    norm = ChannelsPerGroupNorm(cell.group_size) if cell.group_size else cell.norm
    net = models.get_model(s.network, num_classes=10, norm=norm,
                           num_groups=cell.num_groups or 1, last_gamma=cfg.last_gamma)
    data = StudyMNIST5k(cell.batch_size, s.val_batch, s.image_size, seed=seed,
                        train_subset=s.train_subset, val_subset=s.val_subset)
    summary = train(cfg, net=net, data=data)
    if not summary['finished']:
        raise RuntimeError(f"run {cell.key} seed {seed} did not finish")
    final = summary['final']
    row = dict(cell=cell.key, norm=cell.norm, num_groups=cell.num_groups or '',
               group_size=cell.group_size or '', batch_size=cell.batch_size, seed=seed,
               network=s.network, epochs=s.epochs, train_subset=s.train_subset or '',
               image_size=s.image_size,
               base_lr=s.base_lr, lr=s.base_lr * cell.batch_size / 256.0,
               val_error=100 * (1 - final['val_top1']),
               best_val_error=100 * (1 - summary['best_val_top1']),
               train_error=100 * (1 - final['train_top1']), train_loss=final['train_loss'],
               steps=s.epochs * (data.num_train // cell.batch_size),
               seconds=round(time.time() - start, 2))
    shutil.rmtree(work_dir, ignore_errors=True)
    return row, net, data


def _run_job(args):
    cell, seed, s, work_dir = args
    return run_one(cell, seed, s, work_dir)


# -- the runs' CSV ---------------------------------------------------------------------------
def read_runs(out_dir):
    path = os.path.join(out_dir, CSV_NAME)
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_runs(out_dir, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    ckpt.atomic_write_text(os.path.join(out_dir, CSV_NAME), buffer.getvalue())


def run_identity(row):
    return tuple(str(row[k]) for k in RUN_IDENTITY)


def pending_runs(s, rows):
    done = {run_identity(r) for r in rows}
    wanted = []
    for cell, seed in planned_runs(s):
        ident = run_identity(dict(cell=cell.key, seed=seed, network=s.network, epochs=s.epochs,
                                  train_subset=s.train_subset or '', base_lr=s.base_lr,
                                  image_size=s.image_size))
        if ident not in done:
            wanted.append((cell, seed))
    return wanted


def run_study(s, log=print):
    """Train every run not yet in ``<out_dir>/runs.csv`` and write tables and plots.
    Returns the rows of this study's settings."""
    os.makedirs(s.out_dir, exist_ok=True)
    rows = read_runs(s.out_dir) if s.resume else []
    todo = pending_runs(s, rows)
    log(f"{len(planned_runs(s))} runs planned, {len(todo)} to train "
        f"({s.epochs} epochs on {s.train_subset or 'all'} samples, jobs={s.jobs})")
    jobs = [(cell, seed, s, os.path.join(s.out_dir, '_work', f'{cell.key}_s{seed}'))
            for cell, seed in todo]
    start = time.time()

    def record(row, done):
        rows.append(row)
        write_runs(s.out_dir, rows)
        log(f"[{done}/{len(jobs)} {time.time() - start:6.0f}s] {row['cell']} seed "
            f"{row['seed']}: val error {row['val_error']:.2f}% ({row['seconds']:.0f}s)")

    if s.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        os.environ.setdefault('OMP_NUM_THREADS', '1')
        with multiprocessing.get_context('spawn').Pool(s.jobs, maxtasksperchild=4) as pool:
            for done, row in enumerate(pool.imap_unordered(_run_job, jobs), start=1):
                record(row, done)
    else:
        for done, job in enumerate(jobs, start=1):
            record(_run_job(job), done)
    shutil.rmtree(os.path.join(s.out_dir, '_work'), ignore_errors=True)
    mine = [r for r in read_runs(s.out_dir) if r['network'] == s.network
            and r['epochs'] == str(s.epochs) and r['base_lr'] == str(s.base_lr)
            and r['train_subset'] == str(s.train_subset or '')
            and r['image_size'] == str(s.image_size) and int(r['seed']) in s.seeds]
    from .study_report import write_report
    write_report(s, mine)
    return mine


def aggregate(rows):
    """{cell key: (mean, std, n)} of the final val error (%); std over seeds (ddof=1)."""
    errors = {}
    for row in rows:
        errors.setdefault(row['cell'], []).append(float(row['val_error']))
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                  len(v)) for key, v in errors.items()}
