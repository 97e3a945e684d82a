#!/usr/bin/env python
"""Mask R-CNN ResNet-50/101-FPN on gluoncv with GroupNorm (Detectron's GN recipe) or frozen BN*.

With no arguments it trains offline on the embedded garment set (real Fashion-MNIST garments on
128 px canvases, generated once into a cache folder), from the ResNet-50-GN backbone that
train/coco_comparison.py pretrains when it is there (else from scratch, saying how to make it),
and prints COCO bbox and segm AP of the untrained and the trained model. Real COCO 2017,
8 GPUs, Detectron's 2x schedule:

    python train/train_coco.py --coco-root ~/datasets/coco --gpus 0,1,2,3,4,5,6,7 \\
        --kv-store nccl --loader-processes 8 --batch-size 2 --lr 0.02 --epochs 24 \\
        --lr-decay-epochs 16,22 --warmup-iters 1000 --image-short 800 --image-max-size 1333 \\
        --full-budgets --pretrained-backbone R-50-GN.pkl --out-dir runs/mask_rcnn_R50_FPN_gn_2x
"""
import sys
import warnings

from gn_mxnet.utils.threads import use_every_core

use_every_core()   # before MXNet starts: it fixes its thread count then (gn_mxnet.utils.threads)
from gn_mxnet.detection.coco_data import EMBEDDED_SOURCES
from gn_mxnet.detection.comparison import resolve_backbone
from gn_mxnet.detection.engine import EVALUATE, KV_STORES, DetectionConfig, run
from gn_mxnet.detection.model import DETECTION_NORMS, check_conv
from gn_mxnet.models.convs import CONVS
from gn_mxnet.operator.validation import BACKENDS
from gn_mxnet.training.distributed import check_horovod
from gn_mxnet.training.schedule import parse_decay_epochs
from gn_mxnet.utils import cli

# A checkpoint is written after every epoch, so an interrupted run loses the epoch under way.
INTERRUPTED = ('interrupted; the same command with --resume continues from the last finished '
               'epoch, if one finished')


def parse_args(argv=None):
    d = DetectionConfig()
    p = cli.ArgumentParser(description=__doc__.split('\n')[0])
    data = p.add_argument_group('data')
    data.add_argument('--coco-root', default=d.coco_root,
                      help='COCO 2017 folder (annotations/instances_{train,val}2017.json, '
                           'train2017/, val2017/); omitted: the embedded set')
    data.add_argument('--embedded', default=d.embedded, choices=tuple(EMBEDDED_SOURCES),
                      help='the embedded set: Fashion-MNIST garments or MNIST-5k digits')
    data.add_argument('--cache-dir', default=d.cache_dir,
                      help='where the embedded set is written once '
                           '(default ~/.cache/gn_mxnet/embedded_coco)')
    data.add_argument('--num-train', type=cli.positive_int, default=d.num_train,
                      help='embedded set: training images')
    data.add_argument('--num-val', type=cli.positive_int, default=d.num_val,
                      help='embedded set: validation images')
    data.add_argument('--train-limit', type=cli.non_negative_int, default=d.train_limit,
                      help='train on at most this many images per epoch (0 = all)')
    data.add_argument('--val-limit', type=cli.non_negative_int, default=d.val_limit,
                      help='evaluate on the first N validation images (0 = all)')
    model = p.add_argument_group('model')
    model.add_argument('--depth', type=int, default=d.depth, choices=(50, 101))
    model.add_argument('--norm', default=d.norm, choices=DETECTION_NORMS,
                       help='gn: GroupNorm in backbone, FPN, 4conv1fc box head and mask head; '
                            'bn: frozen BatchNorm (BN*) backbone, no norm in FPN/heads')
    model.add_argument('--conv', default=d.conv, choices=CONVS,
                       help='ws: weight-standardized convs wherever a GN follows (backbone, '
                            "FPN, box and mask head convs: mmdetection's GN+WS); needs --norm gn")
    model.add_argument('--num-groups', type=cli.positive_int, default=d.num_groups)
    model.add_argument('--gn-backend', default=d.backend, choices=BACKENDS,
                       help='GroupNorm implementation')
    model.add_argument('--pretrained-backbone', default='auto',
                       help='backbone weights gn_mxnet.convert reads, e.g. Detectron '
                            'R-50-GN.pkl (nothing is downloaded); auto: the Fashion-MNIST '
                            'pretraining of train/coco_comparison.py for --norm and --conv, '
                            'when it is there; none: from scratch')
    model.add_argument('--image-short', type=cli.positive_int, default=d.image_short)
    model.add_argument('--image-max-size', type=cli.positive_int, default=d.image_max_size)
    model.add_argument('--full-budgets', action='store_true',
                       help="Detectron's proposal/RoI budgets (2000 proposals, 512 RoIs per "
                            'image); default: reduced budgets for small CPU runs')
    opt = p.add_argument_group('training')
    opt.add_argument('--gpus', default=d.gpus, help="GPU ids, e.g. 0,1,2,3; none ('') = CPU; "
                                                    "horovod: each host's GPUs, one per rank")
    opt.add_argument('--kv-store', default=d.kv_store, choices=KV_STORES,
                     help='horovod: this process is one rank of a job started by horovodrun '
                          'or mpirun (docs/multi_machine.md), gradients averaged over the '
                          'ranks, rank 0 writes the out-dir')
    # -j as gluoncv's train_mask_rcnn.py (-j/--num-workers): data-loading workers.
    opt.add_argument('-j', '--loader-processes', type=cli.non_negative_int,
                     default=d.loader_processes,
                     help='data-loading workers: processes (0 = in the training process; real '
                          'COCO: 4 or more)')
    opt.add_argument('--batch-size', type=cli.positive_int, default=d.batch_size,
                     help='images per device (1 or 2 in Detectron)')
    opt.add_argument('--epochs', type=cli.positive_int, default=d.epochs)
    # 0 is allowed: it asks for Detectron's linear rule, 0.00125 x the total batch.
    opt.add_argument('--lr', type=cli.non_negative_float, default=d.lr,
                     help="learning rate (Detectron's 0.02 is for a total batch of 16 images); "
                          "0 = 0.00125 x total batch (batch-size x devices x Horovod ranks)")
    opt.add_argument('--lr-decay', type=cli.positive_float, default=d.lr_decay)
    # --lr-decay-epoch: gluoncv's spelling.
    opt.add_argument('--lr-decay-epochs', '--lr-decay-epoch', dest='lr_decay_epochs',
                     default=','.join(map(str, d.lr_decay_epochs)),
                     help='comma-separated epochs where lr is multiplied by --lr-decay')
    opt.add_argument('--warmup-iters', type=cli.non_negative_int, default=d.warmup_iters)
    opt.add_argument('--wd', type=cli.non_negative_float, default=d.wd,
                     help='weight decay (never on biases or GN/BN gamma and beta)')
    opt.add_argument('--momentum', type=cli.fraction, default=d.momentum)
    opt.add_argument('--seed', type=cli.non_negative_int, default=d.seed)
    run_group = p.add_argument_group('run')
    run_group.add_argument('--out-dir', default=d.out_dir)
    run_group.add_argument('--resume', action='store_true',
                           help='continue from --out-dir/checkpoint.npz')
    run_group.add_argument('--overwrite', action='store_true',
                           help='delete the run already in --out-dir and start afresh')
    run_group.add_argument('--no-progress', action='store_true', help='no tqdm bars')
    run_group.add_argument('--no-hybridize', action='store_true')
    run_group.add_argument('--evaluate', default=d.evaluate, choices=tuple(EVALUATE),
                           help='when COCO AP is computed: %s' % '; '.join(
                               '%s = %s' % kv for kv in EVALUATE.items()))
    args = p.parse_args(argv)
    with cli.usage_errors(p):
        parse_decay_epochs(args.lr_decay_epochs, allow_empty=True)
        cli.output_folder(args.out_dir, '--out-dir')
        check_conv(args.norm, args.conv)
        check_horovod(args.kv_store)   # installed, and started by horovodrun or mpirun
        if args.pretrained_backbone not in ('auto', 'none'):
            cli.existing_file(args.pretrained_backbone, '--pretrained-backbone')
    return args


def backbone_from_args(args):
    """(weight file or '', what the run starts from): 'auto' is the comparison's pretraining
    of a ResNet-50 for embedded garments only (its classes and pixels are theirs)."""
    if args.pretrained_backbone == 'auto' and (args.coco_root or args.embedded != 'fashion'
                                               or args.depth != 50):
        return '', 'backbone from scratch (auto: no pretraining for this data or depth)'
    return resolve_backbone(args.pretrained_backbone, args.norm, conv=args.conv)


def config_from_args(args, backbone=None):
    decay_epochs = tuple(parse_decay_epochs(args.lr_decay_epochs, allow_empty=True))
    if backbone is None:
        backbone = backbone_from_args(args)[0]
    return DetectionConfig(
        coco_root=args.coco_root, embedded=args.embedded, cache_dir=args.cache_dir,
        num_train=args.num_train, num_val=args.num_val, depth=args.depth, norm=args.norm,
        conv=args.conv,
        num_groups=args.num_groups, backend=args.gn_backend, pretrained_backbone=backbone,
        image_short=args.image_short, image_max_size=args.image_max_size,
        small=not args.full_budgets, gpus=args.gpus, kv_store=args.kv_store,
        loader_processes=args.loader_processes,
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, lr_decay=args.lr_decay,
        lr_decay_epochs=decay_epochs, warmup_iters=args.warmup_iters, momentum=args.momentum,
        wd=args.wd, train_limit=args.train_limit, val_limit=args.val_limit, seed=args.seed,
        out_dir=args.out_dir, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress,
        hybridize=not args.no_hybridize, evaluate=args.evaluate)


def main(argv=None):
    # gluoncv warns about every already-initialized backbone parameter; they are expected.
    warnings.filterwarnings('ignore', message='.*already initialized.*')
    args = parse_args(argv)
    backbone, message = backbone_from_args(args)
    print(message, flush=True)
    summary = run(config_from_args(args, backbone))
    if summary['rank'] != 0:   # rank 0 reports for the whole job
        return summary
    for name in ('untrained', 'final'):
        ap = summary[name]
        if ap is None:   # --evaluate last
            continue
        print('%-9s bbox AP %.4f (AP50 %.4f)   segm AP %.4f (AP50 %.4f)'
              % (name, ap['bbox_AP'], ap['bbox_AP50'], ap['segm_AP'], ap['segm_AP50']))
    print('wall time %.1f s; logs in %s' % (summary['wall_seconds'], summary['config']['out_dir']))
    return summary


if __name__ == '__main__':
    sys.exit(cli.run(main, interrupted=INTERRUPTED))
