"""The COCO comparison reports only rows of its own settings: every runs.csv row carries the
fingerprint of every setting, older rows stay unreported, a folder holding a run of other
settings is refused naming the comparison's own remedy, a user's files are kept. (The
pipeline itself, with real pretrainings, is in test_coco_pipeline.py.)"""
import csv
import os
from dataclasses import replace

import pytest

from gn_mxnet.detection import comparison, engine
from gn_mxnet.detection.engine import DetectionConfig
from gn_mxnet.training import checkpoint as ckpt
from gn_mxnet.utils.tables import write_csv
from test_user_files import assert_kept, plant


# --- the COCO comparison's rows: reused only for the same settings --------------------------
def _fake_comparison(monkeypatch, calls):
    def fake_pretrain(s, norm):
        calls.append(('pretrain', norm))
        return 'backbone-%s.params' % norm, 0.8

    def fake_run(cfg):
        calls.append((cfg.norm, cfg.seed, cfg.epochs))
        return {'final': {k: 0.1 * cfg.epochs + 0.01 * cfg.seed for k in comparison.AP_COLUMNS}}
    monkeypatch.setattr(comparison, 'pretrain', fake_pretrain)
    monkeypatch.setattr(comparison, 'run', fake_run)
    return comparison


def test_comparison_reuses_a_row_only_for_the_same_settings(tmp_path, monkeypatch):
    calls = []
    comparison = _fake_comparison(monkeypatch, calls)
    root = str(tmp_path)
    plant(root)
    s = comparison.ComparisonSettings(root=root, arms=('gn', 'gn_scratch'), seeds=(0,),
                                      finetune={'epochs': 3})
    # A runs.csv of an older version (no fingerprint): its rows match nothing, and stay.
    old = dict(arm='gn', norm='gn', pretrained='x', seed=0, pretrain_val_top1=0.5, epochs=1,
               num_train=8, seconds=1, **{k: 0.99 for k in comparison.AP_COLUMNS})
    write_csv(str(tmp_path / comparison.CSV_NAME), [old],
              [c for c in comparison.CSV_COLUMNS if c != 'settings'])
    logs = []
    rows = comparison.run_comparison(s, log=logs.append)
    assert sorted(c for c in calls if c[0] != 'pretrain') == [('gn', 0, 3), ('gn', 0, 3)]
    assert [int(r['epochs']) for r in rows] == [3, 3] and 'gn seed 0' in logs[0]
    assert '99.0' not in (tmp_path / comparison.REPORT_NAME).read_text()
    with open(tmp_path / comparison.CSV_NAME) as f:
        on_disk = list(csv.DictReader(f))
    assert len(on_disk) == 3 and on_disk[0]['settings'] == ''
    assert float(on_disk[0]['bbox_AP']) == 0.99
    # Other fine-tune epochs: a row of 3 epochs is not this comparison's; both train again.
    calls.clear()
    rows = comparison.run_comparison(replace(s, finetune={'epochs': 4}), log=logs.append)
    assert sorted(calls[1:]) == [('gn', 0, 4), ('gn', 0, 4)] and len(rows) == 2
    assert [float(r['bbox_AP']) for r in rows] == pytest.approx([0.4, 0.4])
    # The same settings again: every row reused, nothing trains.
    calls.clear()
    assert len(comparison.run_comparison(replace(s, finetune={'epochs': 3}),
                                         log=logs.append)) == 2
    assert calls == []
    with open(tmp_path / comparison.CSV_NAME) as f:
        assert len(list(csv.DictReader(f))) == 5
    assert_kept(root)
    # A runs.csv that is not a comparison's (another header) is the user's: refused, kept.
    mine = tmp_path / 'users_root'
    os.makedirs(mine / 'finetune')
    (mine / comparison.CSV_NAME).write_text('arm,seed\nmy,0\n')
    with pytest.raises(FileExistsError, match='runs.csv is listed by no gn-mxnet run record'):
        comparison.run_comparison(replace(s, root=str(mine)), log=logs.append)
    assert sorted(os.listdir(mine)) == ['finetune', comparison.CSV_NAME]
    assert (mine / comparison.CSV_NAME).read_text() == 'arm,seed\nmy,0\n'


def test_comparison_fingerprint_holds_every_setting(tmp_path):
    base = comparison.ComparisonSettings(root=str(tmp_path))
    stamp = comparison.fingerprint(base)
    changed = [dict(pretrain_epochs=2), dict(pretrain_subset=100), dict(pretrain_val_subset=10),
               dict(pretrain_batch=8), dict(pretrain_seed=1), dict(finetune={'epochs': 5}),
               dict(finetune={'lr': 0.5}), dict(finetune={'num_train': 16}),
               dict(finetune={'small': not DetectionConfig().small})]
    stamps = {comparison.fingerprint(replace(base, **kw)) for kw in changed}
    assert stamp not in stamps and len(stamps) == len(changed)
    # Where it writes, what it shows, and which arms and seeds it runs are not settings.
    for same in (dict(root='elsewhere'), dict(progress=False), dict(seeds=(5,)),
                 dict(arms=('gn',)), dict(finetune={'cache_dir': 'x', 'progress': False})):
        assert comparison.fingerprint(replace(base, **same)) == stamp


def test_comparison_refuses_a_run_dir_of_other_settings_naming_its_own_remedy(tmp_path,
                                                                               monkeypatch):
    """A fine-tune folder holding a run of other settings, or of more epochs, is refused
    before anything trains, and the message names no option the comparison lacks."""
    calls = []
    comparison = _fake_comparison(monkeypatch, calls)
    s = comparison.ComparisonSettings(root=str(tmp_path), arms=('gn_scratch',), seeds=(0,),
                                      finetune={'epochs': 3})
    cfg = comparison.finetune_config(s, 'gn_scratch', 0, '')
    os.makedirs(cfg.out_dir)
    open(os.path.join(cfg.out_dir, ckpt.CHECKPOINT_NAME), 'wb').close()
    saved = {'config': engine.run_identity(replace(cfg, lr=0.5), 1), 'epoch': 1}
    monkeypatch.setattr(comparison.ckpt, 'load_checkpoint', lambda out: saved)
    with pytest.raises(ValueError) as refused:
        comparison.run_comparison(s, log=lambda *_: None)
    message = str(refused.value)
    assert 'lr: saved 0.5' in message and cfg.out_dir in message and '\n' not in message
    assert '--resume' not in message and '--overwrite' not in message
    assert 'another --out-dir' in message and calls == []
    saved.update(config=engine.run_identity(cfg, 1), epoch=5)
    with pytest.raises(ValueError, match='holds a run of 5 epochs, this comparison trains 3'):
        comparison.run_comparison(s, log=lambda *_: None)
    assert calls == []


# --- the GN+WS arm --------------------------------------------------------------------------
COMMITTED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'results', 'coco_comparison', comparison.CSV_NAME)


def test_committed_rows_keep_their_fingerprint_under_todays_settings():
    """The committed rows are this comparison's: new settings (conv, each arm's own) left the
    default comparison's fingerprint as it was, so adding an arm retrains none of them."""
    with open(COMMITTED) as f:
        rows = list(csv.DictReader(f))
    s = comparison.ComparisonSettings()
    assert comparison.rows_of(s, rows) == rows
    assert {'gn', 'bn_star', 'gn_scratch'} <= {r['arm'] for r in rows}
    assert comparison.fingerprint(replace(s, arms=('gn_ws',))) == comparison.fingerprint(s)


def test_gn_ws_arm_pretrains_with_ws_fine_tunes_with_ws_and_retrains_nothing_else(
        tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(s, pretraining):
        calls.append(('pretrain', pretraining))
        return 'backbone-%s.params' % pretraining, 0.8

    def fake_run(cfg):
        calls.append((cfg.norm, cfg.conv, cfg.seed, cfg.pretrained_backbone))
        return {'final': {k: 0.1 + 0.01 * cfg.seed + 0.05 * (cfg.conv == 'ws')
                          for k in comparison.AP_COLUMNS}}
    monkeypatch.setattr(comparison, 'pretrain', fake_pretrain)
    monkeypatch.setattr(comparison, 'run', fake_run)
    s = comparison.ComparisonSettings(root=str(tmp_path), arms=('gn',), seeds=(0, 1))
    comparison.run_comparison(s, log=lambda *_: None)
    calls.clear()
    rows = comparison.run_comparison(replace(s, arms=('gn', 'gn_ws')), log=lambda *_: None)
    assert calls == [('pretrain', 'gn_ws')] + [('gn', 'ws', k, 'backbone-gn_ws.params')
                                               for k in (0, 1)]
    assert sorted((r['arm'], int(r['seed'])) for r in rows) == [
        ('gn', 0), ('gn', 1), ('gn_ws', 0), ('gn_ws', 1)]
    report = (tmp_path / comparison.REPORT_NAME).read_text()
    assert 'GN+WS - GN bbox_AP: +5.0 (per seed +5.0, +5.0; 2 seeds)' in report
    assert '| gn_ws | 2 | 15.5 (15.0-16.0)' in report and 'mmdetection' in report
    cmd = comparison.pretrain_command(s, 'gn_ws')
    assert cmd[cmd.index('--conv') + 1] == 'ws' and cmd[-1].endswith('pretrain/gn_ws')
    assert comparison.pretrain_config(s, 'gn_ws').conv == 'ws'


def test_rows_another_process_added_meanwhile_are_kept(tmp_path, monkeypatch):
    """Two processes on one root (seeds side by side once the backbones exist): each reads
    runs.csv again before adding its row, so neither drops the other's."""
    calls = []
    comparison = _fake_comparison(monkeypatch, calls)
    s = comparison.ComparisonSettings(root=str(tmp_path), arms=('gn_scratch',), seeds=(0,),
                                      finetune={'epochs': 3})
    other = dict(arm='gn_scratch', norm='gn', pretrained='', seed=1,
                 settings=comparison.fingerprint(s), pretrain_val_top1='', epochs=3,
                 num_train=160, seconds=1, **{k: 0.5 for k in comparison.AP_COLUMNS})
    fake_run = comparison.run

    def run_while_another_process_writes(cfg):
        write_csv(str(tmp_path / comparison.CSV_NAME), [other], comparison.CSV_COLUMNS)
        return fake_run(cfg)
    monkeypatch.setattr(comparison, 'run', run_while_another_process_writes)
    rows = comparison.run_comparison(s, log=lambda *_: None)
    assert sorted(int(r['seed']) for r in rows) == [0, 1]
    assert '| gn_scratch | 2 |' in (tmp_path / comparison.REPORT_NAME).read_text()
