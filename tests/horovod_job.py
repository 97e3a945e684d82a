"""What tests/test_horovod.py runs in each process of a job (under horovodrun) or alone:

    python tests/horovod_job.py classifier OUT_DIR WEIGHTS_DIR KV_STORE BATCH [raise|stop|resume]
    python tests/horovod_job.py detector OUT_DIR WEIGHTS_DIR CACHE_DIR

classifier: the library's train() on a tiny GroupNorm net and fixed random data, where step i
of every epoch covers the same global batch of samples however many processes share it (each
takes its slice of rows), so a 2-rank job and one process with the whole batch train alike.
`raise` makes rank 1 fail in its second step; `stop` ends the run after epoch 1 of 2, and
`resume` continues it. detector: run() of the Mask R-CNN engine for two
iterations on the embedded set. Both then save this process's weights as
WEIGHTS_DIR/rank<r>.params (the library writes only rank 0's, into OUT_DIR).
"""
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings('ignore')
GLOBAL_BATCH, STEPS, CLASSES, SHAPE = 8, 4, 4, (1, 8, 8)


def rank_and_size():
    return int(os.environ.get('HOROVOD_RANK', 0)), int(os.environ.get('HOROVOD_SIZE', 1))


def classifier(out_dir, weights_dir, kv_store, batch, mode=None):
    import mxnet as mx
    from mxnet import gluon
    from gn_mxnet.gluon import GroupNorm
    from gn_mxnet.training.config import TrainConfig
    from gn_mxnet.training.loop import train
    from gn_mxnet.training.source import DataSource

    rank, size = rank_and_size()

    class Slices(DataSource):
        num_classes, data_shape = CLASSES, SHAPE

        def __init__(self):
            rng = np.random.RandomState(0)
            self.x = rng.rand(STEPS * GLOBAL_BATCH, *SHAPE).astype('float32')
            self.y = rng.randint(0, CLASSES, STEPS * GLOBAL_BATCH).astype('float32')
            self.batch_size = GLOBAL_BATCH // size
            self.num_train = STEPS * self.batch_size

        def train_batches(self, epoch):
            for step, i in enumerate(np.random.RandomState([0, epoch]).permutation(STEPS)):
                if mode == 'raise' and rank == 1 and step == 1:
                    raise RuntimeError('rank 1 fails on purpose')
                rows = slice(i * GLOBAL_BATCH + rank * self.batch_size,
                             i * GLOBAL_BATCH + (rank + 1) * self.batch_size)
                yield mx.nd.array(self.x[rows]), mx.nd.array(self.y[rows])

        def val_batches(self):
            yield mx.nd.array(self.x[:GLOBAL_BATCH]), mx.nd.array(self.y[:GLOBAL_BATCH])

        def describe(self):
            return 'fixed random samples'

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, padding=1, in_channels=1, use_bias=False),
            GroupNorm(num_groups=2, in_channels=8), gluon.nn.Activation('relu'),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(CLASSES, in_units=8))
    # The lr follows the global batch: 8 x 8/256 = 0.25 in the job and in the one process.
    cfg = TrainConfig(kv_store=kv_store, batch_size=batch, base_lr=8.0, epochs=2, wd=1e-4,
                      warmup_epochs=0.5, lr_mode='cosine', seed=3, out_dir=out_dir,
                      progress=False, stop_after_epochs=1 if mode == 'stop' else None,
                      resume=mode == 'resume')
    train(cfg, net=net, data=Slices())
    save(net, weights_dir, rank)


def detector(out_dir, weights_dir, cache_dir):
    from gn_mxnet.detection import engine

    built = []
    build = engine.build_mask_rcnn

    def keep(*args, **kwargs):   # the test reads this process's weights afterwards
        built.append(build(*args, **kwargs))
        return built[-1]

    engine.build_mask_rcnn = keep
    engine.run(engine.DetectionConfig(
        cache_dir=cache_dir, num_train=8, num_val=4, kv_store='horovod', batch_size=1,
        epochs=1, train_limit=4, val_limit=1, lr=0, warmup_iters=0, evaluate='last',
        out_dir=out_dir, progress=False))
    save(built[0], weights_dir, rank_and_size()[0])


def save(net, weights_dir, rank):
    os.makedirs(weights_dir, exist_ok=True)
    net.save_parameters(os.path.join(weights_dir, f'rank{rank}.params'))


if __name__ == '__main__':
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == 'classifier':
        classifier(*args[:3], int(args[3]), *args[4:])
    else:
        detector(*args)
