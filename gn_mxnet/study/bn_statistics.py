"""Why BN does (on ImageNet) or does not (on MNIST-5k) break at small batches.

BN trained at batch B normalizes with the statistics of B images during training and with its
moving averages at test time. For BN nets trained at each batch size this measures the val
error (%) three ways:

- ``moving``: inference mode with the moving averages (what the study reports);
- ``precise``: inference mode after re-estimating the averages over the training set with the
  final weights (large batches, many updates): tells whether the moving averages were stale;
- ``batch<b>``: training-mode normalization with the statistics of val batches of b images
  (val shuffled once, so a batch mixes classes): how far the normalization a batch of b images
  sees is from the population's, i.e. the noise the net trained with.
"""
import math
import os
import shutil

import numpy as np

from ..models import get_model
from ..utils.files import atomic_write_text
from ..utils.tables import write_csv
from .protocol import Cell
from .runner import train_cell

CSV_NAME, MD_NAME = 'bn_statistics.csv', 'bn_statistics.md'


def _errors(net, x, y, batch, train_mode):
    import mxnet as mx
    from mxnet import autograd
    wrong = count = 0
    batch = min(batch, len(x))
    for start in range(0, len(x) - batch + 1, batch):
        data = mx.nd.array(x[start:start + batch])
        if train_mode:
            with autograd.train_mode():
                out = net(data)
        else:
            out = net(data)
        pred = out.argmax(axis=1).asnumpy().astype(np.int64)
        wrong += int((pred != y[start:start + batch]).sum())
        count += len(pred)
    return 100.0 * wrong / count


def reestimate(net, s, x, batch=200, passes=3):
    """A copy of ``net`` whose moving averages are (close to) the training set's population
    statistics: with momentum 0.9, 60 updates from batches of 200 training images leave
    < 0.3 % of the old averages. MXNet updates BN's averages in the backward pass, and a
    hybridized net was seen not to after training-mode forwards, so the copy is not
    hybridized and each batch is recorded and back-propagated (no weight changes)."""
    import tempfile
    import mxnet as mx
    from mxnet import autograd
    fresh = get_model(s.network, num_classes=10, norm='bn')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'bn.params')
        net.save_parameters(path)
        fresh.load_parameters(path)
    stats = [p for name, p in fresh.collect_params().items() if 'running_' in name]
    before = [p.data().asnumpy().copy() for p in stats]
    batch = min(batch, len(x))
    for _ in range(passes):
        for start in range(0, len(x) - batch + 1, batch):
            with autograd.record():
                out = fresh(mx.nd.array(x[start:start + batch]))
            out.backward()
    mx.nd.waitall()
    if all(np.array_equal(b, p.data().asnumpy()) for b, p in zip(before, stats)):
        raise RuntimeError("re-estimating BN statistics left the moving averages unchanged")
    return fresh


def check(s, train_batches=(32, 2), seeds=(0, 1, 2), eval_batches=(2, 8, 32), log=print):
    """Train BN at each of ``train_batches`` (study settings ``s``) and measure the errors;
    writes ``bn_statistics.csv``/``.md`` under ``s.out_dir`` and returns the rows."""
    os.makedirs(s.out_dir, exist_ok=True)
    rows = []
    for b in train_batches:
        for seed in seeds:
            cell = Cell('bn', b)
            row, net, data = train_cell(
                cell, seed, s, os.path.join(s.out_dir, '_work', f'bnstat_{cell.key}_s{seed}'))
            order = np.random.RandomState(1234).permutation(len(data.x_val))
            x_val, y_val = data.x_val[order], data.y_val[order].astype(np.int64)
            out = dict(train_batch=b, seed=seed, moving=_errors(net, x_val, y_val, 250, False))
            for e in eval_batches:   # training-mode forwards, no backward: averages unchanged
                out[f'batch{e}'] = _errors(net, x_val, y_val, e, True)
            out['precise'] = _errors(reestimate(net, s, data.x_train), x_val, y_val, 250,
                                     False)
            out['study_val_error'] = row['val_error']
            rows.append(out)
            log(f"BN trained at batch {b}, seed {seed}: " +
                ', '.join(f'{k} {v:.2f}' for k, v in out.items() if isinstance(v, float)))
    shutil.rmtree(os.path.join(s.out_dir, '_work'), ignore_errors=True)
    columns = ['train_batch', 'seed', 'moving', 'precise'] + \
        [f'batch{e}' for e in eval_batches] + ['study_val_error']
    write_csv(os.path.join(s.out_dir, CSV_NAME), rows, columns)
    atomic_write_text(os.path.join(s.out_dir, MD_NAME), markdown(rows, columns, s))
    return rows


def markdown(rows, columns, s):
    stats = columns[2:-1]
    lines = ['### BN: moving vs re-estimated vs per-batch statistics', '',
             f'BN {s.network} trained {s.epochs} epochs at each batch size, val error (%), mean '
             f'± std over {len({r["seed"] for r in rows})} seeds. moving: inference with the '
             'moving averages (the study\'s number); precise: averages re-estimated on the '
             'training set; batch b: normalized with the statistics of val batches of b images '
             '(the noise BN trains with at batch b).', '',
             '| trained at batch | ' + ' | '.join(stats) + ' |', '|---' * (len(stats) + 1) + '|']
    for b in sorted({r['train_batch'] for r in rows}, reverse=True):
        mine = [r for r in rows if r['train_batch'] == b]
        cells = []
        for key in stats:
            v = [r[key] for r in mine]
            std = np.std(v, ddof=1) if len(v) > 1 else math.nan
            cells.append(f'{np.mean(v):.2f}' + ('' if math.isnan(std) else f' ± {std:.2f}'))
        lines.append(f'| {b} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
