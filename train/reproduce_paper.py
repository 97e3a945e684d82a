#!/usr/bin/env python
"""Reproduce the GN paper's Tables 1-3 (norm methods, batch size, groups) on the embedded real
MNIST-5k, offline on CPU. Writes <out>/runs.csv (one row per run), tables.md and PNG plots;
run it again to resume a half-done study (finished runs are skipped).

  python train/reproduce_paper.py                       # the full study -> results/
  python train/reproduce_paper.py --quick --out /tmp/q  # a minute-long smoke version
  python train/reproduce_paper.py --tables 2 --seeds 0,1,2,3,4

The study logic (grid, runs, resume, tables, plots) lives in the gn_mxnet.study package.
"""
import argparse
import os
import time

from gn_mxnet.study.protocol import TABLES
from gn_mxnet.utils import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
positive_ints = cli.int_list()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default=os.path.join(REPO_ROOT, 'results'), help='output folder')
    p.add_argument('--tables', type=cli.int_list(choices=TABLES), default=TABLES,
                   help='which tables, e.g. 1,2')
    p.add_argument('--seeds', type=cli.int_list(cli.non_negative_int), default=(0, 1, 2),
                   help='seeds of every cell')
    p.add_argument('--epochs', type=cli.positive_int, default=3,
                   help='epochs of every run (all batches)')
    p.add_argument('--train-subset', type=cli.non_negative_int, default=0,
                   help='fixed random n of the 4000 train images (0: all)')
    p.add_argument('--base-lr', type=cli.positive_float, default=0.8,
                   help='lr per 256 images (lr = base·B/256)')
    p.add_argument('--batch-sizes', type=positive_ints, default=(32, 16, 8, 4, 2))
    p.add_argument('--groups', type=positive_ints, default=(16, 8, 4, 2, 1))
    p.add_argument('--group-sizes', type=positive_ints, default=(16, 8, 4, 2, 1),
                   help='channels per group of the Table 3 variants')
    p.add_argument('--network', default='resnet8_small',
                   help='a gn_mxnet.models small-image ResNet (16/32/64 wide)')
    p.add_argument('--image-size', type=cli.positive_int, default=14,
                   help='MNIST average-pooled to this size (28: the original digits)')
    p.add_argument('-j', '--jobs', type=cli.positive_int, default=2,
                   help='runs trained in parallel')
    p.add_argument('--quick', action='store_true',
                   help='smoke version: 1 seed, 1 epoch on 256 images, batches 32 and 4, '
                        'G 8 and 1, D 4 and 1')
    p.add_argument('--no-bn-statistics', dest='bn_statistics', action='store_false',
                   help='skip the BN diagnostic (BN at batch 32 and 2: moving vs re-estimated '
                        'vs per-batch statistics; bn_statistics.md)')
    p.add_argument('--no-resume', dest='resume', action='store_false',
                   help='ignore (and overwrite) the runs already in <out>/runs.csv')
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_subset = (0,), 1, 256
        args.batch_sizes, args.groups, args.group_sizes = (32, 4), (8, 1), (4, 1)
        args.bn_statistics = False
    return args


def main(argv=None):
    args = parse_args(argv)
    from gn_mxnet.study import bn_statistics
    from gn_mxnet.study.protocol import StudySettings
    from gn_mxnet.study.runner import run_study
    settings = StudySettings(out_dir=args.out, tables=args.tables, seeds=args.seeds,
                             epochs=args.epochs, train_subset=args.train_subset or None,
                             base_lr=args.base_lr, image_size=args.image_size,
                             network=args.network,
                             batch_sizes=args.batch_sizes,
                             groups=args.groups, group_sizes=args.group_sizes, jobs=args.jobs,
                             resume=args.resume)
    start = time.time()
    run_study(settings)
    if args.bn_statistics and 2 in args.tables:
        path = os.path.join(args.out, bn_statistics.CSV_NAME)
        if args.resume and os.path.exists(path):
            print(f"BN diagnostic already in {path}")
        else:
            bn_statistics.check(settings, train_batches=(max(args.batch_sizes),
                                                    min(args.batch_sizes)),
                           seeds=args.seeds)
    print(f"study done in {time.time() - start:.0f} s; tables in "
          f"{os.path.join(args.out, 'tables.md')}")


if __name__ == '__main__':
    main()
