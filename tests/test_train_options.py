"""Each training option has its effect, seen in a few steps of train() on fixed tiny batches:
label smoothing changes the loss, mixup the inputs and targets, --no-wd the decay of gamma, beta
and biases, nag the update, warm-up and step decay the applied learning rate, --last-gamma the
initial gammas. A Recorder around the net sees what each training step fed it."""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gn_mxnet import models
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training.data import DataSource
from gn_mxnet.training.loop import train
from gn_mxnet.training.network import make_network, prepare_network
from gn_mxnet.training.reporting import read_log
from gn_mxnet.training.schedule import learning_rate

BATCH, CLASSES = 8, 10
# The run options every test shares: explicit lr, no warm-up, plain schedule, no wd.
PLAIN = dict(network='resnet8_small', num_groups=8, batch_size=BATCH, lr=0.1, warmup_epochs=0,
             lr_mode='step', lr_decay_epochs='100', epochs=1, wd=0.0, progress=False)


class Batches(DataSource):
    """The same `steps` batches of noise images every epoch (labels cover every class)."""

    def __init__(self, steps):
        rng = np.random.RandomState(0)
        self.x = rng.rand(steps, BATCH, 1, 28, 28).astype('float32')
        self.y = rng.randint(0, CLASSES, (steps, BATCH)).astype('float32')
        self.num_classes, self.data_shape, self.batch_size = CLASSES, (1, 28, 28), BATCH
        self.num_train = steps * BATCH

    def train_batches(self, epoch):
        for x, y in zip(self.x, self.y):
            yield mx.nd.array(x), mx.nd.array(y)

    def val_batches(self):
        yield mx.nd.array(self.x[0]), mx.nd.array(self.y[0])

    def describe(self):
        return 'noise'


class Recorder(gluon.Block):
    """The net, recording at each training forward pass its input, its logits, and the fc bias
    with the gradient the previous step left on it."""

    def __init__(self, net):
        super().__init__(prefix='')
        with self.name_scope():
            self.net = net
        self.inputs, self.logits, self.bias, self.bias_grad = [], [], [], []

    def forward(self, x):
        out = self.net(x)
        if autograd.is_recording():
            bias = self.net.fc.bias
            self.inputs.append(x.asnumpy())
            self.logits.append(out.asnumpy())
            self.bias.append(bias.data().asnumpy())
            self.bias_grad.append(bias.grad().asnumpy())
        return out


def fresh_net():
    """The same initial weights at every call."""
    mx.random.seed(0)
    net = models.get_model('resnet8_small', num_classes=CLASSES, num_groups=8)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 1, 28, 28)))
    return Recorder(net)


def run(tmp_path, name, steps=1, **options):
    """train() on `steps` fixed batches from fresh_net(); returns (recorder, summary)."""
    net = fresh_net()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*already initialized.*')
        summary = train(TrainConfig(out_dir=str(tmp_path / name), **{**PLAIN, **options}),
                        net=net, data=Batches(steps))
    return net, summary


def params(recorder):
    return {n: p.data().asnumpy() for n, p in recorder.net._collect_params_with_prefix().items()}


def cross_entropy(logits, targets):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(targets * log_p).sum(axis=1).mean())


def one_hot(labels):
    return np.eye(CLASSES, dtype=np.float64)[labels.astype(int)]


def test_label_smoothing_changes_the_loss(tmp_path):
    net, summary = run(tmp_path, 'smooth', steps=2, label_smoothing=0.4)
    labels = np.concatenate(Batches(2).y)
    logits = np.concatenate(net.logits).astype(np.float64)
    smooth = one_hot(labels) * 0.6 + 0.4 / CLASSES
    expected = cross_entropy(logits, smooth)
    assert abs(expected - cross_entropy(logits, one_hot(labels))) > 1e-3
    assert summary['final']['train_loss'] == pytest.approx(expected, rel=1e-5)


def test_mixup_mixes_inputs_and_targets_until_its_off_epoch(tmp_path):
    net, _ = run(tmp_path, 'mixup', steps=1, epochs=2, mixup=True, mixup_alpha=0.4,
                 mixup_off_epoch=1)
    data = Batches(1)
    x, seen, other = data.x[0], net.inputs[0], data.x[0][::-1]
    # seen = lam * x + (1 - lam) * reversed(x): lam by least squares, then the residual.
    d = (x - other).ravel()
    lam = float(np.dot(seen.ravel() - other.ravel(), d) / np.dot(d, d))
    assert 0.0 < lam < 1.0 and abs(lam - 1.0) > 1e-3
    np.testing.assert_allclose(seen, lam * x + (1 - lam) * other, atol=1e-5)
    np.testing.assert_array_equal(net.inputs[1], x)   # the last epoch trains unmixed
    target = one_hot(data.y[0])
    mixed = lam * target + (1 - lam) * target[::-1]
    rows = read_log(str(tmp_path / 'mixup' / 'log.csv'))
    assert rows[0]['train_loss'] == pytest.approx(
        cross_entropy(net.logits[0].astype(np.float64), mixed), rel=1e-5)
    assert rows[1]['train_loss'] == pytest.approx(
        cross_entropy(net.logits[1].astype(np.float64), target), rel=1e-5)


def test_no_wd_leaves_gamma_beta_and_biases_undecayed(tmp_path):
    undecayed, _ = run(tmp_path, 'wd0', wd=0.0)
    no_wd, _ = run(tmp_path, 'no_wd', wd=0.5, no_wd=True)
    decayed, _ = run(tmp_path, 'wd', wd=0.5)
    base, kept, all_decayed = params(undecayed), params(no_wd), params(decayed)
    exempt = [n for n in base if n.endswith(('gamma', 'beta', 'bias'))]
    assert exempt and len(exempt) < len(base)
    for name in base:
        if name in exempt:
            np.testing.assert_allclose(kept[name], base[name], rtol=1e-6, atol=1e-7,
                                       err_msg=name)
        else:
            np.testing.assert_allclose(kept[name], all_decayed[name], rtol=1e-6, atol=1e-7,
                                       err_msg=name)
    # ... while without --no-wd a gamma of 1 loses lr * wd * 1 = 0.05 to decay.
    gamma = next(n for n in exempt if n.endswith('gamma'))
    np.testing.assert_allclose(base[gamma] - all_decayed[gamma], 0.05, rtol=1e-3)


def test_nag_steps_differ_from_sgd(tmp_path):
    initial = params(fresh_net())
    sgd, _ = run(tmp_path, 'sgd', optimizer='sgd', momentum=0.9)
    nag, _ = run(tmp_path, 'nag', optimizer='nag', momentum=0.9)
    sgd_params, nag_params = params(sgd), params(nag)
    moved = 0
    # First step from zero momentum: SGD moves by -lr*g, Nesterov by -lr*(1 + momentum)*g.
    for name, w0 in initial.items():
        np.testing.assert_allclose(nag_params[name] - w0, 1.9 * (sgd_params[name] - w0),
                                   rtol=1e-3, atol=1e-6, err_msg=name)
        moved += bool(np.abs(sgd_params[name] - w0).max() > 1e-4)
    assert moved > len(initial) // 2


def test_applied_learning_rate_follows_warmup_and_step_decay(tmp_path):
    steps = 4   # per epoch: warm-up over epoch 1, x0.1 from epoch 3
    options = dict(epochs=3, warmup_epochs=1, lr_decay_epochs='2', lr_decay=0.1,
                   momentum=0.0)
    net, _ = run(tmp_path, 'schedule', steps=steps, **options)
    cfg = TrainConfig(**{**PLAIN, **options}).resolved()
    applied, expected = [], []
    # SGD without momentum or wd: bias_{i+1} = bias_i - lr_i * grad_i / batch.
    for i in range(len(net.bias) - 1):
        grad = net.bias_grad[i + 1]
        usable = np.abs(grad) > 1e-3 * np.abs(grad).max()
        ratio = -(net.bias[i + 1] - net.bias[i])[usable] * BATCH / grad[usable]
        applied.append(float(np.median(ratio)))
        expected.append(learning_rate(i, steps, cfg, 0.1))
    assert expected[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert expected[-1] == pytest.approx(0.01)
    assert applied == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_last_gamma_zero_initialises_each_blocks_last_gamma():
    gammas = {}
    for last_gamma in (False, True):
        cfg = TrainConfig(last_gamma=last_gamma, hybridize=False).resolved()
        net = prepare_network(cfg, make_network(cfg, CLASSES), cfg.data_shape, [mx.cpu()])
        gammas[last_gamma] = {n: p.data().asnumpy() for n, p in
                              net._collect_params_with_prefix().items() if n.endswith('gamma')}
    last = [n for n in gammas[True] if n.endswith('bn2.gamma')]
    assert len(last) == 3   # resnet8_small: one basic block per stage
    for name, value in gammas[True].items():
        assert (value == (0.0 if name in last else 1.0)).all(), name
    assert all((value == 1.0).all() for value in gammas[False].values())
