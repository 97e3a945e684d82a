"""Runs are never lost: atomic writes (permissions without the umask, stale temporaries),
a NaN stopping a run before it writes, --overwrite. (Refusal, resume identity and the SIGKILL
mid-checkpoint are in test_train.py, beside the run they resume.)"""
import csv
import os

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.training import checkpoint as ckpt
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training.data import DataSource, MNIST5kSource
from gn_mxnet.training.loop import LAST_PARAMS, train
from gn_mxnet.training.rundir import MANIFEST_NAME
from gn_mxnet.utils.files import atomic_path, atomic_write_text
from test_train import load_params


class NaNInEpoch(DataSource):
    """A data source whose `epoch` (0-based) has a NaN pixel in its batch `step`."""

    def __init__(self, source, epoch, step):
        self.source, self.bad = source, (epoch, step)
        for name in ('num_classes', 'data_shape', 'num_train', 'batch_size'):
            setattr(self, name, getattr(source, name))

    def train_batches(self, epoch):
        for step, (x, y) in enumerate(self.source.train_batches(epoch)):
            if (epoch, step) == self.bad:
                x = x.copy()
                x[0, 0, 0, 0] = float('nan')
            yield x, y

    def val_batches(self):
        return self.source.val_batches()

    def describe(self):
        return self.source.describe()


def linear_classifier():
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Flatten(), mx.gluon.nn.Dense(10))
    return net


# ResNet: MXNet's ReLU maps NaN to 0, so an unfused net's loss stays finite and the step makes
# weights NaN, found before the epoch's files are written; the default net fuses GN and ReLU,
# whose ReLU keeps NaN, so its loss is NaN at that step. Linear: the loss itself is NaN.
@pytest.mark.parametrize('make_net, words', [(lambda: None, '(after epoch 2: 2 parameter|loss '
                                                            'became nan at epoch 2 step 3)'),
                                              (linear_classifier, 'loss became nan at epoch 2 '
                                                                  'step 3')],
                         ids=['resnet', 'linear'])
def test_a_nan_loss_stops_before_anything_is_overwritten(tmp_path, make_net, words):
    cfg = TrainConfig(out_dir=str(tmp_path), epochs=2, train_subset=128, val_subset=100,
                      progress=False)
    source = lambda: MNIST5kSource(32, seed=0, train_subset=128, val_subset=100)
    with pytest.raises(FloatingPointError, match=words + '.*the last checkpoint stays'):
        train(cfg, net=make_net(), data=NaNInEpoch(source(), epoch=1, step=2))
    state = ckpt.load_checkpoint(str(tmp_path))
    assert state['epoch'] == 1 and len(state['history']) == 1
    assert all(np.isfinite(v).all() for v in state['params'].values())
    last = load_params(str(tmp_path / 'last.params'))
    for name, value in state['params'].items():
        np.testing.assert_array_equal(last[name], value, err_msg=name)
    with open(tmp_path / 'log.csv') as f:
        assert [row['epoch'] for row in csv.DictReader(f)] == ['1']
    cfg.resume = True   # the last good checkpoint continues
    assert train(cfg, net=make_net(), data=source())['finished']


def test_overwrite_replaces_the_old_run(tmp_path):
    tiny = dict(out_dir=str(tmp_path), epochs=1, train_subset=64, val_subset=50, progress=False)
    first = train(TrainConfig(**tiny))
    stale = tmp_path / ('.%s.gn-mxnet-0123456789ab.tmp' % LAST_PARAMS)   # a killed write
    stale.write_bytes(b'a killed write')
    summary = train(TrainConfig(overwrite=True, **tiny))
    assert summary['finished'] and ckpt.load_checkpoint(str(tmp_path))['epoch'] == 1
    assert sorted(os.listdir(tmp_path)) == sorted(list(summary['files']) + [MANIFEST_NAME])
    assert sorted(summary['files']) == sorted(first['files'])


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / 'file.txt')
    atomic_write_text(path, 'old')
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise RuntimeError('killed mid-write')
    with open(path) as f:
        assert f.read() == 'old'
    assert os.listdir(tmp_path) == ['file.txt']


@pytest.mark.parametrize('umask', [0o022, 0o027, 0o077], ids=oct)
def test_atomic_write_gives_open_permissions_without_touching_the_umask(tmp_path, monkeypatch,
                                                                        umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / 'plain', 'w'):
            pass
        # os.umask is process-wide: reading it (umask(0), then back) races with other threads.
        monkeypatch.setattr(os, 'umask', lambda *_: pytest.fail('atomic_path called os.umask'))
        atomic_write_text(str(tmp_path / 'atomic'), 'new')
    finally:
        monkeypatch.undo()
        os.umask(previous)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
    assert mode('atomic') == mode('plain') == 0o666 & ~umask


def test_stale_temporaries_are_the_only_files_removed(tmp_path):
    """Only the atomic writer's marked temporaries of the files named go: never a user's
    temporary of a look-alike name, nor another file's temporary."""
    from gn_mxnet.utils.files import remove_stale_temporaries
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / 'checkpoint.pkl')) as tmp:
            kept = tmp + '.copy'
            os.link(tmp, kept)   # what a SIGKILL would leave: the temporary, no target
            raise RuntimeError
    os.rename(kept, tmp)
    assert '.gn-mxnet-' in os.path.basename(tmp)
    users = ('log.csv', '.hidden', 'x.tmp', '.x.tmp', '.notes.backup.tmp', '.viminfo.ab12.tmp',
             '.checkpoint.pkl.k3j9.tmp', '.notes.gn-mxnet-0123456789ab.tmp')
    for name in users:
        (tmp_path / name).write_text('mine')
    assert remove_stale_temporaries(str(tmp_path), ['checkpoint.pkl', 'notes.txt']) == [
        os.path.basename(tmp)]
    assert sorted(os.listdir(tmp_path)) == sorted(users)
