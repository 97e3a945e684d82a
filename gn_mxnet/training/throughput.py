"""Training throughput (img/s) of one network under different norms (and convolutions),
measured side by side.

An arm is a norm, optionally with '+ws': 'bn', 'gn', 'gn+ws' (GN with weight-standardized
convolutions, gn_mxnet.models' conv='ws'). Rounds alternate between the arms so that load from
other processes on a shared machine hits all of them alike; each arm's figure is the median
over its rounds, and a ratio between two arms is taken round by round (PairedRatio), whose
spread shows the noise of the machine.
"""
import dataclasses
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..models import get_model
from ..models.convs import make_conv
from .config import TrainConfig
from .network import prepare_network
from .runtime import make_contexts


WS_SUFFIX = '+ws'


def arm_parts(arm):
    """(norm, conv) of an arm: 'gn+ws' -> ('gn', 'ws'), 'bn' -> ('bn', 'plain')."""
    if arm.endswith(WS_SUFFIX):
        return arm[:-len(WS_SUFFIX)], 'ws'
    return arm, 'plain'


def build_step(network, arm, batch_size, data_shape, num_classes, num_groups, backend,
               contexts, seed=0, ws_backend=None):
    """A function running one SGD step of `network` built as `arm` (a norm, '+ws' for
    weight-standardized convs whose backend is `ws_backend`, None: the operator's default) on
    a fixed synthetic batch."""
    norm, conv = arm_parts(arm)
    conv = make_conv(conv) if ws_backend is None else make_conv(conv, backend=ws_backend)
    mx.random.seed(seed)
    # Set after validation: the config accepts the norms one trains with, and 'none' (the net
    # without norm layers, a profiling baseline) is not one.
    cfg = dataclasses.replace(TrainConfig(num_groups=num_groups, gn_backend=backend).resolved(),
                              norm=norm)
    net = get_model(network, num_classes=num_classes, norm=norm, num_groups=num_groups,
                    backend=backend, last_gamma=False, conv=conv)
    prepare_network(cfg, net, data_shape, contexts)
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 1e-4},
                            update_on_kvstore=False)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(seed)
    total = batch_size * len(contexts)
    xs = gluon.utils.split_and_load(
        mx.nd.array(rng.standard_normal((total,) + tuple(data_shape))), contexts)
    ys = gluon.utils.split_and_load(
        mx.nd.array(rng.randint(0, num_classes, total)), contexts)

    def step():
        with autograd.record():
            losses = [loss_fn(net(x), y) for x, y in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(total)
    return step, total


def measure_rounds(network='resnet8_small', norms=('bn', 'gn'), batch_size=32,
                   data_shape=(1, 28, 28), num_classes=10, num_groups=8, backend='native',
                   gpus='', steps=20, warmup=5, rounds=5, ws_backend=None):
    """{arm: [img/s of each timed round]} for the arms `norms` (e.g. 'bn', 'gn', 'gn+ws'):
    `rounds` blocks of `steps` steps per arm. Each round times every arm once, back to back,
    and every other round runs them in reverse order, so that neither a drifting machine nor
    going first favours one arm."""
    contexts = make_contexts(gpus)
    runners = {norm: build_step(network, norm, batch_size, data_shape, num_classes,
                                num_groups, backend, contexts, ws_backend=ws_backend)
               for norm in norms}
    for step, _ in runners.values():
        for _ in range(warmup):
            step()
        mx.nd.waitall()
    rates = {norm: [] for norm in norms}
    for index in range(rounds):
        order = list(norms) if index % 2 == 0 else list(reversed(norms))
        for norm in order:
            step, images = runners[norm]
            start = time.perf_counter()
            for _ in range(steps):
                step()
            mx.nd.waitall()
            rates[norm].append(images * steps / (time.perf_counter() - start))
    return rates


@dataclasses.dataclass(frozen=True)
class PairedRatio:
    """numerator/denominator img/s, round by round: each round's two figures were measured
    back to back, so their ratio sees the same machine; the spread over rounds is the noise."""
    ratios: tuple

    @classmethod
    def of(cls, rates, numerator, denominator):
        return cls(tuple(a / b for a, b in zip(rates[numerator], rates[denominator])))

    @property
    def median(self):
        return float(np.median(self.ratios))

    @property
    def quartiles(self):
        return tuple(float(q) for q in np.percentile(self.ratios, (25, 75)))

    def rounds_at_least(self, threshold):
        return sum(r >= threshold for r in self.ratios)
