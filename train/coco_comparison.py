#!/usr/bin/env python
"""GN vs BN* Mask R-CNN on the embedded garments: pretrain ResNet-50-GN, its BN twin and its
GN+WS twin on Fashion-MNIST, convert them, fine-tune GN, BN* (frozen), GN from scratch and GN+WS
per seed, and write COCO AP to OUT_DIR/runs.csv and OUT_DIR/comparison.md. Stopped, the same
command resumes; rows already in runs.csv with the same settings are not trained again.

    python train/coco_comparison.py                      # everything, 2 seeds
    python train/coco_comparison.py --stage pretrain     # only the pretrained backbones
    python train/coco_comparison.py --arms gn_ws         # one arm (and its pretraining)

The library code is gn_mxnet.detection.comparison; this script only parses arguments.
"""
import sys
import warnings

from gn_mxnet.utils.threads import use_every_core

use_every_core()   # before MXNet starts: it fixes its thread count then (gn_mxnet.utils.threads)
from gn_mxnet.detection.comparison import ARMS, DEFAULT_ROOT, ComparisonSettings, run_comparison
from gn_mxnet.detection.engine import DetectionConfig
from gn_mxnet.utils import cli

INTERRUPTED = ('interrupted; the same command resumes: finished runs are kept, and a stopped '
               'pretraining continues from its last finished epoch')


def parse_args(argv=None):
    d = ComparisonSettings()
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out-dir', default=DEFAULT_ROOT,
                   help='the pretrained backbones, the fine-tuned runs, runs.csv and '
                        'comparison.md')
    p.add_argument('--stage', default='all', choices=('all', 'pretrain'),
                   help="pretrain: only the pretrained backbones of --arms' arms")
    p.add_argument('--arms', default=','.join(d.arms),
                   help='comma-separated, from %s' % ', '.join(ARMS))
    p.add_argument('--seeds', type=cli.int_list(cli.non_negative_int), default=d.seeds,
                   help='fine-tuning seeds, comma-separated')
    p.add_argument('--pretrain-epochs', type=cli.positive_int, default=d.pretrain_epochs)
    p.add_argument('--pretrain-subset', type=cli.positive_int, default=d.pretrain_subset,
                   help='Fashion-MNIST training images the classifier sees')
    p.add_argument('--finetune-epochs', type=cli.positive_int,
                   help="detector epochs (default: train_coco.py's, %d)" % DetectionConfig().epochs)
    p.add_argument('--no-progress', action='store_true', help='no tqdm bars')
    args = p.parse_args(argv)
    with cli.usage_errors(p):
        args.arms = tuple(a for a in args.arms.split(',') if a)
        unknown = [a for a in args.arms if a not in ARMS]
        if unknown or not args.arms:
            raise ValueError('--arms: unknown %s; choose from %s' % (unknown, ', '.join(ARMS)))
        cli.output_folder(args.out_dir, '--out-dir')
    return args


def main(argv=None):
    warnings.filterwarnings('ignore', message='.*already initialized.*')
    args = parse_args(argv)
    finetune = {} if args.finetune_epochs is None else {'epochs': args.finetune_epochs}
    settings = ComparisonSettings(root=args.out_dir, arms=args.arms, seeds=args.seeds,
                                  pretrain_epochs=args.pretrain_epochs,
                                  pretrain_subset=args.pretrain_subset, finetune=finetune,
                                  progress=not args.no_progress)
    return run_comparison(settings, stage=args.stage)


if __name__ == '__main__':
    sys.exit(cli.run(main, interrupted=INTERRUPTED))
