"""GN against BN* on the embedded garments: pretrain -> convert -> fine-tune -> COCO AP.

The arms (Wu & He 2018, Table 4's COCO comparison at toy scale):

- ``gn``: ResNet-50-GN pretrained on Fashion-MNIST classification by the classifier's trainer
  (what ``train/train_imagenet.py`` runs, see :func:`pretrain_command`), its grey stem spread
  over three channels by ``gn_mxnet.convert --input-channels 3``, fine-tuned with GN in backbone,
  FPN, 4conv1fc box head and mask head;
- ``bn_star``: the BN twin, pretrained the same way, frozen in the detector (statistics and
  affine fixed: Detectron's AffineChannel) with the 2fc box head;
- ``gn_scratch``: the GN recipe with the backbone from scratch;
- ``gn_ws``: GN+WS (Qiao et al. 2019, mmdetection's gn+ws configs): the ``gn`` arm with every
  conv that a GN follows weight-standardized, in its own classifier pretraining
  (``--conv ws``) and in the detector (``conv='ws'``, see :mod:`gn_mxnet.detection.model`).

Every arm fine-tunes with the same schedule, once per seed. ``root`` holds
``pretrain/<pretraining>/`` (the classifier run: ``gn``, ``bn``, ``gn_ws``) and its
``backbone.params``, ``finetune/<arm>_seed<k>/`` (the detector run),
``runs.csv`` (one row per finished fine-tune, rewritten atomically) and ``comparison.md``.
Stopped, it resumes: finished rows are kept, a half-done run continues from its checkpoint.
Once the backbones exist (``stage='pretrain'``), processes running other arms or seeds on the
same root may run side by side: each reads ``runs.csv`` again before adding its row.

Every row carries the fingerprint of every setting of the comparison (``settings``: the
pretrainings', the fine-tune's and the converter's), and only rows with this comparison's
fingerprint are reused and reported; rows of other settings stay in the CSV. A pretraining or
fine-tune folder that holds a run of other settings is refused before anything trains.
"""
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..models import convert
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.reporting import SUMMARY_NAME
from ..training.rundir import (add_to_manifest, adopt_legacy_table, claim_out_dir,
                               refuse_foreign, require_folder, require_same_run, run_identity,
                               settings_fingerprint)
from ..utils.files import atomic_write_text
from ..utils.tables import read_csv, write_csv
from .engine import DetectionConfig, run
from .model import check_conv

DEFAULT_ROOT = os.path.join('runs', 'coco_comparison')
BACKBONE_NAME = 'backbone.params'
CSV_NAME, REPORT_NAME = 'runs.csv', 'comparison.md'
ROOT_FILES = (CSV_NAME, REPORT_NAME)   # the root's own files, in its manifest (training.rundir)
BACKBONE_DEPTH = 50
NUM_GROUPS = 32
# pretraining -> (norm, conv) of its classifier; its folder is pretrain/<pretraining>/
PRETRAININGS = {'gn': ('gn', 'plain'), 'bn': ('bn', 'plain'), 'gn_ws': ('gn', 'ws')}
# arm -> (detector norm, detector conv, its backbone's pretraining or None for from scratch)
ARMS = {'gn': ('gn', 'plain', 'gn'), 'bn_star': ('bn', 'plain', 'bn'),
        'gn_scratch': ('gn', 'plain', None), 'gn_ws': ('gn', 'ws', 'gn_ws')}
AP_COLUMNS = ('bbox_AP', 'bbox_AP50', 'bbox_AP75', 'segm_AP', 'segm_AP50', 'segm_AP75')
CSV_COLUMNS = (('arm', 'norm', 'pretrained', 'seed', 'settings') + AP_COLUMNS
               + ('pretrain_val_top1', 'epochs', 'num_train', 'seconds'))
# The fine-tune fields that name where a run writes or what it shows (not what it computes),
# and those each row sets itself (its arm's norm and conv, its seed, its backbone's path).
_NOT_SETTINGS = ('out_dir', 'cache_dir', 'resume', 'overwrite', 'progress', 'norm', 'conv',
                 'seed', 'pretrained_backbone')


@dataclass
class ComparisonSettings:
    root: str = DEFAULT_ROOT
    arms: tuple = tuple(ARMS)
    seeds: tuple = (0, 1)
    # Classifier pretraining (one per norm, seed 0): ResNet-50 on 28x28 Fashion-MNIST, one
    # epoch of 20,000 images (GN, with MXNet's 1 thread: 9 min 15 s on 2 idle cores, 37 img/s,
    # val top-1 77.9 %, results/archive/coco_pretrain_gn/; the scripts now use both cores).
    pretrain_epochs: int = 1
    pretrain_subset: int = 20000     # a fixed random part of the 60,000 training images
    pretrain_val_subset: int = 2000
    pretrain_batch: int = 32
    pretrain_seed: int = 0
    # Fine-tuning: DetectionConfig's fields (the default command's unless given here).
    finetune: dict = field(default_factory=dict)
    progress: bool = True


def pretraining_of(norm, conv='plain'):
    """The pretraining (PRETRAININGS' key) whose classifier has ``norm`` and ``conv``."""
    return norm if conv == 'plain' else '%s_%s' % (norm, conv)


def pretrain_dir(root, pretraining):
    return os.path.join(root, 'pretrain', pretraining)


def backbone_path(root, pretraining):
    """Where the comparison leaves the converted ResNet-50 backbone of ``pretraining``."""
    return os.path.join(pretrain_dir(root, pretraining), BACKBONE_NAME)


def pretrain_command(s, pretraining):
    """The train/train_imagenet.py command line that pretrains the ``pretraining`` backbone."""
    norm, conv = PRETRAININGS[pretraining]
    return (['python', 'train/train_imagenet.py', '--dataset', 'fashion-mnist',
             '--network', 'resnet%d_v1b' % BACKBONE_DEPTH, '--norm', norm]
            + (['--conv', conv] if conv != 'plain' else [])
            + ['--num-groups', str(NUM_GROUPS), '--last-gamma', '--epochs',
               str(s.pretrain_epochs), '--batch-size', str(s.pretrain_batch),
               '--train-subset', str(s.pretrain_subset), '--val-subset',
               str(s.pretrain_val_subset), '--seed', str(s.pretrain_seed),
               '--out-dir', pretrain_dir(s.root, pretraining)])


def convert_command(s, pretraining):
    """The gn_mxnet.convert command line that makes the detector's backbone file (a WS
    classifier's weights have the plain names, and convert the same way)."""
    return ['python', '-m', 'gn_mxnet.convert',
            os.path.join(pretrain_dir(s.root, pretraining), 'last.params'),
            backbone_path(s.root, pretraining),
            '--num-groups', str(NUM_GROUPS), '--input-channels', '3']


def pretrain_config(s, pretraining):
    """The TrainConfig that pretrain_command's arguments give (tests check they agree)."""
    norm, conv = PRETRAININGS[pretraining]
    return TrainConfig(dataset='fashion-mnist', network='resnet%d_v1b' % BACKBONE_DEPTH,
                       norm=norm, conv=conv, num_groups=NUM_GROUPS, last_gamma=True,
                       epochs=s.pretrain_epochs, batch_size=s.pretrain_batch,
                       train_subset=s.pretrain_subset, val_subset=s.pretrain_val_subset,
                       seed=s.pretrain_seed, out_dir=pretrain_dir(s.root, pretraining),
                       progress=s.progress)


def how_to_pretrain(root=DEFAULT_ROOT, pretraining='gn'):
    """The commands that make backbone_path(root, pretraining), as text for a message."""
    s = ComparisonSettings(root=root)
    arm = next(a for a, (_, _, p) in ARMS.items() if p == pretraining)
    return ('python train/coco_comparison.py --stage pretrain --arms %s --out-dir %s\n'
            '  (that is: %s\n   then: %s)'
            % (arm, root, ' '.join(pretrain_command(s, pretraining)),
               ' '.join(convert_command(s, pretraining))))


def resolve_backbone(value, norm, root=DEFAULT_ROOT, conv='plain'):
    """(path or '', message) for train_coco.py's --pretrained-backbone: 'auto' takes the
    comparison's pretrained backbone for ``norm`` and ``conv`` when it exists, 'none' trains
    from scratch."""
    if value == 'none':
        return '', 'backbone from scratch (--pretrained-backbone none)'
    if value != 'auto':
        return value, 'backbone from %s' % value
    check_conv(norm, conv)   # a pairing no pretraining is made for
    pretraining = pretraining_of(norm, conv)
    path = backbone_path(root, pretraining)
    if os.path.isfile(path):
        return path, 'backbone pretrained on Fashion-MNIST: %s' % path
    return '', ('no pretrained %s backbone at %s: training the backbone from scratch. Make it '
                'with\n  %s' % (pretraining.upper().replace('_', '+'), path,
                                 how_to_pretrain(root, pretraining)))


def fingerprint(s):
    """The hash of every setting that changes a row's figures but its arm and seed: the
    pretrainings' (their TrainConfig identity), the converter's and the fine-tune's (its
    DetectionConfig but where it writes and what each row sets itself)."""
    pretraining = pretrain_config(s, 'gn').resolved().identity()
    pretraining.pop('norm')
    pretraining.pop('conv', None)   # each arm's, as norm (and left out at 'plain' anyway)
    finetune = asdict(DetectionConfig(**{'evaluate': 'last', **s.finetune}))
    finetune = {k: v for k, v in finetune.items() if k not in _NOT_SETTINGS}
    return settings_fingerprint(dict(pretraining=pretraining, finetune=finetune,
                                     # the converter's options (after its two paths)
                                     backbone=convert_command(s, 'gn')[5:],
                                     depth=BACKBONE_DEPTH, num_groups=NUM_GROUPS))


def _remedy(out):
    return ('This comparison does not replace it: run it with the settings that run was made '
            'with, give it another --out-dir, or move %s away' % out)


def check_run_dir(out, cfg, identity):
    """Refuses (before anything trains) a run folder holding a run of other settings than
    ``cfg``'s (``identity``), or one trained further than ``cfg.epochs``; returns the saved
    state, or None where no run is there."""
    if not ckpt.has_checkpoint(out):   # an old pickled one too: load_checkpoint refuses it
        return None
    state = ckpt.load_checkpoint(out)
    require_same_run(state['config'], identity, out, remedy=_remedy(out))
    if state['epoch'] > cfg.epochs:
        raise ValueError('%s holds a run of %d epochs, this comparison trains %d. %s'
                         % (out, state['epoch'], cfg.epochs, _remedy(out)))
    return state


def pretrain(s, pretraining):
    """Pretrain (or finish pretraining) the ``pretraining`` backbone and convert it; returns
    (backbone path, final val top-1)."""
    cfg = pretrain_config(s, pretraining)
    out = cfg.out_dir
    path = backbone_path(s.root, pretraining)
    refuse_foreign(out, [BACKBONE_NAME])   # a backbone file there that no run of ours wrote
    # another pretraining there (other images, epochs) must not pass for this one
    state = check_run_dir(out, cfg, run_identity(cfg.resolved(), 1))
    done = (state is not None and os.path.isfile(os.path.join(out, SUMMARY_NAME))
            and state['epoch'] == cfg.epochs)
    if not done:
        cfg.resume = state is not None
        cfg.overwrite = not cfg.resume
        summary = train(cfg)
        if not summary['finished']:
            raise RuntimeError('pretraining %s in %s did not finish' % (pretraining, out))
    top1 = ckpt.load_checkpoint(out)['history'][-1]['val_top1']
    if not done or not os.path.isfile(path):   # weights trained now: never an older backbone
        add_to_manifest(out, [BACKBONE_NAME])
        if convert.main(convert_command(s, pretraining)[3:]) != 0:
            raise RuntimeError('converting %s failed' % out)
    return path, top1


def finetune_config(s, arm, seed, backbone):
    norm, conv, _ = ARMS[arm]
    out = os.path.join(s.root, 'finetune', '%s_seed%d' % (arm, seed))
    # COCOeval once, after the last epoch (evaluate='every' trains the same weights, slower).
    cfg = replace(DetectionConfig(**{'evaluate': 'last', **s.finetune}), norm=norm, conv=conv,
                  seed=seed, out_dir=out, pretrained_backbone=backbone, progress=s.progress,
                  num_groups=NUM_GROUPS, depth=BACKBONE_DEPTH)
    cfg.resume = ckpt.has_checkpoint(out)
    cfg.overwrite = not cfg.resume
    return cfg


def planned(s):
    unknown = [arm for arm in s.arms if arm not in ARMS]
    if unknown:
        raise ValueError('unknown arm(s) %s; choose from %s' % (unknown, ', '.join(ARMS)))
    return [(arm, seed) for arm in s.arms for seed in s.seeds]


def rows_of(s, rows):
    """The rows of ``rows`` made with this comparison's settings (a row of an older CSV
    without the fingerprint column matches nothing)."""
    stamp = fingerprint(s)
    return [r for r in rows if r.get('settings') == stamp]


def run_comparison(s, stage='all', log=print):
    """Runs what ``root/runs.csv`` lacks for these settings; returns this comparison's rows.
    ``stage='pretrain'`` stops after the backbones. Every folder is checked before anything
    trains; only then is the root created (with its manifest)."""
    require_folder(s.root)
    wanted = planned(s)
    # A root of an older version (runs.csv without `settings`) is ours; a user's runs.csv there
    # is not ours to read or replace.
    adopt_legacy_table(s.root, ROOT_FILES, CSV_NAME, set(CSV_COLUMNS) - {'settings'})
    refuse_foreign(s.root, ROOT_FILES)
    csv_path = os.path.join(s.root, CSV_NAME)
    rows = read_csv(csv_path) if os.path.isfile(csv_path) else []
    done = {(r['arm'], int(r['seed'])) for r in rows_of(s, rows)}
    todo = [(arm, seed) for arm, seed in wanted if (arm, seed) not in done]
    other = sorted({(r['arm'], r['seed']) for r in rows} & {(a, str(k)) for a, k in todo})
    if other:
        log('runs.csv rows of %s were made with other settings: kept there, not reported; '
            'these runs train again' % ', '.join('%s seed %s' % o for o in other))
    arms = s.arms if stage == 'pretrain' else {arm for arm, _ in todo}
    pretrainings = sorted({ARMS[arm][2] for arm in arms} - {None})
    for pretraining in pretrainings:
        cfg = pretrain_config(s, pretraining)
        refuse_foreign(cfg.out_dir, [BACKBONE_NAME])
        check_run_dir(cfg.out_dir, cfg, run_identity(cfg.resolved(), 1))
    if stage != 'pretrain':
        for arm, seed in todo:
            cfg = finetune_config(s, arm, seed, '')
            check_run_dir(cfg.out_dir, cfg, _finetune_identity(cfg, s, arm))
    claim_out_dir(s.root, ROOT_FILES, overwrite=False)
    backbones = {}
    for pretraining in pretrainings:
        tic = time.time()
        backbones[pretraining] = pretrain(s, pretraining)
        log('pretrained %s backbone: val top-1 %.4f (%s, %.0f s)'
            % (pretraining, backbones[pretraining][1], backbones[pretraining][0],
               time.time() - tic))
    if stage == 'pretrain':
        return rows
    for arm, seed in todo:
        tic = time.time()
        path, top1 = backbones.get(ARMS[arm][2], ('', ''))
        cfg = finetune_config(s, arm, seed, path)
        summary = run(cfg)
        row = dict(arm=arm, norm=cfg.norm, pretrained=path, seed=seed, settings=fingerprint(s),
                   pretrain_val_top1=top1, epochs=cfg.epochs, num_train=cfg.num_train,
                   seconds=round(time.time() - tic, 1), **summary['final'])
        # Read again: a second process on this root (other arms or seeds, started once the
        # backbones exist) may have added rows since; they stay.
        rows = (read_csv(csv_path) if os.path.isfile(csv_path) else []) + [row]
        write_csv(csv_path, rows, CSV_COLUMNS, fill_missing=True)   # older rows: no settings
        log('%s seed %d: bbox AP %.4f segm AP %.4f (%.0f s)'
            % (arm, seed, row['bbox_AP'], row['segm_AP'], row['seconds']))
    mine = rows_of(s, rows)
    write_report(s.root, mine)
    return mine


def _finetune_identity(cfg, s, arm):
    """The identity the fine-tune's checkpoint records: its backbone path is the one pretrain
    returns, backbone_path (or '' from scratch)."""
    backbone = backbone_path(s.root, ARMS[arm][2]) if ARMS[arm][2] else ''
    return run_identity(replace(cfg, pretrained_backbone=backbone), 1)


def summarize(rows):
    """{arm: {column: (mean, min, max, n)}} over the seeds, AP in percent, plus the arm's
    'minutes' per fine-tune (the same form) and 'pretrain_val_top1' (its backbone's, shared by
    the seeds; None for an arm trained from scratch)."""
    table = {}
    for arm in ARMS:
        mine = [r for r in rows if r['arm'] == arm]
        if mine:
            table[arm] = {c: _spread([100 * float(r[c]) for r in mine]) for c in AP_COLUMNS}
            table[arm]['minutes'] = _spread([float(r['seconds']) / 60 for r in mine])
            top1 = mine[0]['pretrain_val_top1']
            table[arm]['pretrain_val_top1'] = float(top1) if top1 not in ('', None) else None
    return table


def _spread(values):
    return float(np.mean(values)), float(np.min(values)), float(np.max(values)), len(values)


# Detectron's COCO figures for the same comparison (Wu & He 2018, Table 4: Mask R-CNN
# R-50-FPN, 2x schedule, ImageNet-pretrained backbones): arm -> (box AP, mask AP).
DETECTRON_COCO = {'bn_star': (38.6, 34.5), 'gn': (40.3, 35.7)}
# mmdetection's, GN against GN+WS (configs/gn/README.md: R-50-FPN (d) 2x; configs/gn+ws/
# README.md: mask_rcnn_r50_fpn_gn_ws-all_2x_coco): arm -> (box AP, mask AP).
MMDETECTION_COCO = {'gn': (40.2, 36.4), 'gn_ws': (40.6, 36.6)}
# The report's per-seed differences: (arm, arm it is compared with, label).
DIFFERENCES = (('gn', 'bn_star', 'GN - BN*'), ('gn_ws', 'gn', 'GN+WS - GN'))


def write_report(root, rows):
    """comparison.md: AP per arm (mean, min-max over seeds), GN - BN* and GN+WS - GN per seed
    pair, and Detectron's and mmdetection's COCO figures for the same arms."""
    table = summarize(rows)
    lines = ['| arm | seeds | bbox AP | bbox AP50 | segm AP | segm AP50 | backbone val top-1 '
             '| min per fine-tune |', '|---|---|---|---|---|---|---|---|']
    for arm, stats in table.items():
        cells = ['%.1f (%.1f-%.1f)' % stats[c][:3]
                 for c in ('bbox_AP', 'bbox_AP50', 'segm_AP', 'segm_AP50')]
        top1 = stats['pretrain_val_top1']
        pretrained = 'scratch' if top1 is None else '%.1f %%' % (100 * top1)
        lines.append('| %s | %d | %s | %s | %.1f |' % (arm, stats['bbox_AP'][3], ' | '.join(cells),
                                                        pretrained, stats['minutes'][0]))
    by_seed = {(r['arm'], int(r['seed'])): r for r in rows}
    for arm, other, label in DIFFERENCES:
        diffs = {c: [100 * (float(by_seed[arm, k][c]) - float(by_seed[other, k][c]))
                     for a, k in by_seed if a == arm and (other, k) in by_seed]
                 for c in ('bbox_AP', 'segm_AP')}
        if diffs['bbox_AP']:
            lines.append('')
            for c, values in diffs.items():
                mean, low, high, n = _spread(values)
                lines.append('%s %s: %+.1f (per seed %s; %d seeds)'
                             % (label, c, mean, ', '.join('%+.1f' % v for v in values), n))
    (bn_box, bn_mask), (gn_box, gn_mask) = DETECTRON_COCO['bn_star'], DETECTRON_COCO['gn']
    lines += ['', "Detectron on COCO (R-50-FPN Mask R-CNN, 2x, ImageNet-pretrained): BN* %.1f box "
              "/ %.1f mask AP, GN %.1f / %.1f (GN - BN* %+.1f / %+.1f)."
              % (bn_box, bn_mask, gn_box, gn_mask, gn_box - bn_box, gn_mask - bn_mask)]
    if 'gn_ws' in table:
        (gn_box, gn_mask), (ws_box, ws_mask) = MMDETECTION_COCO['gn'], MMDETECTION_COCO['gn_ws']
        lines += ['', "mmdetection on COCO (R-50-FPN Mask R-CNN, 2x, ImageNet-pretrained): GN "
                  "%.1f box / %.1f mask AP, GN+WS %.1f / %.1f (GN+WS - GN %+.1f / %+.1f)."
                  % (gn_box, gn_mask, ws_box, ws_mask, ws_box - gn_box, ws_mask - gn_mask)]
    text = '\n'.join(lines) + '\n'
    atomic_write_text(os.path.join(root, REPORT_NAME), text)
    return text
