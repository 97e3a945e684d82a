"""The paper's mechanism, measured: why BN does (on ImageNet) or does not break at small batches.

BN trained at batch B normalizes with the statistics of B images during training and with its
moving averages at test time. For the study's own BN nets (each BN run at a batch in
``s.bn_diagnostic_batches``, right after it trained, in its worker) this measures the val error
(%) on a fixed shuffled subset of the val images, several ways:

- ``moving``: inference mode with the moving averages (what the study reports);
- ``precise``: inference mode after re-estimating the averages over the training set with the
  final weights: tells whether the moving averages were stale;
- ``batch<b>``: training-mode normalization with the statistics of val batches of b images
  (val shuffled once, so a batch mixes classes): the normalization a batch of b images gives,
  i.e. the noise the net trained with at batch b; ``batch1`` is one image's own statistics.
"""
import os

import numpy as np

from ..training.rundir import settings_fingerprint
from ..utils.tables import read_csv, write_csv
from . import protocol

CSV_NAME, MD_NAME = 'bn_statistics.csv', 'bn_statistics.md'
SHUFFLE_SEED = 1234


def columns(s):
    return (['cell', 'seed', 'settings', 'diagnostic', 'train_batch', 'images', 'moving',
             'precise']
            + [f'batch{e}' for e in s.bn_diagnostic_eval_batches] + ['study_val_error'])


def diagnostic_fingerprint(s):
    """The diagnostic's own settings (its run's are in ``settings``): which val images, which
    evaluation batches."""
    return settings_fingerprint(dict(images=s.bn_diagnostic_images, shuffle=SHUFFLE_SEED,
                                     eval_batches=list(s.bn_diagnostic_eval_batches)))


def rows_of(s, rows):
    """The diagnostic rows of study ``s``: its runs' (cell, seed, settings) and its
    diagnostic settings (rows without them, from an older version, match nothing)."""
    stamp = diagnostic_fingerprint(s)
    return [r for r in protocol.rows_of(s, rows) if r.get('diagnostic') == stamp]


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


def reestimate(net, s, x, batch=100, updates=60):
    """A copy of ``net`` whose moving averages are (close to) the training set's population
    statistics: with momentum 0.9, 60 updates leave 0.9^60 < 0.2 % of the old averages. MXNet
    updates BN's averages in the backward pass, and a hybridized net was seen not to after
    training-mode forwards, so the copy is not hybridized and each batch is recorded and
    back-propagated (no weight changes)."""
    import tempfile
    import mxnet as mx
    from mxnet import autograd
    from ..models import get_model
    fresh = get_model(s.network, num_classes=10, norm='bn')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'bn.params')
        net.save_parameters(path)
        fresh.load_parameters(path)
    stats = [p for name, p in fresh.collect_params().items() if 'running_' in name]
    before = [p.data().asnumpy().copy() for p in stats]
    batch = min(batch, len(x))
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(x))
    for update in range(updates):
        start = update * batch % max(1, len(x) - batch + 1)
        with autograd.record():
            out = fresh(mx.nd.array(x[order[start:start + batch]]))
        out.backward()
    mx.nd.waitall()
    if all(np.array_equal(b, p.data().asnumpy()) for b, p in zip(before, stats)):
        raise RuntimeError("re-estimating BN statistics left the moving averages unchanged")
    return fresh


def measure(net, data, s, row):
    """The diagnostic row of the BN run ``row`` (its trained ``net`` and ``data`` source)."""
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(data.x_val))
    order = order[:s.bn_diagnostic_images]
    x_val, y_val = data.x_val[order], data.y_val[order].astype(np.int64)
    out = dict(cell=row['cell'], seed=row['seed'], settings=row['settings'],
               diagnostic=diagnostic_fingerprint(s), train_batch=row['batch_size'],
               images=len(order),
               moving=_errors(net, x_val, y_val, s.val_batch, False))
    for e in s.bn_diagnostic_eval_batches:   # training-mode forwards: averages unchanged
        out[f'batch{e}'] = _errors(net, x_val, y_val, e, True)
    out['precise'] = _errors(reestimate(net, s, data.x_train), x_val, y_val, s.val_batch,
                             False)
    out['study_val_error'] = row['val_error']
    return out


def read_rows(out_dir):
    path = os.path.join(out_dir, CSV_NAME)
    return read_csv(path) if os.path.exists(path) else []


def write_rows(out_dir, rows, names):
    """Rows of other settings may lack some of ``names``: their cells stay empty."""
    write_csv(os.path.join(out_dir, CSV_NAME), rows, names, fill_missing=True)
