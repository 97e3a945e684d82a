"""The study's protocol: the GN paper's Tables 1-3 (Wu & He, 2018) as a grid of cells and seeds,
the paper's numbers beside them, and how runs are identified and aggregated.

One *cell* is a network configuration (norm, groups or channels per group, per-device batch);
one *run* is a cell trained with one seed by :func:`gn_mxnet.training.loop.train`. Every finished
run becomes one row of ``<out>/runs.csv`` (the file is rewritten atomically after each run),
so a study that was stopped resumes by skipping the runs already there. A run is identified by
its cell, its seed and a fingerprint of *every* setting that changes what it computes (the
whole resolved TrainConfig, the data settings and the thread count), so a resumed study never
mixes runs of different settings. From that CSV the study writes markdown tables (ours beside
the paper's ImageNet figures) and PNG plots.

Protocol (the paper's, scaled down to 2 CPU cores): a small-image ResNet on a fixed random
subset of the training images, average-pooled to 14x14; every batch size trains the same
number of epochs with lr = base_lr * B / 256 (linear scaling) and the same cosine schedule, as
the paper does; BN is evaluated in inference mode with its moving statistics. Layers are
16/32/64 channels wide, so G = 64 and 32 are impossible; G in {16, 8, 4, 2, 1} is the largest
set the widths allow, and channels-per-group variants fix D = C / G in every layer instead.
The defaults of each data set are in DATASET_DEFAULTS; results/*/PROTOCOL.md say why.

The GN+WS arm (``ws_arm``; the Fashion-MNIST study's amendment of 2026-12-06) adds a Table 2 row:
GN (G as GN's) with weight-standardized convs (gn_mxnet.models.convs, Qiao et al.'s convention,
eps 1e-5) at every batch size. Its cells are GN cells with ``conv='ws'``; every other run's
identity and fingerprint are what they were before the arm existed.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..training.config import DATASETS as TRAIN_DATASETS, TrainConfig
from ..training.rundir import settings_fingerprint

# The paper's numbers: ResNet-50 on ImageNet, val top-1 error (%), for comparison only.
PAPER_TABLE1 = {'BN': 23.6, 'LN': 25.3, 'IN': 28.4, 'GN': 24.1}
PAPER_TABLE2 = {'BN': {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                'GN': {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
PAPER_TABLE3_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}

TABLES = (1, 2, 3)   # the paper's tables this study reproduces
DATASETS = tuple(d for d in TRAIN_DATASETS if d != 'imagenet')   # the in-memory ones
CSV_NAME = 'runs.csv'
SETTINGS_NAME = 'settings.json'
WORK_NAME = '_work'   # the runs' scratch folder, marked as the study's own (utils.files)
# Readable copies of the main settings; `settings` (the fingerprint) is what identifies a run.
SETTING_COLUMNS = ('dataset', 'network', 'epochs', 'train_subset', 'image_size', 'base_lr',
                   'wd', 'threads')
CSV_COLUMNS = (('cell', 'norm', 'num_groups', 'group_size', 'batch_size', 'seed')
               + SETTING_COLUMNS
               + ('settings', 'lr', 'val_error', 'best_val_error', 'train_error',
                  'train_loss', 'val_errors', 'steps', 'seconds'))
RUN_IDENTITY = ('cell', 'seed', 'settings')

# Per data set: the protocol's defaults (results/<folder>/PROTOCOL.md gives the reasons).
DATASET_DEFAULTS = {
    'mnist5k': dict(epochs=3, train_subset=None, wd=5e-4, batch_sizes=(32, 16, 8, 4, 2),
                    bn_diagnostic_batches=(32, 2), ws_arm=False),
    'fashion-mnist': dict(epochs=12, train_subset=4000, wd=1e-4,
                          batch_sizes=(32, 16, 8, 4, 2, 1),
                          bn_diagnostic_batches=(32, 16, 8, 4, 2, 1), ws_arm=True),
}
WS_LABEL = 'GN+WS'   # Table 2's row of the GN+WS arm


@dataclass(frozen=True)
class Cell:
    """norm 'bn' or 'gn'; a GN cell has either num_groups (G) or group_size (channels/group);
    conv 'plain' or 'ws' (gn_mxnet.models.convs)."""
    norm: str
    batch_size: int
    num_groups: Optional[int] = None
    group_size: Optional[int] = None
    conv: str = 'plain'

    @property
    def key(self):
        conv = '' if self.conv == 'plain' else f'{self.conv}_'
        if self.norm == 'bn':
            return f'bn_{conv}b{self.batch_size}'
        spec = f'g{self.num_groups}' if self.num_groups else f'c{self.group_size}'
        return f'gn_{conv}{spec}_b{self.batch_size}'


@dataclass
class StudySettings:
    out_dir: str = 'results'
    dataset: str = 'mnist5k'
    tables: tuple = TABLES
    seeds: tuple = (0, 1, 2)
    epochs: Optional[int] = None         # None: the data set's default (DATASET_DEFAULTS)
    train_subset: Optional[int] = None   # None with epochs None: the default; 0: all images
    base_lr: float = 0.8            # lr 0.1 at batch 32
    wd: Optional[float] = None
    network: str = 'resnet8_small'
    gn_groups: int = 8              # the GN of Tables 1 and 2
    batch_sizes: Optional[tuple] = None
    table_batch: int = 32           # the batch of Tables 1 and 3
    groups: tuple = (16, 8, 4, 2, 1)
    group_sizes: tuple = (16, 8, 4, 2, 1)
    val_batch: int = 250            # eval batch only: BN uses moving stats, GN is per sample
    image_size: int = 14            # 28 -> 14 average-pooled: ~4x cheaper steps
    val_subset: Optional[int] = None  # tests only: the study validates on every val image
    threads: int = 1                # OpenMP threads of every run, pool or not (see runner)
    jobs: int = 1
    resume: bool = True
    # BN cells trained at these batches are also measured with other statistics
    # (gn_mxnet.study.bn_statistics) on a fixed shuffled subset of the val images.
    bn_diagnostic_batches: Optional[tuple] = None
    bn_diagnostic_eval_batches: tuple = (1, 2, 8, 32)
    bn_diagnostic_images: int = 2000
    ws_arm: Optional[bool] = None   # Table 2's GN+WS row; None: the data set's default
    extra: dict = field(default_factory=dict)   # more TrainConfig fields for every run

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown study data set {self.dataset!r}; choose one of "
                             f"{', '.join(DATASETS)}")
        for key, value in DATASET_DEFAULTS[self.dataset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.train_subset == 0:
            self.train_subset = None
        self.batch_sizes = tuple(self.batch_sizes)
        self.bn_diagnostic_batches = tuple(b for b in self.bn_diagnostic_batches
                                           if b in self.batch_sizes)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text, **overrides):
        values = json.loads(text)
        tuples = {f.name for f in dataclasses.fields(cls) if f.type in (tuple, 'tuple')
                  or 'tuple' in str(f.type)}
        values = {k: tuple(v) if k in tuples and isinstance(v, list) else v
                  for k, v in values.items()}
        return cls(**{**values, **overrides})


def train_config(cell, seed, s, work_dir='unused'):
    """The TrainConfig of one run (the runner trains it, the fingerprint hashes it)."""
    return TrainConfig(dataset=s.dataset, network=s.network, norm=cell.norm,
                       num_groups=cell.num_groups or 1, conv=cell.conv, epochs=s.epochs,
                       batch_size=cell.batch_size, base_lr=s.base_lr, wd=s.wd,
                       train_subset=s.train_subset, val_subset=s.val_subset, seed=seed,
                       out_dir=work_dir, progress=False, **s.extra)


def run_settings(cell, seed, s):
    """What one run computes from, beyond its cell and seed: the resolved TrainConfig's
    identity (every field but where it writes) plus the data and thread settings the study
    adds. A field added to TrainConfig joins the fingerprint by itself."""
    values = train_config(cell, seed, s).resolved().identity()
    values.update(group_size=cell.group_size, image_size=s.image_size,
                  val_batch=s.val_batch, threads=s.threads)
    return values


def fingerprint(cell, seed, s):
    """A short hash of run_settings minus the cell and seed (so one study's runs share it).
    A plain conv is not in run_settings at all (training.rundir.LATER_SETTINGS), so runs of
    before the GN+WS arm keep their fingerprint."""
    values = run_settings(cell, seed, s)
    for key in ('norm', 'num_groups', 'group_size', 'batch_size', 'seed'):
        values.pop(key)
    values.pop('conv', None)
    return settings_fingerprint(values)


def table2_labels(s):
    """The row labels of Table 2: BN, GN and, with the arm, GN+WS."""
    return ('BN', 'GN') + ((WS_LABEL,) if s.ws_arm else ())


def batch_cell(s, label, batch_size):
    """The Table 2 cell of row ``label`` (see table2_labels) at ``batch_size``."""
    if label == 'BN':
        return Cell('bn', batch_size)
    return Cell('gn', batch_size, num_groups=s.gn_groups,
                conv='ws' if label == WS_LABEL else 'plain')


def table_cells(s):
    """{table number: {row label: Cell}} for the chosen tables."""
    b, g = s.table_batch, s.gn_groups
    cells = {
        1: {'BN': Cell('bn', b), 'LN': Cell('gn', b, num_groups=1),
            'IN': Cell('gn', b, group_size=1), 'GN': Cell('gn', b, num_groups=g)},
        2: {(label, n): batch_cell(s, label, n) for label in table2_labels(s)
            for n in s.batch_sizes},
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


def planned_identity(cell, seed, s):
    return run_identity(dict(cell=cell.key, seed=seed, settings=fingerprint(cell, seed, s)))


def rows_of(s, rows):
    """The rows of ``rows`` that belong to study ``s`` (its cells, seeds and settings)."""
    wanted = {planned_identity(cell, seed, s) for cell, seed in planned_runs(s)}
    return [r for r in rows if run_identity(r) in wanted]


def aggregate(rows, column='val_error'):
    """{cell key: (mean, std, n)} of ``column`` (%); std over seeds (ddof=1)."""
    errors = {}
    for row in rows:
        errors.setdefault(row['cell'], []).append(float(row[column]))
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                  len(v)) for key, v in errors.items()}
