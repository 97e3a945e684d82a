"""The training job: `train(TrainConfig(...)) -> summary dict`, used by train/train_imagenet.py
and by every study that trains networks.

Determinism: weights are initialised from `seed`, and at the start of epoch e every random
source (MXNet, NumPy, Python) is re-seeded from (seed, e) and the data order is a function of
(seed, e). A run resumed from the checkpoint after epoch k therefore repeats exactly what the
uninterrupted run did in epochs k+1, k+2, ...
"""
import dataclasses
import os
import time

import numpy as np
from mxnet import autograd, gluon

from ..utils.progress import progress
from . import checkpoint as ckpt
from . import reporting
from .config import TrainConfig
from .data import make_data_source
from .distributed import broadcast_parameters, connect, make_trainer, share_state
from .metrics import EpochMeter, soft_targets
from .network import make_network, prepare_network
from .rundir import claim_out_dir, run_identity, start_run
from .runtime import epoch_seed, seed_everything
from .schedule import learning_rate
from .source import epoch_rng

BEST_PARAMS, LAST_PARAMS = 'best.params', 'last.params'
# A folder holding any of these holds a run (a new run there needs --resume or --overwrite).
RUN_FILES = (ckpt.CHECKPOINT_NAME, ckpt.LEGACY_CHECKPOINT_NAME, BEST_PARAMS, LAST_PARAMS,
             reporting.LOG_NAME, reporting.SUMMARY_NAME, reporting.CURVES_NAME)


def evaluate(net, data, contexts, dtype):
    meter, loss_fn = EpochMeter(), gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in data.val_batches():
        devices = contexts[:min(len(contexts), x.shape[0])]  # a short last batch
        xs = gluon.utils.split_and_load(x, devices, even_split=False)
        ys = gluon.utils.split_and_load(y, devices, even_split=False)
        for xi, yi in zip(xs, ys):
            logits = net(xi.astype(dtype)).astype('float32')
            meter.update(logits, yi, loss_fn(logits, yi))
    return meter.result('val')


def train_one_epoch(net, trainer, data, epoch, cfg, contexts, num_workers, total_lr):
    """One pass over this process's data; returns the epoch's train metrics and timing (img/s
    of all `num_workers` processes)."""
    smoothing = cfg.label_smoothing
    use_mixup = cfg.mixup and epoch < cfg.epochs - cfg.mixup_off_epoch
    soft = use_mixup or smoothing > 0
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=not soft)
    iters = data.num_train // data.batch_size
    mixup_rng = epoch_rng(cfg.seed, epoch, salt=1)
    meter, lr, start = EpochMeter(), 0.0, time.time()
    batches = progress(data.train_batches(epoch), cfg.progress, total=iters, leave=False,
                        desc=f'epoch {epoch + 1}/{cfg.epochs}', unit='batch')
    for i, (x, y) in enumerate(batches):
        lr = learning_rate(epoch * iters + i, iters, cfg, total_lr)
        trainer.set_learning_rate(lr)
        target = soft_targets(y, data.num_classes, smoothing) if soft else y
        if use_mixup:
            lam = float(mixup_rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
            x = lam * x + (1 - lam) * x[::-1]
            target = lam * target + (1 - lam) * target[::-1]
        xs = gluon.utils.split_and_load(x, contexts, even_split=False)
        ts = gluon.utils.split_and_load(target, contexts, even_split=False)
        ys = gluon.utils.split_and_load(y, contexts, even_split=False)
        with autograd.record():
            outputs = [net(xi.astype(cfg.dtype)).astype('float32') for xi in xs]
            losses = [loss_fn(out, ti) for out, ti in zip(outputs, ts)]
        autograd.backward(losses)
        # Over Horovod the trainer averages the gradients of the ranks first: this is the
        # step of one process over the global batch.
        trainer.step(data.batch_size)
        for out, yi, li in zip(outputs, ys, losses):
            meter.update(out, yi, li)
        # The meter has the loss on the host already; a diverged run stops in this epoch,
        # before its end writes params and checkpoint over the last good ones.
        if not np.isfinite(meter.loss):
            raise FloatingPointError(f"the training loss became {meter.loss} at epoch "
                                     f"{epoch + 1} step {i + 1}; nothing of this epoch was "
                                     f"written, the last checkpoint stays; lower the "
                                     f"learning rate")
    seconds = time.time() - start
    row = meter.result('train')
    row.update(lr=lr, img_per_sec=meter.count * num_workers / max(seconds, 1e-9),
               epoch_seconds=seconds)
    return row


def train(config: TrainConfig, net=None, symbol=None, data=None) -> dict:
    """Train per `config`; returns the summary also written to `out_dir/summary.json`.

    `net` (a Gluon block) or `symbol` (a Symbol ending in SoftmaxOutput, or a function
    (num_classes, data_shape) -> such a Symbol) replace the network named by
    `config.network`; `data` (a gn_mxnet.training.data.DataSource) replaces the data chosen
    by `config`.
    """
    wall_start = time.time()
    cfg = config.resolved()
    seed_everything(cfg.seed)
    job = connect(cfg.kv_store)
    contexts = job.contexts(cfg.gpus)
    if cfg.dtype == 'float16' and contexts[0].device_type == 'cpu':
        raise ValueError("--dtype float16 needs --gpus: MXNet 1.9 has no float16 GEMM or "
                         "convolution on CPU")
    out_dir, num_workers = cfg.out_dir, job.size
    if not job.writes:   # one terminal shows rank 0's bars
        cfg = dataclasses.replace(cfg, progress=False)
    identity = run_identity(cfg, num_workers)
    state = None
    if job.writes:   # rank 0 alone reads and writes the out-dir
        state = start_run(out_dir, RUN_FILES, identity, resume=cfg.resume,
                          overwrite=cfg.overwrite)

    data = data or make_data_source(cfg, len(contexts), job.rank, num_workers)
    net = prepare_network(cfg, make_network(cfg, data.num_classes, net, symbol),
                          data.data_shape, contexts)
    total_batch = cfg.batch_size * len(contexts) * num_workers
    total_lr = cfg.lr if cfg.lr is not None else cfg.base_lr * total_batch / 256.0
    optimizer_params = {'learning_rate': total_lr, 'wd': cfg.wd, 'momentum': cfg.momentum,
                        'multi_precision': cfg.dtype == 'float16'}
    trainer = make_trainer(net.collect_params(), cfg.optimizer, optimizer_params, cfg.kv_store,
                           job)

    history, best, start_epoch = [], {'val_top1': -1.0, 'epoch': 0}, 0
    state = share_state(job, state)
    if state is not None:
        start_epoch = ckpt.restore_checkpoint(state, net=net, trainer=trainer)
        history, best = state['history'], state['best']
    broadcast_parameters(job, net.collect_params())   # rank 0's, restored or initialised
    if job.writes:
        claim_out_dir(out_dir, RUN_FILES, overwrite=cfg.overwrite)   # built: now it may write
    last_epoch = cfg.epochs if cfg.stop_after_epochs is None else min(cfg.epochs,
                                                                      cfg.stop_after_epochs)
    epochs_bar = progress(range(start_epoch, last_epoch), cfg.progress, desc='epochs', unit='epoch',
                           initial=start_epoch, total=cfg.epochs)
    for epoch in epochs_bar:
        seed_everything(epoch_seed(cfg.seed, epoch))
        row = {'epoch': epoch + 1}
        row.update(train_one_epoch(net, trainer, data, epoch, cfg, contexts, num_workers,
                                   total_lr))
        ckpt.require_finite(net, f'after epoch {epoch + 1}')
        if job.writes:   # the other ranks hold the same weights; rank 0 evaluates, records
            row.update(evaluate(net, data, contexts, cfg.dtype))
        history.append(row)
        if not job.writes:
            continue
        ckpt.save_parameters(net, os.path.join(out_dir, LAST_PARAMS))
        if row['val_top1'] > best['val_top1']:
            best = {'val_top1': row['val_top1'], 'val_top5': row['val_top5'], 'epoch': epoch + 1}
            ckpt.save_parameters(net, os.path.join(out_dir, BEST_PARAMS))
        ckpt.save_checkpoint(out_dir, net=net, trainer=trainer, epoch=epoch + 1, best=best,
                             history=history, config=identity)
        reporting.write_log(out_dir, history)
        reporting.plot_curves(out_dir, history, title=f'{cfg.network} {cfg.norm} ({out_dir})')
        message = (f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                   f"train top-1 {row['train_top1']:.4f} val top-1 {row['val_top1']:.4f} "
                   f"top-5 {row['val_top5']:.4f} lr {row['lr']:.4g} "
                   f"{row['img_per_sec']:.0f} img/s")
        if cfg.progress:
            epochs_bar.write(message)

    summary = make_summary(cfg, data, net, history, best, out_dir, num_workers, job.rank,
                           time.time() - wall_start, finished=len(history) == cfg.epochs)
    if job.writes:
        reporting.write_summary(out_dir, summary)
    return summary


def make_summary(cfg, data, net, history, best, out_dir, num_workers, rank, wall_seconds,
                 finished):
    last = history[-1] if history else {}
    num_params = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
    return {
        'finished': finished,
        'epochs_done': len(history),
        'final': last,
        'best_val_top1': best['val_top1'],
        'best_epoch': best['epoch'],
        'train_seconds': sum(r['epoch_seconds'] for r in history),
        'wall_seconds_this_run': wall_seconds,
        'mean_img_per_sec': (float(np.mean([r['img_per_sec'] for r in history]))
                             if history else 0.0),
        'num_parameters': num_params,
        'data': data.describe(),
        'num_workers': num_workers,
        'rank': rank,
        'config': dataclasses.asdict(cfg),
        'files': {name: os.path.join(out_dir, name) for name in
                  (reporting.LOG_NAME, reporting.CURVES_NAME, BEST_PARAMS, LAST_PARAMS,
                   ckpt.CHECKPOINT_NAME, reporting.SUMMARY_NAME)},
    }
