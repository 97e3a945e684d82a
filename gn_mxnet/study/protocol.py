"""The study's protocol: the GN paper's Tables 1-3 (Wu & He, 2018) as a grid of cells and seeds,
the paper's numbers beside them, and how runs are identified and aggregated.

One *cell* is a network configuration (norm, groups or channels per group, per-device batch);
one *run* is a cell trained with one seed by :func:`gn_mxnet.training.loop.train`. Every finished
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
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# The paper's numbers: ResNet-50 on ImageNet, val top-1 error (%), for comparison only.
PAPER_TABLE1 = {'BN': 23.6, 'LN': 25.3, 'IN': 28.4, 'GN': 24.1}
PAPER_TABLE2 = {'BN': {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                'GN': {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
PAPER_TABLE3_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}

TABLES = (1, 2, 3)   # the paper's tables this study reproduces
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
    tables: tuple = TABLES
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


def run_identity(row):
    return tuple(str(row[k]) for k in RUN_IDENTITY)


def aggregate(rows):
    """{cell key: (mean, std, n)} of the final val error (%); std over seeds (ddof=1)."""
    errors = {}
    for row in rows:
        errors.setdefault(row['cell'], []).append(float(row['val_error']))
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                  len(v)) for key, v in errors.items()}
