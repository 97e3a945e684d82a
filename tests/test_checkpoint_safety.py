"""Checkpoints are data: a planted pickle runs no code on any resume path (the scripts'
--resume and the comparison's and the study's automatic resumes), a damaged checkpoint is one
clear error, the optimizer state survives its data-only form exactly, and a checkpoint of the
earlier pickled format is refused until `python -m gn_mxnet.migrate` converts it, after which the run resumes as
if it had never stopped."""
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gn_mxnet.training import checkpoint as ckpt
from gn_mxnet.training import checkpoint_migration, optimizer_state
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training import loop
from gn_mxnet.training.loop import train
from gn_mxnet import migrate
from gn_mxnet.training.rundir import MANIFEST_NAME, claim_out_dir, manifest_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(train_subset=64, val_subset=50, epochs=2, progress=False)


class Planted:
    """Unpickled, it makes the directory `marker` (what os.system could do, made visible)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def planted_checkpoint(marker):
    """The bytes of a pickle shaped like the old checkpoints, with code in it."""
    return pickle.dumps({'version': 1, 'epoch': 1, 'config': Planted(marker)})


def test_the_planted_pickle_would_run(tmp_path):
    marker = tmp_path / 'ran'
    pickle.loads(planted_checkpoint(marker))   # what plain pickle.load did
    assert marker.is_dir()


def plant(out_dir, marker, name=ckpt.LEGACY_CHECKPOINT_NAME, run_files=None):
    """The planted pickle as `name` in `out_dir`; with `run_files`, in a folder whose run
    record lists them (a real run's folder, or a planted record: the record decides nothing)."""
    if run_files:
        claim_out_dir(str(out_dir), run_files, overwrite=False)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name), 'wb') as f:
        f.write(planted_checkpoint(marker))


@pytest.mark.parametrize('name, words', [(ckpt.LEGACY_CHECKPOINT_NAME, 'earlier gn_mxnet'),
                                         (ckpt.CHECKPOINT_NAME, 'not a complete checkpoint')])
def test_train_imagenet_resume_runs_no_planted_code(tmp_path, name, words):
    out, marker = tmp_path / 'run', tmp_path / 'ran'
    plant(out, marker, name, loop.RUN_FILES)
    with pytest.raises(ckpt.CheckpointError, match=words) as refused:
        train(TrainConfig(out_dir=str(out), resume=True, **TINY))
    assert not marker.exists()
    message = str(refused.value)
    assert '\n' not in message and str(out) in message and '--overwrite' in message
    if name == ckpt.LEGACY_CHECKPOINT_NAME:
        assert f'{ckpt.MIGRATE_COMMAND} {out}' in message
    # Where no run record lists it, the file is not the run's and is not even read: the
    # pickle's name is an earlier version's run folder, to migrate.
    os.remove(out / MANIFEST_NAME)
    refusal = ((ckpt.CheckpointError, f'{ckpt.MIGRATE_COMMAND} {out}')
               if name == ckpt.LEGACY_CHECKPOINT_NAME else (FileExistsError, name))
    with pytest.raises(refusal[0], match=refusal[1]):
        train(TrainConfig(out_dir=str(out), resume=True, **TINY))
    assert not marker.exists()


def test_an_object_array_in_the_npz_runs_no_code(tmp_path):
    out, marker = tmp_path / 'run', tmp_path / 'ran'
    os.makedirs(out)
    with open(out / ckpt.CHECKPOINT_NAME, 'wb') as f:   # np.savez pickles object arrays
        np.savez(f, meta=np.array([Planted(marker)], dtype=object))
    with pytest.raises(ckpt.CheckpointError, match='not a complete checkpoint'):
        ckpt.load_checkpoint(str(out))
    assert not marker.exists()


def test_train_coco_resume_runs_no_planted_code(tmp_path):
    from gn_mxnet.detection.engine import RUN_FILES, DetectionConfig, run
    out, marker = tmp_path / 'run', tmp_path / 'ran'
    plant(out, marker, run_files=RUN_FILES)
    with pytest.raises(ckpt.CheckpointError, match='migrate'):
        run(DetectionConfig(out_dir=str(out), cache_dir=str(tmp_path / 'cache'), resume=True,
                            progress=False))
    assert not marker.exists()


def test_comparison_pretrain_auto_resume_runs_no_planted_code(tmp_path):
    from gn_mxnet.detection import comparison
    s = comparison.ComparisonSettings(root=str(tmp_path / 'cmp'), progress=False)
    marker = tmp_path / 'ran'
    plant(comparison.pretrain_dir(s.root, 'gn'), marker)
    with pytest.raises(ckpt.CheckpointError, match='migrate'):
        comparison.pretrain(s, 'gn')
    assert not marker.exists()


def test_study_work_dir_auto_resume_runs_no_planted_code(tmp_path, native_library):
    from gn_mxnet.study import protocol, runner
    s = protocol.StudySettings(out_dir=str(tmp_path / 'study'), tables=(2,), seeds=(0,),
                               epochs=1, train_subset=64, val_subset=50, batch_sizes=(32,),
                               jobs=1)
    work, marker = tmp_path / 'study' / '_work' / 'gn_s0', tmp_path / 'ran'
    plant(work, marker, run_files=loop.RUN_FILES)
    with pytest.raises(ckpt.CheckpointError, match='migrate'):
        runner.train_cell(protocol.Cell('gn', 32, num_groups=8), 0, s, str(work))
    assert not marker.exists()


def test_migrate_refuses_a_planted_pickle_outside_and_inside_the_trainer_bytes(tmp_path):
    marker = tmp_path / 'ran'
    outer, inner = tmp_path / 'outer', tmp_path / 'inner'
    plant(outer, marker)
    os.makedirs(inner)
    (inner / ckpt.LEGACY_CHECKPOINT_NAME).write_bytes(pickle.dumps(
        {'version': 1, 'epoch': 1, 'params': {}, 'rng': {'numpy': (), 'python': ()},
         'best': {}, 'history': [], 'config': {},
         'trainer': pickle.dumps(({0: Planted(marker)}, None))}))
    for folder in (outer, inner):
        with pytest.raises(ckpt.CheckpointError, match='posix.mkdir.*not migrated'):
            checkpoint_migration.migrate(str(folder), loop.RUN_FILES)
        assert not marker.exists()
        assert not (folder / ckpt.CHECKPOINT_NAME).exists()
    # The command: one `error:` line, exit 1.
    done = subprocess.run([sys.executable, '-m', 'gn_mxnet.migrate', str(outer)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and not marker.exists()
    assert done.stderr.startswith('error: ') and done.stderr.count('\n') == 1
    assert 'posix.mkdir' in done.stderr


def test_a_damaged_or_missing_checkpoint_is_one_clear_error(tmp_path):
    out = tmp_path / 'run'
    train(TrainConfig(out_dir=str(out), stop_after_epochs=1, **TINY))
    path = out / ckpt.CHECKPOINT_NAME
    whole = path.read_bytes()
    np.save(tmp_path / 'single.npy', np.zeros(3))
    with np.load(path) as loaded:
        arrays = dict(loaded)

    def rewritten(old, new):   # a whole archive whose JSON says something else
        text = bytes(arrays['meta']).replace(old, new)
        assert text != bytes(arrays['meta'])
        np.savez(tmp_path / 'other.npz', **{**arrays, 'meta': np.frombuffer(text, np.uint8)})
        return (tmp_path / 'other.npz').read_bytes()
    for damaged in (whole[:len(whole) // 2], whole[:100], b'', b'epoch 3\n',
                    whole.replace(b'"epoch"', b'"epoch_"'),   # caught by the zip's CRC
                    (tmp_path / 'single.npy').read_bytes(),
                    rewritten(b'"states": [[0, {"array"', b'"states": [[0, {"code"'),
                    rewritten(b'"rng_python": [3,', b'"rng_python": [9,'),
                    rewritten(b'"version": 2', b'"version": 7')):
        path.write_bytes(damaged)
        with pytest.raises(ckpt.CheckpointError) as refused:
            ckpt.load_checkpoint(str(out))
        message = str(refused.value)
        assert str(path) in message and '\n' not in message and '--overwrite' in message
    assert 'version 7' in message
    path.unlink()
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        ckpt.load_checkpoint(str(out))


class _Affine(gluon.HybridBlock):
    """x * weight + bias: elementwise, so float16 runs on the CPU (MXNet's float16 GEMM is
    cuDNN-only)."""

    def __init__(self):
        super().__init__()
        self.weight = self.params.get('weight', shape=(4,))
        self.bias = self.params.get('bias', shape=(4,))

    def hybrid_forward(self, F, x, weight, bias):
        return F.broadcast_add(F.broadcast_mul(x, weight), bias)


def _affine(dtype, contexts):
    net = _Affine()
    net.initialize(ctx=contexts)
    net.cast(dtype)
    for i, param in enumerate(net.collect_params().values()):
        param.set_data(mx.nd.array(np.linspace(-1, 1, 4) + i, dtype=dtype))
    return net


def _step(net, trainer, scale, contexts):
    x = mx.nd.array(np.cos(np.arange(8) * scale).reshape(2, 4), dtype=net.weight.dtype)
    with mx.autograd.record():   # the same batch on every device
        losses = [(net(x.as_in_context(c)).astype('float32') ** 2).sum() for c in contexts]
    mx.autograd.backward(losses)
    trainer.step(1)


@pytest.mark.parametrize('optimizer, params, dtype, devices', [
    ('sgd', {'momentum': 0.9, 'wd': 1e-4}, 'float32', 1),
    ('sgd', {'momentum': 0.0}, 'float32', 1),                           # no states (None)
    ('nag', {'momentum': 0.9}, 'float32', 1),
    ('sgd', {'momentum': 0.9, 'multi_precision': True}, 'float16', 1),  # (momentum, fp32 copy)
    ('adam', {}, 'float32', 1),                                         # counts: bias correction
    ('adam', {}, 'float32', 2),   # an updater and update counts per device
], ids=['sgd', 'sgd-no-momentum', 'nag', 'sgd-fp16-master', 'adam', 'adam-two-devices'])
def test_optimizer_state_as_data_continues_exactly(optimizer, params, dtype, devices):
    contexts = [mx.cpu(i) for i in range(devices)]
    _step_on = lambda net, trainer, scale: _step(net, trainer, scale, contexts)

    def make():
        net = _affine(dtype, contexts)
        return net, gluon.Trainer(net.collect_params(), optimizer,
                                  {'learning_rate': 0.1, **params},
                                  kvstore='device' if devices > 1 else None,
                                  update_on_kvstore=False)
    whole, whole_trainer = make()
    for k in range(4):
        _step_on(whole, whole_trainer, k + 1)
    first, first_trainer = make()
    for k in range(2):
        _step_on(first, first_trainer, k + 1)
    meta, arrays = optimizer_state.trainer_state(first_trainer)
    if dtype == 'float16':
        assert {str(a.dtype) for a in arrays.values()} == {'float32'}
    resumed, resumed_trainer = make()
    for param, saved in zip(resumed.collect_params().values(),
                            first.collect_params().values()):
        param.set_data(saved.data())
    optimizer_state.restore_trainer_state(resumed_trainer, meta, arrays)
    assert resumed_trainer._optimizer.num_update == 2
    assert len(resumed_trainer._updaters) == devices
    if devices > 1:
        assert sorted(d for d, _ in meta['update_counts']) == list(range(devices))
    for k in range(2, 4):
        _step_on(resumed, resumed_trainer, k + 1)
    for param, expected in zip(resumed.collect_params().values(),
                               whole.collect_params().values()):
        for got, want in zip(param.list_data(), expected.list_data()):   # every device's
            np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())


def legacy_save_checkpoint(out_dir, *, net, trainer, epoch, best, history, config):
    """e05de51's save_checkpoint: the whole state in one pickle, with MXNet's own (pickled)
    trainer states."""
    import random
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        trainer.save_states(os.path.join(folder, 'trainer.states'))
        with open(os.path.join(folder, 'trainer.states'), 'rb') as f:
            trainer_bytes = f.read()
    state = {'version': 1, 'epoch': epoch, 'params': ckpt.parameter_arrays(net),
             'trainer': trainer_bytes,
             'rng': {'numpy': np.random.get_state(), 'python': random.getstate()},
             'best': dict(best), 'history': list(history), 'config': dict(config)}
    path = os.path.join(out_dir, ckpt.LEGACY_CHECKPOINT_NAME)
    with open(path, 'wb') as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def test_a_migrated_old_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    whole, old = str(tmp_path / 'whole'), str(tmp_path / 'old')
    summary = train(TrainConfig(out_dir=whole, **TINY))
    monkeypatch.setattr(ckpt, 'save_checkpoint', legacy_save_checkpoint)
    train(TrainConfig(out_dir=old, stop_after_epochs=1, **TINY))
    monkeypatch.undo()
    assert os.listdir(old).count(ckpt.LEGACY_CHECKPOINT_NAME) == 1
    # As e05de51 left it: no run record; and a user's file beside the run.
    os.remove(os.path.join(old, MANIFEST_NAME))
    with open(os.path.join(old, 'notes.txt'), 'w') as f:
        f.write('mine')
    for start in (dict(resume=True), {}, dict(overwrite=True)):   # never replaced silently
        with pytest.raises(ckpt.CheckpointError, match=f'{ckpt.MIGRATE_COMMAND} {old}'):
            train(TrainConfig(out_dir=old, **start, **TINY))
    assert migrate.main([old]) == 0
    assert ckpt.CHECKPOINT_NAME in os.listdir(old)
    assert ckpt.LEGACY_CHECKPOINT_NAME not in os.listdir(old)
    recorded = manifest_files(old)
    assert ckpt.CHECKPOINT_NAME in recorded and 'last.params' in recorded
    assert 'notes.txt' not in recorded
    resumed = train(TrainConfig(out_dir=old, resume=True, **TINY))
    assert resumed['finished'] and resumed['final']['val_loss'] == summary['final']['val_loss']
    a = mx.nd.load(os.path.join(whole, 'last.params'))
    b = mx.nd.load(os.path.join(old, 'last.params'))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)
