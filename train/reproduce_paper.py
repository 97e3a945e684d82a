#!/usr/bin/env python
"""Reproduce the GN paper's Tables 1-3 (norm methods, batch size, groups) offline on CPU, on the
embedded real MNIST-5k or the full Fashion-MNIST (Debian's dataset-fashion-mnist). Writes
<out-dir>/runs.csv (one row per run), tables.md and PNG plots; run it again to resume a
half-done study (finished runs are skipped).

  python train/reproduce_paper.py                           # the full study -> results/
  python train/reproduce_paper.py --quick --out-dir /tmp/q  # a minute-long smoke version
  python train/reproduce_paper.py --tables 2 --seeds 0,1,2,3,4
  python train/reproduce_paper.py --dataset fashion-mnist   # -> results/fashion_mnist_study/

The study logic (grid, runs, resume, tables, plots) lives in the gn_mxnet.study package.
"""
import argparse
import os
import sys
import time

from gn_mxnet.study.protocol import DATASETS, TABLES
from gn_mxnet.utils import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
positive_ints = cli.int_list()
INTERRUPTED = ('interrupted; the same command resumes the study (the runs already in '
               '<out-dir>/runs.csv are kept)')
# What an option left out means, and what --quick makes of it instead: an option the user gives
# always wins over both (None below: the data set's protocol decides).
DEFAULTS = {'seeds': (0, 1, 2), 'epochs': None, 'train_subset': None, 'batch_sizes': None,
            'groups': (16, 8, 4, 2, 1), 'group_sizes': (16, 8, 4, 2, 1)}
QUICK = {'seeds': (0,), 'epochs': 1, 'train_subset': 256, 'batch_sizes': (32, 2),
         'groups': (8, 1), 'group_sizes': (4, 1)}
QUICK_VAL_SUBSET = 500   # --quick validates on this many images
PROTOCOL = 'gn_mxnet.study.protocol'   # DATASET_DEFAULTS: the data sets' own defaults
# The page whose study tables --update-docs rewrites when it is given without a page.
DOCS_PAGE = os.path.join(REPO_ROOT, 'docs', 'reproduction.md')
DEFAULT_OUT = {'mnist5k': 'results',
               'fashion-mnist': os.path.join('results', 'fashion_mnist_study')}


def study_option(parser, flag, name, help, **kwargs):
    """An option of DEFAULTS and QUICK whose help states both defaults: DEFAULTS' value or,
    where that is None, each data set's protocol's (cli.add_preset), and QUICK's."""
    quick = f'; with --quick: {cli.format_default(QUICK[name])}'
    if DEFAULTS[name] is None:
        return cli.add_preset(parser, flag, PROTOCOL, 'DATASET_DEFAULTS', name,
                              help=f'{help}; default per --dataset: %(preset)s{quick}', **kwargs)
    return parser.add_argument(
        flag, help=f'{help}; default: {cli.format_default(DEFAULTS[name])}{quick}', **kwargs)


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='mnist5k', choices=DATASETS,
                   help='fashion-mnist: Debian\'s dataset-fashion-mnist files')
    p.add_argument('--out-dir', default=None, help='output folder (default: %s)' % ', '.join(
        f'{folder}/ for {dataset}' for dataset, folder in DEFAULT_OUT.items()))
    p.add_argument('--tables', type=cli.int_list(choices=TABLES), default=TABLES,
                   help='which tables, e.g. 1,2')
    study_option(p, '--seeds', 'seeds', 'seeds of every cell',
                 type=cli.int_list(cli.non_negative_int))
    study_option(p, '--epochs', 'epochs', 'epochs of every run, all batches',
                 type=cli.positive_int)
    study_option(p, '--train-subset', 'train_subset',
                 'a fixed random n of the training images (0 or none: all)',
                 type=cli.non_negative_int)
    p.add_argument('--base-lr', type=cli.positive_float, default=0.8,
                   help='lr per 256 images (lr = base·B/256)')
    cli.add_preset(p, '--wd', PROTOCOL, 'DATASET_DEFAULTS', 'wd', type=cli.non_negative_float,
                   help='weight decay')
    study_option(p, '--batch-sizes', 'batch_sizes', 'per-device batches of Table 2',
                 type=positive_ints)
    study_option(p, '--groups', 'groups', 'groups of the Table 3 variants', type=positive_ints)
    study_option(p, '--group-sizes', 'group_sizes', 'channels per group of the Table 3 variants',
                 type=positive_ints)
    p.add_argument('--network', default='resnet8_small',
                   help='a gn_mxnet.models small-image ResNet (16/32/64 wide)')
    p.add_argument('--image-size', type=cli.positive_int, default=14,
                   help='images average-pooled to this size (28: the originals)')
    p.add_argument('--jobs', type=cli.positive_int, default=2,
                   help='runs trained in parallel (each in its own worker process)')
    p.add_argument('--threads', type=cli.positive_int, default=1,
                   help='OpenMP threads of every run (part of a run\'s identity: the digits '
                        'depend on it)')
    p.add_argument('--quick', action='store_true',
                   help=f'smoke version: the --quick values above, validated on '
                        f'{QUICK_VAL_SUBSET} images (options given win)')
    cli.add_preset(p, '--ws-arm', PROTOCOL, 'DATASET_DEFAULTS', 'ws_arm',
                   action=argparse.BooleanOptionalAction, default=None,
                   help="Table 2's GN+WS row: GN with weight-standardized convs at every batch")
    p.add_argument('--no-bn-statistics', dest='bn_statistics', action='store_false',
                   help='skip the BN diagnostic (the study\'s BN nets measured with moving, '
                        're-estimated and per-batch statistics)')
    p.add_argument('--no-resume', dest='resume', action='store_false',
                   help='ignore (and overwrite) the runs already in <out-dir>/runs.csv')
    p.add_argument('--update-docs', metavar='PAGE', nargs='?', const=DOCS_PAGE, default=None,
                   help='afterwards rewrite the study tables of this markdown page from their '
                        'results folders (given without PAGE: docs/reproduction.md)')
    args = p.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = os.path.join(REPO_ROOT, DEFAULT_OUT[args.dataset])
    with cli.usage_errors(p):
        cli.output_folder(args.out_dir, '--out-dir')
    for name, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv=None):
    args = parse_args(argv)
    from gn_mxnet.study.protocol import StudySettings
    from gn_mxnet.study.report import update_page
    from gn_mxnet.study.runner import run_study
    try:
        settings = StudySettings(
            out_dir=args.out_dir, dataset=args.dataset, tables=args.tables, seeds=args.seeds,
            epochs=args.epochs, train_subset=args.train_subset, base_lr=args.base_lr,
            wd=args.wd, image_size=args.image_size, network=args.network,
            batch_sizes=args.batch_sizes, groups=args.groups, group_sizes=args.group_sizes,
            jobs=args.jobs, threads=args.threads, resume=args.resume,
            val_subset=QUICK_VAL_SUBSET if args.quick else None,
            bn_diagnostic_images=200 if args.quick else 2000, ws_arm=args.ws_arm,
            bn_diagnostic_batches=None if args.bn_statistics else ())
    except ValueError as e:
        return cli.fail(e, 2)   # a setting the protocol refuses: a usage error
    start = time.time()
    run_study(settings)
    print(f"study done in {time.time() - start:.0f} s; tables in "
          f"{os.path.join(args.out_dir, 'tables.md')}")
    if args.update_docs:
        changed = update_page(args.update_docs)
        print(f"{args.update_docs}: {'updated' if changed else 'already up to date'}")


if __name__ == '__main__':
    sys.exit(cli.run(main, interrupted=INTERRUPTED))
