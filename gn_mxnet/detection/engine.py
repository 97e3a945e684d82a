"""Mask R-CNN training and evaluation: ``run(DetectionConfig(...)) -> summary dict``.

Per epoch: SGD over the training images (Detectron's losses, as gluoncv computes them), then
COCOeval bbox + segm on the validation images, one CSV row, PNG curves and an atomic checkpoint.
The untrained model is evaluated first (row epoch 0), so every log shows where training started
(``evaluate='last'`` skips that and the evaluations before the final epoch).
A run resumed with ``resume=True`` continues after the last completed epoch.

Reproducible: the image order of epoch e depends only on (seed, e), and each training image's
random draws (flip, RPN anchor sampling, in gluoncv's transform) only on (seed, e, image index),
whichever process loads it: with --loader-processes the pool hands images to forked workers in
no fixed order, and each worker inherited the same NumPy state, so the draws an image got
depended on scheduling (the same command gave other losses and AP). The network's own draws
(R-CNN RoI sampling) use MXNet's generator, re-seeded from (seed, e) in the training process.
"""
import random
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from mxnet import autograd, gluon
from gluoncv.data.batchify import MaskRCNNTrainBatchify
from gluoncv.data.transforms.presets.rcnn import MaskRCNNDefaultTrainTransform

from ..training import checkpoint as ckpt
from ..training.config import KV_STORES as CLASSIFIER_KV_STORES
from ..training.distributed import (broadcast_parameters, connect, local_first, make_trainer,
                                    share_state)
from ..training.reporting import SUMMARY_NAME, write_summary
from ..training.rundir import claim_out_dir, config_identity, run_identity, start_run
from ..training.runtime import epoch_seed, seed_everything
from ..training.schedule import scheduled_lr
from ..utils.progress import progress
from . import coco_data, evaluation, report
from .losses import MaskRCNNLoss
from .model import build_mask_rcnn, check_conv, trainable_parameters


# The detector's kvstores: the classifier's and NCCL (one machine, several GPUs).
KV_STORES = CLASSIFIER_KV_STORES + ('nccl',)


@dataclass
class DetectionConfig:
    coco_root: str = ''          # '' = the embedded set
    embedded: str = 'fashion'    # the embedded set's source (coco_data.EMBEDDED_SOURCES)
    cache_dir: str = ''          # embedded set's cache ('' = ~/.cache/gn_mxnet/embedded_coco)
    num_train: int = 160         # embedded set size
    num_val: int = 40
    depth: int = 50
    norm: str = 'gn'             # 'gn' (Detectron GN recipe) or 'bn' (frozen BN*)
    conv: str = 'plain'          # 'ws': weight-standardized convs where a GN follows (GN+WS)
    num_groups: int = 32
    backend: str = 'native'
    pretrained_backbone: str = ''
    image_short: int = 128
    image_max_size: int = 128
    small: bool = True           # reduced proposal/RoI budgets (CPU runs)
    gpus: str = ''
    kv_store: str = 'device'
    loader_processes: int = 0    # data-loading processes (0 = in the training process)
    batch_size: int = 2          # images per device
    epochs: int = 2
    lr: float = 0.02             # Detectron's (at 16 images); 0 = 0.00125 x total batch
    lr_decay: float = 0.1
    lr_decay_epochs: tuple = ()
    warmup_iters: int = 20
    warmup_factor: float = 1.0 / 3
    momentum: float = 0.9
    wd: float = 1e-4
    train_limit: int = 0         # 0 = every training image
    val_limit: int = 0           # 0 = every validation image
    seed: int = 0
    out_dir: str = 'runs/coco'
    resume: bool = False         # continue the run in out_dir from its checkpoint
    overwrite: bool = False      # replace the run in out_dir (its files are deleted)
    progress: bool = True
    hybridize: bool = True
    evaluate: str = 'every'      # EVALUATE's keys: when COCOeval runs

    def __post_init__(self):
        if self.evaluate not in EVALUATE:
            raise ValueError('evaluate=%r: choose from %s' % (self.evaluate, ', '.join(EVALUATE)))
        check_conv(self.norm, self.conv)   # before the data set is made

    def identity(self):
        """The settings compared on resume: all but BOOKKEEPING (see config_identity; conv
        only where it is not 'plain', rundir.LATER_SETTINGS)."""
        return config_identity(self, BOOKKEEPING)


# When COCOeval runs. Evaluation draws nothing from the training's generators (each epoch
# re-seeds them), so 'last' trains the same weights as 'every' and only saves its ~40-50 s per
# skipped evaluation (the comparison's fine-tunes use it).
EVALUATE = {'every': 'the untrained model (epoch 0) and after every epoch',
            'last': 'only after the final epoch'}


# The fields that do not change what a run computes: where it writes and caches the embedded
# set (generated from its spec), whether it continues or replaces the run there, whether it shows
# bars, when it evaluates, and its length: the schedule (warm-up iterations, decay epochs) does not depend on
# `epochs`, so a finished run can be extended with --resume. Every other field is compared.
BOOKKEEPING = ('out_dir', 'cache_dir', 'resume', 'overwrite', 'progress', 'epochs', 'evaluate')
BEST_PARAMS, LAST_PARAMS = 'best.params', 'last.params'
# A folder holding any of these holds a run (a new run there needs resume or overwrite).
RUN_FILES = (ckpt.CHECKPOINT_NAME, ckpt.LEGACY_CHECKPOINT_NAME, BEST_PARAMS, LAST_PARAMS,
             report.LOG_NAME, report.CURVES_NAME, SUMMARY_NAME)


def load_datasets(cfg):
    if cfg.coco_root:
        return coco_data.real_coco(cfg.coco_root)
    spec = coco_data.EmbeddedSpec(source=cfg.embedded, num_train=cfg.num_train,
                                  num_val=cfg.num_val, canvas=max(cfg.image_short, 32), seed=0)
    return coco_data.embedded_coco(cfg.cache_dir or None, spec)


def base_lr(cfg, num_devices):
    """Detectron's linear rule (0.02 for 16 images) unless --lr is given; set every step."""
    return cfg.lr if cfg.lr > 0 else 0.00125 * cfg.batch_size * num_devices


def lr_at(cfg, lr0, iteration, iters_per_epoch):
    """Linear warm-up over warmup_iters from warmup_factor * lr0, then x lr_decay from the start
    of each (1-based) decay epoch; `iteration` counts from 0 over the whole run."""
    return scheduled_lr(lr0, iteration, mode='step', warmup_steps=cfg.warmup_iters,
                        warmup_start=cfg.warmup_factor, decay=cfg.lr_decay,
                        decay_steps=[(e - 1) * iters_per_epoch for e in cfg.lr_decay_epochs])


def epoch_batches(num_images, images_per_batch, seed, epoch, limit=0, num_workers=1, rank=0):
    """This process's index lists of one epoch; the order is a function of (seed, epoch) only.

    With several processes (Horovod ranks) each takes every num_workers-th batch, so step i of
    the job covers the images of one process's step i with num_workers times the batch; all
    take the same number of batches (each step's allreduce waits for every rank).
    """
    count = min(limit, num_images) if limit else num_images
    order = np.random.RandomState([seed, epoch]).permutation(num_images)[:count]
    steps = count // (images_per_batch * num_workers)
    if steps == 0:
        raise ValueError('%d training image(s) cannot fill a batch of %d on each of %d worker(s)'
                         % (count, images_per_batch, num_workers))
    batches = [order[i:i + images_per_batch].tolist()
               for i in range(0, count - images_per_batch + 1, images_per_batch)]
    return batches[rank::num_workers][:steps]


def sample_seed(seed, epoch, index):
    """The seed of one training image's random draws in epoch ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(gluon.data.Dataset):
    """``transform(*dataset[i])`` with NumPy's and Python's generators seeded from
    (seed, epoch, i) first, so an image's flip and anchor samples do not depend on which
    loader process draws it, nor on what that process drew before."""

    def __init__(self, dataset, transform, seed, epoch):
        self._dataset, self._transform = dataset, transform
        self._seed, self._epoch = seed, epoch

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        seed = sample_seed(self._seed, self._epoch, index)
        np.random.seed(seed)
        random.seed(seed)
        return self._transform(*self._dataset[index])


def _make_trainer(cfg, net, job):
    """The trainer of the trainable parameters, the classifier's way (states kept in this
    process, so checkpoints save them; gradients averaged over the Horovod ranks)."""
    params = trainable_parameters(net)
    for param in net.collect_params().values():
        if param.name not in params:
            param.grad_req = 'null'
    return make_trainer(params, 'sgd', {'learning_rate': 0.0, 'wd': cfg.wd,
                                        'momentum': cfg.momentum}, cfg.kv_store, job)


def train_epoch(cfg, net, trainer, loader, batches, contexts, loss_fn, lr0, epoch):
    sums, steps = {}, 0
    iteration = (epoch - 1) * len(batches)
    for batch in progress(loader, cfg.progress, total=len(batches), desc='epoch %d' % epoch):
        trainer.set_learning_rate(lr_at(cfg, lr0, iteration, len(batches)))
        # The batchify gives each field as a list of per-device shards (a bare NDArray for 1).
        fields = [f if isinstance(f, (list, tuple)) else [f] for f in batch]
        shards = [[part.as_in_context(ctx) for part in parts]
                  for parts, ctx in zip(zip(*fields), contexts)]
        with autograd.record():
            losses = [loss_fn(net, *shard) for shard in shards]
        autograd.backward([parts['total'] for parts in losses])
        # Each device's loss is already a mean over its samples; average all devices (and,
        # in the trainer, all Horovod ranks).
        trainer.step(len(contexts))
        for parts in losses:
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.asscalar()) / len(contexts)
        steps += 1
        iteration += 1
        if not np.isfinite(sums['total']):
            raise FloatingPointError('the loss became %r at epoch %d step %d; lower --lr'
                                     % (sums['total'], epoch, steps))
    return {key: value / steps for key, value in sums.items()}, iteration


def _rehybridize(cfg, net):
    """A cached graph has one call signature; training (3 inputs) and inference (1) each
    rebuild it, as gluoncv's scripts do."""
    if cfg.hybridize:
        net.hybridize(static_alloc=True)


def _evaluate(cfg, net, val_set, contexts, epoch):
    _rehybridize(cfg, net)
    tic = time.time()
    result = evaluation.evaluate(net, val_set, contexts, cfg.image_short, cfg.image_max_size,
                                 limit=cfg.val_limit or None,
                                 progress=lambda it: progress(it, cfg.progress, desc='eval %d' % epoch))
    result['seconds'] = time.time() - tic
    return result


def run(cfg: DetectionConfig) -> dict:
    wall_start = time.time()
    job = connect(cfg.kv_store)
    contexts = job.contexts(cfg.gpus)
    out_dir, rank, num_workers = cfg.out_dir, job.rank, job.size
    if not job.writes:   # one terminal shows rank 0's bars
        cfg = replace(cfg, progress=False)
    identity = run_identity(cfg, num_workers)
    state = None
    if job.writes:   # rank 0 alone reads and writes the out-dir
        state = start_run(out_dir, RUN_FILES, identity, resume=cfg.resume,
                          overwrite=cfg.overwrite)
    seed_everything(cfg.seed)
    # The embedded set is generated into the cache by one process per host, read by the others.
    train_set, val_set = local_first(job, lambda: load_datasets(cfg))
    classes = list(train_set.classes)
    net = build_mask_rcnn(classes, depth=cfg.depth, norm=cfg.norm, num_groups=cfg.num_groups,
                          backend=cfg.backend, pretrained_backbone=cfg.pretrained_backbone,
                          per_device_batch_size=cfg.batch_size, image_short=cfg.image_short,
                          image_max_size=cfg.image_max_size, small=cfg.small, conv=cfg.conv)
    trainer = _make_trainer(cfg, net, job)
    lr0 = base_lr(cfg, len(contexts) * num_workers)
    history, start_epoch, best = [], 0, {'bbox_AP': -1.0, 'epoch': 0}
    state = share_state(job, state)
    if state is not None:
        start_epoch = ckpt.restore_checkpoint(state, net=net, trainer=trainer)
        history, best = state['history'], state['best']
    net.collect_params().reset_ctx(contexts)
    broadcast_parameters(job, net.collect_params())   # rank 0's, before any forward pass
    # Both deep-copy parts of the net (anchor generator, features): before hybridize.
    transform = MaskRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                              multi_stage=True, mean=train_set.MEAN,
                                              std=train_set.STD)
    batchify = MaskRCNNTrainBatchify(net, len(contexts))
    if job.writes:
        claim_out_dir(out_dir, RUN_FILES, overwrite=cfg.overwrite)   # built: now it may write

    # Rank 0 evaluates and writes; the other ranks hold the same weights.
    if start_epoch == 0 and cfg.evaluate == 'every' and job.writes:  # the untrained model
        result = _evaluate(cfg, net, val_set, contexts, 0)
        history.append(report.epoch_row(0, 0.0, {}, result, 0.0))
        print(result['report'])
    loss_fn = MaskRCNNLoss()
    images_per_batch = cfg.batch_size * len(contexts)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        _rehybridize(cfg, net)
        tic = time.time()
        seed_everything(epoch_seed(cfg.seed, epoch))  # the RoI samples of epoch e, on resume too
        batches = epoch_batches(len(train_set), images_per_batch, cfg.seed, epoch,
                                cfg.train_limit, num_workers, rank)
        loader = gluon.data.DataLoader(SeededSamples(train_set, transform, cfg.seed, epoch),
                                       batch_sampler=batches,
                                       batchify_fn=batchify,
                                       num_workers=cfg.loader_processes)
        losses, iteration = train_epoch(cfg, net, trainer, loader, batches, contexts, loss_fn,
                                        lr0, epoch)
        train_seconds = time.time() - tic
        ckpt.require_finite(net, 'after epoch %d' % epoch)
        result = None
        if job.writes and (cfg.evaluate == 'every' or epoch == cfg.epochs):
            result = _evaluate(cfg, net, val_set, contexts, epoch)
            print(result['report'])
        history.append(report.epoch_row(epoch, lr_at(cfg, lr0, iteration - 1, len(batches)), losses,
                                        result, train_seconds))
        if not job.writes:
            continue
        if result is not None and result['bbox']['AP'] > best['bbox_AP']:
            best = {'bbox_AP': result['bbox']['AP'], 'epoch': epoch}
            ckpt.save_parameters(net, os.path.join(out_dir, BEST_PARAMS))
        ckpt.save_parameters(net, os.path.join(out_dir, LAST_PARAMS))
        report.write_log(out_dir, history)
        ckpt.save_checkpoint(out_dir, net=net, trainer=trainer, epoch=epoch, best=best,
                             history=history, config=identity)
    summary = report.summary(cfg, history, best, len(train_set), len(val_set), contexts,
                             time.time() - wall_start)
    summary.update(config=asdict(cfg), out_dir=out_dir, lr0=lr0, num_workers=num_workers,
                   rank=rank)
    if job.writes:
        report.write_log(out_dir, history)
        report.plot(out_dir, history, title='Mask R-CNN R-%d-FPN, %s%s'
                    % (cfg.depth, cfg.norm, '+' + cfg.conv if cfg.conv != 'plain' else ''))
        write_summary(out_dir, summary)
    return summary
