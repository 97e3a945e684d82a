"""The training job: `train(TrainConfig(...)) -> summary dict`, used by train/train_imagenet.py
and by every study that trains networks.

Determinism: weights are initialised from `seed`, and at the start of epoch e every random
source (MXNet, NumPy, Python) is re-seeded from (seed, e) and the data order is a function of
(seed, e). A run resumed from the checkpoint after epoch k therefore repeats exactly what the
uninterrupted run did in epochs k+1, k+2, ...
"""
import json
import math
import os
import random
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import checkpoint as ckpt
from . import data as gn_data
from . import reporting
from .train_config import TrainConfig, decay_epochs, parse_gpus

BEST_PARAMS, LAST_PARAMS = 'best.params', 'last.params'
NO_WD_SUFFIXES = ('gamma', 'beta', 'bias')
# What Gluon's own layers initialise these to (Module-style names of Symbol variables).
SYMBOL_PARAM_INITS = (('gamma', 'ones'), ('beta', 'zeros'), ('bias', 'zeros'),
                      ('moving_mean', 'zeros'), ('moving_var', 'ones'),
                      ('running_mean', 'zeros'), ('running_var', 'ones'))


def learning_rate(iteration, iters_per_epoch, cfg, total_lr):
    """Learning rate at a (0-based) global iteration: linear warm-up from 0, then step or
    cosine decay. Epoch positions are fractional (iteration / iters_per_epoch)."""
    epoch = iteration / iters_per_epoch
    if epoch < cfg.warmup_epochs:
        return total_lr * epoch / cfg.warmup_epochs
    if cfg.lr_mode == 'step':
        passed = sum(1 for e in decay_epochs(cfg.lr_decay_epochs) if epoch >= e)
        return total_lr * cfg.lr_decay ** passed
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    progress = min((epoch - cfg.warmup_epochs) / span, 1.0)
    return total_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed):
    seed = int(seed) % (2 ** 31)
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def epoch_seed(seed, epoch):
    return (int(seed) * 1000003 + 7919 * (epoch + 1)) % (2 ** 31)


def make_contexts(gpus):
    ids = parse_gpus(gpus)
    if not ids:
        return [mx.cpu()]
    available = mx.context.num_gpus()
    missing = [i for i in ids if i >= available]
    if missing:
        raise ValueError(f"--gpus asks for GPU(s) {missing}, this machine has {available}")
    return [mx.gpu(i) for i in ids]


def make_data(cfg, num_devices, rank, num_workers):
    batch = cfg.batch_size * num_devices
    parts = dict(num_parts=num_workers, part_index=rank)
    if cfg.rec_train:
        return gn_data.RecordSource(cfg.rec_train, cfg.rec_val, batch, cfg.num_classes,
                                    cfg.data_shape, seed=cfg.seed, threads=cfg.data_threads,
                                    **parts)
    if cfg.data_dir:
        # Decoding processes trade the bit-exact augmentation order for speed; one thread
        # decodes in this process and stays deterministic.
        workers = cfg.data_threads if cfg.data_threads > 1 else 0
        return gn_data.ImageFolderSource(cfg.data_dir, batch, cfg.data_shape, seed=cfg.seed,
                                         num_workers=workers, **parts)
    return gn_data.MNIST5kSource(batch, seed=cfg.seed, train_subset=cfg.train_subset,
                                 val_subset=cfg.val_subset, **parts)


def symbol_to_block(symbol):
    """A Gluon block computing the logits of a classification Symbol ending in SoftmaxOutput.

    Variables that carry an `__init__` attribute (e.g. zero-initialised last gamma) keep it.
    """
    if json.loads(symbol.tojson())['nodes'][-1]['op'] == 'SoftmaxOutput':
        logits = [c for c in symbol.get_children() if not c.name.endswith('label')]
        if len(logits) != 1:
            raise ValueError("cannot find the logits input of the Symbol's SoftmaxOutput")
        symbol = logits[0]
    block = gluon.SymbolBlock(symbol, mx.sym.var('data'))
    attrs = symbol.attr_dict()
    for name, param in block.collect_params().items():
        init = attrs.get(name, {}).get('__init__')
        if init:
            param.init = mx.init.create(init)
        else:  # Gluon applies the global initializer to every parameter without an init
            for suffix, value in SYMBOL_PARAM_INITS:
                if name.endswith(suffix):
                    param.init = value
                    break
    return block


def make_network(cfg, num_classes, net=None, symbol=None):
    if net is not None and symbol is not None:
        raise ValueError("give a Gluon net or a Symbol, not both")
    if callable(symbol):
        symbol = symbol(num_classes, cfg.data_shape)
    if symbol is not None:
        return symbol_to_block(symbol)
    if net is not None:
        return net
    from . import models
    return models.get_model(cfg.network, num_classes=num_classes, norm=cfg.norm,
                            num_groups=cfg.num_groups, backend=cfg.gn_backend,
                            last_gamma=cfg.last_gamma, **cfg.model_kwargs)


def prepare_network(cfg, net, data_shape, contexts):
    """Initialise (MSRA), materialise deferred shapes, cast and hybridize."""
    if cfg.norm in ('gn', 'ln', 'in') and cfg.gn_backend == 'native':
        from . import load_library
        load_library()
    init = mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)
    net.collect_params().initialize(init, ctx=contexts)
    if any(p._deferred_init for p in net.collect_params().values()):
        # Shapes from symbolic inference, not from a forward pass: an inference pass lets
        # MKLDNN re-lay weights out in place, and a kvstore then sends or receives the raw
        # bytes of that layout (dist workers started from different weights).
        sample = mx.nd.zeros((1,) + tuple(data_shape), ctx=contexts[0])
        if isinstance(net, gluon.HybridBlock):
            net.infer_shape(sample)
            net.collect_params().initialize(init, ctx=contexts, force_reinit=True)
        else:
            net(sample)
    if cfg.dtype != 'float32':
        net.cast(cfg.dtype)
    if cfg.no_wd:
        for name, param in net.collect_params().items():
            if name.endswith(NO_WD_SUFFIXES):
                param.wd_mult = 0.0
    if cfg.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


class DistributedGradients:
    """Gradient all-reduce over a dist kvstore, with the weight updates kept on the workers.

    Gluon's Trainer can do this itself (update_on_kvstore=False), but it broadcasts the initial
    weights lazily inside the first step(), after a forward pass; on MKLDNN CPUs that pull was
    seen to race with the weights' re-layout, and two workers started from different weights.
    Here rank 0's weights are broadcast up front, before any forward pass, and the Trainer
    (created without a kvstore) only applies the summed gradients, so its optimizer states stay
    local and go into checkpoints.
    """

    def __init__(self, kv, params):
        self.kv = kv
        self.params = [p for p in params.values() if p.grad_req != 'null']

    def broadcast_parameters(self):
        for key, param in enumerate(self.params):
            self.kv.init(key, param.list_data()[0])
        mx.nd.waitall()
        self.kv._barrier()   # every worker has seen rank 0's values stored before pulling
        for key, param in enumerate(self.params):
            self.kv.pull(key, out=param.list_data(), priority=-key)
        mx.nd.waitall()

    def allreduce(self):
        """Sum every gradient over devices and workers, in place."""
        for key, param in enumerate(self.params):
            self.kv.pushpull(key, param.list_grad(), out=param.list_grad(), priority=-key)


def soft_targets(labels, num_classes, smoothing):
    onehot = mx.nd.one_hot(labels, num_classes)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def topk_correct(logits, labels, k):
    """Number of rows whose label is among the k largest logits (numpy arrays)."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


class EpochMeter:
    def __init__(self):
        self.count, self.loss, self.top1, self.top5 = 0, 0.0, 0, 0

    def update(self, logits, labels, losses):
        logits = logits.asnumpy().astype(np.float32)
        labels = labels.asnumpy().astype(np.int64)
        self.count += len(labels)
        self.loss += float(losses.sum().asscalar())
        self.top1 += topk_correct(logits, labels, 1)
        self.top5 += topk_correct(logits, labels, 5)

    def result(self, prefix):
        n = max(self.count, 1)
        return {f'{prefix}_loss': self.loss / n, f'{prefix}_top1': self.top1 / n,
                f'{prefix}_top5': self.top5 / n}


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


def _progress(iterable, cfg, **kwargs):
    if not cfg.progress:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def train_one_epoch(net, trainer, data, epoch, cfg, contexts, num_workers, total_lr,
                    dist_sync=None):
    """One pass over this worker's data; returns the epoch's train metrics and timing."""
    smoothing = cfg.label_smoothing
    use_mixup = cfg.mixup and epoch < cfg.epochs - cfg.mixup_off_epoch
    soft = use_mixup or smoothing > 0
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=not soft)
    global_batch = data.batch_size * num_workers
    iters = data.num_train // data.batch_size
    mixup_rng = gn_data.epoch_rng(cfg.seed, epoch, salt=1)
    meter, lr, start = EpochMeter(), 0.0, time.time()
    batches = _progress(data.train_batches(epoch), cfg, total=iters, leave=False,
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
        if dist_sync is not None:
            dist_sync.allreduce()
        trainer.step(global_batch)
        for out, yi, li in zip(outputs, ys, losses):
            meter.update(out, yi, li)
    seconds = time.time() - start
    row = meter.result('train')
    row.update(lr=lr, img_per_sec=meter.count * num_workers / max(seconds, 1e-9),
               epoch_seconds=seconds)
    return row


def train(config: TrainConfig, net=None, symbol=None, data=None) -> dict:
    """Train per `config`; returns the summary also written to `out_dir/summary.json`.

    `net` (a Gluon block) or `symbol` (a Symbol ending in SoftmaxOutput, or a function
    (num_classes, data_shape) -> such a Symbol) replace the network named by
    `config.network`; `data` (a gn_mxnet.data.DataSource) replaces the data chosen by `config`.
    """
    wall_start = time.time()
    cfg = config.resolved()
    seed_everything(cfg.seed)
    contexts = make_contexts(cfg.gpus)
    if cfg.dtype == 'float16' and contexts[0].device_type == 'cpu':
        raise ValueError("--dtype float16 needs --gpus: MXNet 1.9 has no float16 GEMM or "
                         "convolution on CPU")
    kv = mx.kv.create(cfg.kv_store) if 'dist' in cfg.kv_store else cfg.kv_store
    rank, num_workers = (kv.rank, kv.num_workers) if 'dist' in cfg.kv_store else (0, 1)
    out_dir = cfg.out_dir if num_workers == 1 else os.path.join(cfg.out_dir, f'worker{rank}')
    os.makedirs(out_dir, exist_ok=True)

    data = data or make_data(cfg, len(contexts), rank, num_workers)
    net = prepare_network(cfg, make_network(cfg, data.num_classes, net, symbol),
                          data.data_shape, contexts)
    total_batch = cfg.batch_size * len(contexts) * num_workers
    total_lr = cfg.lr if cfg.lr is not None else cfg.base_lr * total_batch / 256.0
    optimizer_params = {'learning_rate': total_lr, 'wd': cfg.wd, 'momentum': cfg.momentum,
                        'multi_precision': cfg.dtype == 'float16'}
    # update_on_kvstore=False keeps optimizer states on the workers, so they can be checkpointed
    distributed = 'dist' in cfg.kv_store
    trainer = gluon.Trainer(net.collect_params(), cfg.optimizer, optimizer_params,
                            kvstore=None if distributed else kv, update_on_kvstore=False)
    dist_sync = DistributedGradients(kv, net.collect_params()) if distributed else None

    history, best, start_epoch = [], {'val_top1': -1.0, 'epoch': 0}, 0
    if cfg.resume:
        state = ckpt.load_checkpoint(out_dir)
        changed = {k: (state['config'].get(k), v) for k, v in cfg.identity().items()
                   if state['config'].get(k) != v}
        if changed:
            raise ValueError(f"--resume with a different configuration than the checkpoint's "
                             f"(saved, now): {changed}")
        start_epoch = ckpt.restore_checkpoint(state, net=net, trainer=trainer)
        history, best = state['history'], state['best']

    if dist_sync is not None:
        dist_sync.broadcast_parameters()
    last_epoch = cfg.epochs if cfg.stop_after_epochs is None else min(cfg.epochs,
                                                                      cfg.stop_after_epochs)
    epochs_bar = _progress(range(start_epoch, last_epoch), cfg, desc='epochs', unit='epoch',
                           initial=start_epoch, total=cfg.epochs)
    for epoch in epochs_bar:
        seed_everything(epoch_seed(cfg.seed, epoch))
        row = {'epoch': epoch + 1}
        row.update(train_one_epoch(net, trainer, data, epoch, cfg, contexts, num_workers,
                                   total_lr, dist_sync))
        row.update(evaluate(net, data, contexts, cfg.dtype))
        history.append(row)
        ckpt.save_parameters(net, os.path.join(out_dir, LAST_PARAMS))
        if row['val_top1'] > best['val_top1']:
            best = {'val_top1': row['val_top1'], 'val_top5': row['val_top5'], 'epoch': epoch + 1}
            ckpt.save_parameters(net, os.path.join(out_dir, BEST_PARAMS))
        ckpt.save_checkpoint(out_dir, net=net, trainer=trainer, epoch=epoch + 1, best=best,
                             history=history, config=cfg.identity())
        reporting.write_csv(out_dir, history)
        reporting.plot_curves(out_dir, history, title=f'{cfg.network} {cfg.norm} ({out_dir})')
        message = (f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                   f"train top-1 {row['train_top1']:.4f} val top-1 {row['val_top1']:.4f} "
                   f"top-5 {row['val_top5']:.4f} lr {row['lr']:.4g} "
                   f"{row['img_per_sec']:.0f} img/s")
        if cfg.progress:
            epochs_bar.write(message)

    summary = make_summary(cfg, data, net, history, best, out_dir, num_workers, rank,
                           time.time() - wall_start, finished=len(history) == cfg.epochs)
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
        'config': cfg.identity() | {'kv_store': cfg.kv_store, 'gpus': cfg.gpus,
                                    'no_wd': cfg.no_wd, 'wd': cfg.wd},
        'files': {name: os.path.join(out_dir, name) for name in
                  (reporting.LOG_NAME, reporting.CURVES_NAME, BEST_PARAMS, LAST_PARAMS,
                   ckpt.CHECKPOINT_NAME, reporting.SUMMARY_NAME)},
    }
