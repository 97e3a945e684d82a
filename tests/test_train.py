"""The training job: schedule, validation, outputs, resume after a stop or a SIGKILL, the .rec,
image-folder and Symbol paths, and (slow) the default run's accuracy and time budget."""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.training import checkpoint as ckpt
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training.data import MNIST5kSource, RecordSource
from gn_mxnet.training.loop import train
from gn_mxnet.training.schedule import learning_rate
from test_data import digit_subset, write_digit_folder, write_digit_rec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'train', 'train_imagenet.py')
# Small and quick: 512 training digits, 3 epochs of 16 steps.
QUICK = dict(train_subset=512, val_subset=200, epochs=3, progress=False)


def load_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}


def assert_same_params(path_a, path_b):
    a, b = load_params(path_a), load_params(path_b)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def logits_and_labels(cfg, params_path, batches):
    """(logits, labels) of `batches` under the weights of a run of `cfg` in `params_path`."""
    from gn_mxnet.training.network import make_network, prepare_network
    cfg = cfg.resolved()
    net = prepare_network(cfg, make_network(cfg, 10), cfg.data_shape, [mx.cpu()])
    net.load_parameters(params_path)
    pairs = [(net(x.as_in_context(mx.cpu())).asnumpy().astype(np.float64),
              y.asnumpy().astype(int)) for x, y in batches]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('uninterrupted'))
    return train(TrainConfig(out_dir=out, **QUICK)), out


def test_schedule_warmup_step_and_cosine():
    cfg = TrainConfig(epochs=100, warmup_epochs=5, lr_mode='step', lr_decay_epochs='30,60,90')
    assert learning_rate(0, 100, cfg, 0.4) == 0.0
    assert learning_rate(250, 100, cfg, 0.4) == pytest.approx(0.2)      # half-way warm-up
    assert learning_rate(500, 100, cfg, 0.4) == pytest.approx(0.4)
    assert learning_rate(2999, 100, cfg, 0.4) == pytest.approx(0.4)
    assert learning_rate(3000, 100, cfg, 0.4) == pytest.approx(0.04)
    assert learning_rate(6000, 100, cfg, 0.4) == pytest.approx(0.004)
    assert learning_rate(9500, 100, cfg, 0.4) == pytest.approx(0.0004)
    cos = TrainConfig(epochs=10, warmup_epochs=2, lr_mode='cosine')
    assert learning_rate(200, 100, cos, 1.0) == pytest.approx(1.0)
    assert learning_rate(600, 100, cos, 1.0) == pytest.approx(0.5)        # middle of cosine
    assert learning_rate(999, 100, cos, 1.0) < 1e-4


@pytest.mark.parametrize('change, error, words', [
    (dict(norm='group'), ValueError, 'unknown norm'),
    (dict(kv_store='nccl'), ValueError, 'unknown kv-store'),
    (dict(gn_backend='cuda'), ValueError, 'unknown gn-backend'),
    (dict(lr_mode='step', lr_decay_epochs='60,30'), ValueError, 'lr-decay-epochs'),
    (dict(batch_size=0), ValueError, 'batch-size'),
    (dict(rec_train='a.rec'), ValueError, 'rec-val'),
    (dict(warmup_epochs=99), ValueError, 'warmup-epochs'),
    (dict(data_shape='3,224'), ValueError, 'data-shape'),
])
def test_bad_config_is_named(change, error, words):
    with pytest.raises(error, match=words):
        TrainConfig(**change).resolved()


def test_bad_input_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match='num_groups=5 does not divide'):
        train(TrainConfig(num_groups=5, out_dir=str(tmp_path), **QUICK))
    with pytest.raises(FileNotFoundError, match='training .rec file not found'):
        train(TrainConfig(rec_train=str(tmp_path / 'no.rec'), rec_val=str(tmp_path / 'no.rec'),
                          out_dir=str(tmp_path), progress=False))
    with pytest.raises(FileNotFoundError, match='train/<class>'):
        train(TrainConfig(data_dir=str(tmp_path / 'missing'), out_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        train(TrainConfig(resume=True, out_dir=str(tmp_path / 'fresh'), **QUICK))
    with pytest.raises(ValueError, match='float16 needs --gpus'):
        train(TrainConfig(dtype='float16', out_dir=str(tmp_path), **QUICK))
    with pytest.raises(ValueError, match='unknown model'):
        train(TrainConfig(network='resnet7_tiny', out_dir=str(tmp_path), **QUICK))


def test_outputs_written_and_consistent(uninterrupted):
    summary, out = uninterrupted
    for name in ('log.csv', 'summary.json', 'curves.png', 'best.params', 'last.params',
                 ckpt.CHECKPOINT_NAME):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, 'log.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]
    for key in ('train_loss', 'train_top1', 'train_top5', 'val_top1', 'val_top5', 'lr',
                'img_per_sec'):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    # The last row's val figures are those of last.params on the val split, recomputed here.
    logits, labels = logits_and_labels(
        TrainConfig(**QUICK), os.path.join(out, 'last.params'),
        MNIST5kSource(32, seed=0, train_subset=512, val_subset=200).val_batches())
    top5 = np.argsort(-logits, axis=1)[:, :5]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert float(rows[-1]['val_top1']) == np.mean(top5[:, 0] == labels)
    assert float(rows[-1]['val_top5']) == np.mean((top5 == labels[:, None]).any(axis=1))
    assert float(rows[-1]['val_loss']) == pytest.approx(
        -log_p[np.arange(len(labels)), labels].mean(), rel=1e-5)
    with open(os.path.join(out, 'summary.json')) as f:
        saved = json.load(f)
    assert saved['finished'] and saved['epochs_done'] == 3
    assert saved['final']['val_top1'] == pytest.approx(float(rows[-1]['val_top1']))
    assert saved['best_val_top1'] == pytest.approx(max(float(r['val_top1']) for r in rows))
    with open(os.path.join(out, 'curves.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


def test_resume_after_stop_equals_uninterrupted(uninterrupted, tmp_path):
    summary, out = uninterrupted
    stopped = train(TrainConfig(out_dir=str(tmp_path), stop_after_epochs=1, **QUICK))
    assert not stopped['finished'] and stopped['epochs_done'] == 1
    saved = (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes()
    with pytest.raises(FileExistsError) as refused:   # a new run never replaces it silently
        train(TrainConfig(out_dir=str(tmp_path), **QUICK))
    for words in (str(tmp_path), ckpt.CHECKPOINT_NAME, '--resume', '--overwrite'):
        assert words in str(refused.value)
    assert (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes() == saved
    with pytest.raises(ValueError, match='not both'):
        train(TrainConfig(out_dir=str(tmp_path), resume=True, overwrite=True, **QUICK))
    # Every setting that changes results is compared, and each difference is named.
    changed = dict(momentum=0.8, lr_decay=0.5, mixup_alpha=0.3, val_subset=100, num_classes=12,
                   model_kwargs={'name_prefix': 'other_'}, kv_store='local')
    with pytest.raises(ValueError, match='different configuration') as refused:
        train(TrainConfig(out_dir=str(tmp_path), resume=True, **{**QUICK, **changed}))
    for key, value in changed.items():
        assert f'{key}: saved ' in str(refused.value) and f'now {value!r}' in str(refused.value)
    assert 'momentum: saved 0.9, now 0.8' in str(refused.value)
    # MNIST-5k decodes nothing: its data threads change nothing and may differ.
    resumed = train(TrainConfig(out_dir=str(tmp_path), resume=True, data_threads=2, **QUICK))
    assert resumed['finished'] and resumed['epochs_done'] == 3
    assert_same_params(os.path.join(out, 'last.params'), str(tmp_path / 'last.params'))
    assert resumed['final']['val_loss'] == summary['final']['val_loss']
    with pytest.raises(ValueError, match='different configuration'):
        train(TrainConfig(out_dir=str(tmp_path), resume=True, **{**QUICK, 'seed': 5}))


def test_resume_identity_is_every_field_but_bookkeeping():
    """...and but a setting added later while it has the value every earlier run had
    (rundir.LATER_SETTINGS: conv 'plain'), which joins the identity at any other value."""
    from gn_mxnet.training.config import BOOKKEEPING
    from gn_mxnet.training.rundir import LATER_SETTINGS
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(BOOKKEEPING) < fields and set(LATER_SETTINGS) < fields
    rec = TrainConfig(rec_train='t.rec', rec_val='v.rec', gpus='0,1').identity()
    assert set(rec) == fields - set(BOOKKEEPING) - set(LATER_SETTINGS)
    assert rec['gpus'] == 2   # the device count (total batch), not which devices
    assert set(TrainConfig().identity()) == (fields - set(BOOKKEEPING) - set(LATER_SETTINGS)
                                             - {'data_threads'})
    assert set(TrainConfig(conv='ws').identity()) == (fields - set(BOOKKEEPING)
                                                      - {'data_threads'})


# Runs a script whose second checkpoint write SIGKILLs its own process half-way through the
# bytes, inside atomic_path: the deterministic worst moment for a kill.
KILLED_IN_SECOND_CHECKPOINT = """
import os, runpy, signal, sys
from gn_mxnet.training import checkpoint
from gn_mxnet.utils import files
written = []

def write_then_die(path, payload):
    written.append(path)
    if len(written) < 2:
        return files.atomic_write_bytes(path, payload)
    with files.atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(payload[:len(payload) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.atomic_write_bytes = write_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    # Float sums depend on the thread count, and the wrapper imports MXNet before the script
    # can choose it (gn_mxnet.utils.threads): every run here gets the same one.
    env = dict(os.environ, OMP_NUM_THREADS='2')
    out, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
    options = ['--epochs', '3', '--train-subset', '512', '--val-subset', '200', '--no-progress']
    subprocess.run([sys.executable, SCRIPT, '--out-dir', out] + options, cwd=REPO, check=True,
                   timeout=300, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = [SCRIPT, '--out-dir', killed] + options
    died = subprocess.run([sys.executable, '-c', KILLED_IN_SECOND_CHECKPOINT] + args, cwd=REPO,
                          timeout=300, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    assert died.returncode == -signal.SIGKILL
    state = ckpt.load_checkpoint(killed)   # the last complete checkpoint, epoch 1's
    assert 1 <= state['epoch'] < 3
    assert state['epoch'] == 1
    assert [n for n in os.listdir(killed) if n.startswith(f'.{ckpt.CHECKPOINT_NAME}.')]
    subprocess.run([sys.executable] + args + ['--resume'], cwd=REPO, check=True, timeout=300,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert_same_params(os.path.join(out, 'last.params'), os.path.join(killed, 'last.params'))
    assert not [n for n in os.listdir(killed) if n.endswith('.tmp')]   # cleared at the start


def test_recipe_options_run(tmp_path):
    """NAG, step schedule, label smoothing, mixup, no-wd, last-gamma and the ops backend."""
    cfg = TrainConfig(out_dir=str(tmp_path), optimizer='nag', lr_mode='step',
                      lr_decay_epochs='1', warmup_epochs=0.5, label_smoothing=0.1, mixup=True,
                      mixup_off_epoch=1, no_wd=True, last_gamma=True, gn_backend='ops',
                      **{**QUICK, 'epochs': 2, 'train_subset': 256})
    summary = train(cfg)
    assert summary['finished']
    assert all(np.isfinite(summary['final'][k]) for k in ('train_loss', 'val_loss'))


def test_no_wd_zeroes_weight_decay_of_norm_and_bias():
    from gn_mxnet import models
    from gn_mxnet.training.network import prepare_network
    net = models.get_model('resnet8_small', num_classes=10, num_groups=8)
    cfg = TrainConfig(no_wd=True, hybridize=False).resolved()
    prepare_network(cfg, net, (1, 28, 28), [mx.cpu()])
    mults = {name: p.wd_mult for name, p in net.collect_params().items()}
    assert all(m == 0.0 for n, m in mults.items() if n.endswith(('gamma', 'beta', 'bias')))
    assert all(m == 1.0 for n, m in mults.items() if n.endswith('weight'))


def test_rec_path_trains(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(128, 60)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    cfg = TrainConfig(rec_train=train_rec, rec_val=val_rec, num_classes=10,
                      data_shape=(1, 28, 28), network='resnet8_small', num_groups=8, epochs=1,
                      batch_size=32, warmup_epochs=0, data_threads=1,
                      out_dir=str(tmp_path / 'out'), progress=False)
    summary = train(cfg)
    assert summary['finished'] and 'RecordIO' in summary['data']
    # 60 val records in batches of 32: each evaluated once, in order, the padding left out,
    # and the reported top-1 is that of the saved weights on them.
    source = RecordSource(train_rec, val_rec, 32, 10, (1, 28, 28), threads=1)
    logits, labels = logits_and_labels(cfg, str(tmp_path / 'out' / 'last.params'),
                                       source.val_batches())
    np.testing.assert_array_equal(labels, y_val)
    assert summary['final']['val_top1'] == np.mean(logits.argmax(axis=1) == labels)


def test_image_folder_path_trains(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(64, 30)
    write_digit_folder(str(tmp_path / 'digits'), 'train', x_train, y_train)
    write_digit_folder(str(tmp_path / 'digits'), 'val', x_val, y_val)
    summary = train(TrainConfig(data_dir=str(tmp_path / 'digits'), data_shape=(1, 28, 28),
                                network='resnet8_small', num_groups=8, epochs=1, batch_size=16,
                                warmup_epochs=0, data_threads=1, out_dir=str(tmp_path / 'out'),
                                progress=False))
    assert summary['finished'] and 'image folder' in summary['data']


def test_symbolic_network_trains_from_the_script(tmp_path):
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import train_imagenet
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    summary = train_imagenet.main(['--symbolic', '--network', 'resnet8_small', '--epochs', '1',
                                   '--train-subset', '256', '--val-subset', '100',
                                   '--no-progress', '--last-gamma',
                                   '--out-dir', str(tmp_path)])
    assert summary['finished']
    params = load_params(str(tmp_path / 'last.params'))
    assert any(name.endswith('_gamma') for name in params)   # Symbol variable names


@pytest.mark.slow
def test_default_run_reaches_97_percent_within_5_minutes(tmp_path):
    start = time.time()
    subprocess.run([sys.executable, SCRIPT, '--out-dir', str(tmp_path), '--no-progress'],
                   cwd=REPO, check=True, timeout=420)
    seconds = time.time() - start
    with open(tmp_path / 'summary.json') as f:
        summary = json.load(f)
    print(f"default run: {seconds:.0f} s, val top-1 {summary['final']['val_top1']:.4f}")
    assert summary['final']['val_top1'] >= 0.97
    assert seconds <= 300


def test_symbol_block_keeps_gluon_initialisation_and_zero_last_gamma():
    from symbols import resnet as symbol_resnet
    from gn_mxnet.training.network import symbol_to_block
    symbol = symbol_resnet.get_symbol(10, 8, '1,28,28', norm='gn', num_groups=8,
                                      last_gamma=True, backend='ops')
    block = symbol_to_block(symbol)
    block.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    assert block(mx.nd.ones((2, 1, 28, 28))).shape == (2, 10)   # logits, not softmax
    gammas = {n: p.data().asnumpy() for n, p in block.collect_params().items()
              if n.endswith('_gamma')}
    zero = [n for n, g in gammas.items() if not g.any()]
    assert zero and len(zero) < len(gammas)
    assert all((g == 1).all() for n, g in gammas.items() if n not in zero)
    assert all(not p.data().asnumpy().any() for n, p in block.collect_params().items()
               if n.endswith(('_beta', '_bias')))


def test_throughput_comparison_measures_both_norms():
    from gn_mxnet.training.throughput import measure_rounds
    per_round = measure_rounds('resnet8_small', ('bn', 'gn'), batch_size=4, steps=1,
                               warmup=1, rounds=3)
    assert {norm: len(v) for norm, v in per_round.items()} == {'bn': 3, 'gn': 3}
    assert all(r > 0 for values in per_round.values() for r in values)


def test_paired_ratio_is_taken_round_by_round():
    from gn_mxnet.training.throughput import PairedRatio
    # A machine slowing down 2x halves both norms' rates in round 2: round by round the ratio
    # stays 0.5, while a ratio of the two medians would read 0.5 / 0.75 of the truth.
    rates = {'gn': [50.0, 25.0, 24.0], 'bn': [100.0, 50.0, 40.0]}
    ratio = PairedRatio.of(rates, 'gn', 'bn')
    assert ratio.ratios == (0.5, 0.5, 0.6)
    assert ratio.median == 0.5 and ratio.rounds_at_least(0.55) == 1
    assert ratio.quartiles == (0.5, 0.55)


def _bench_train():
    """benchmarks/bench_train.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'benchmarks', 'bench_train.py')
    spec = importlib.util.spec_from_file_location('bench_train', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_train_prints_the_paired_ratio(capsys):
    bench = _bench_train()
    rates = bench.main(['--batch-size', '4', '--steps', '1', '--warmup', '0', '--rounds', '2'])
    out = capsys.readouterr().out
    assert len(rates['gn']) == 2 and 'round by round: median' in out and '2 rounds' in out


def test_bench_train_compares_gn_with_gn_ws(capsys):
    bench = _bench_train()
    rates = bench.main(['--conv', 'ws', '--ws-backend', 'ops', '--batch-size', '2', '--steps',
                        '1', '--warmup', '0', '--rounds', '1'])
    out = capsys.readouterr().out
    assert set(rates) == {'gn', 'gn+ws'} and 'WS backend ops' in out
    assert 'GN+WS / GN img/s ratio, round by round: median' in out


def test_default_network_runs_the_native_operator_when_hybridized(tmp_path):
    """The default run must train with the C++ op, not silently with stock-op fallbacks
    (which are ~6x slower on CPU: the time budget of the default run depends on it)."""
    from gn_mxnet import models
    from gn_mxnet.training.network import prepare_network
    cfg = TrainConfig().resolved()
    net = models.get_model(cfg.network, num_classes=10, norm=cfg.norm,
                           num_groups=cfg.num_groups, backend=cfg.gn_backend)
    prepare_network(cfg, net, cfg.data_shape, [mx.cpu()])
    net(mx.nd.zeros((2,) + cfg.data_shape))
    net.export(str(tmp_path / 'net'))
    with open(tmp_path / 'net-symbol.json') as f:
        ops = {node['op'] for node in json.load(f)['nodes']}
    assert 'GroupNormalization' in ops, sorted(ops)
