"""The learning-rate schedule of every training job (classifier and detector): linear warm-up,
then step decay or cosine decay, as a function of the step alone (so a resumed run repeats it)."""
import math

LR_MODES = ('step', 'cosine')


def scheduled_lr(base_lr, step, *, mode='step', warmup_steps=0.0, warmup_start=0.0,
                 decay=0.1, decay_steps=(), total_steps=None):
    """The learning rate at `step` (0-based, may be fractional).

    Warm-up scales the rate linearly from `warmup_start` * rate to the full rate over
    `warmup_steps`. 'step' multiplies by `decay` at each of `decay_steps` reached; 'cosine'
    falls from the full rate after warm-up to 0 at `total_steps`.
    """
    if mode == 'step':
        lr = base_lr * decay ** sum(1 for boundary in decay_steps if step >= boundary)
    elif mode == 'cosine':
        span = max(total_steps - warmup_steps, 1e-12)
        progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr mode {mode!r}; choose one of {', '.join(LR_MODES)}")
    if step < warmup_steps:
        fraction = step / warmup_steps
        lr *= warmup_start * (1.0 - fraction) + fraction
    return lr


def learning_rate(iteration, iters_per_epoch, cfg, total_lr):
    """The classifier's rate (a TrainConfig `cfg`) at a 0-based global iteration; its schedule
    counts in (fractional) epochs: warm-up from 0 over cfg.warmup_epochs, then cfg.lr_mode."""
    decay_steps = parse_decay_epochs(cfg.lr_decay_epochs) if cfg.lr_mode == 'step' else ()
    return scheduled_lr(total_lr, iteration / iters_per_epoch, mode=cfg.lr_mode,
                        warmup_steps=cfg.warmup_epochs, decay=cfg.lr_decay,
                        decay_steps=decay_steps, total_steps=cfg.epochs)


def parse_decay_epochs(spec, allow_empty=False):
    """'30,60,90' (or a sequence) -> [30, 60, 90], strictly increasing; '' -> [] if allowed."""
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(',')
    try:
        epochs = [int(s) for s in items if str(s).strip()]
    except ValueError:
        raise ValueError(f"lr-decay-epochs must look like 30,60,90, got {spec!r}") from None
    if not epochs and allow_empty:
        return epochs
    if not epochs or sorted(set(epochs)) != epochs:
        raise ValueError(f"lr-decay-epochs must be increasing epochs like 30,60,90, got {spec!r}")
    return epochs
