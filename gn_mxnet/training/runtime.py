"""What a run runs on and how it is seeded: the devices from --gpus, and the seeds that make
every epoch repeat exactly on resume (re-seeded from (seed, epoch) at the start of each)."""
import random

import mxnet as mx
import numpy as np


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
        raise ValueError(f"--gpus asks for GPU(s) {', '.join(map(str, missing))}, this machine "
                         f"has {available or 'none'}; give --gpus '' to run on the CPU")
    return [mx.gpu(i) for i in ids]


def parse_gpus(spec):
    """'0,1' -> [0, 1]; '' -> [] (CPU)."""
    try:
        return [int(s) for s in str(spec).split(',') if s.strip()]
    except ValueError:
        raise ValueError(f"--gpus must look like 0,1,2 ('' for the CPU), got {spec!r}") from None
