"""The conv choice (gn_mxnet.models.convs): conv='ws' nets compute the plain net on
standardized weights, keep the plain net's parameter names (Gluon structural and prefixed,
Symbol) and load its weights, the Symbol twin equals the Gluon net, a run trains with
TrainConfig.conv, and conv='plain' keeps every identity and fingerprint recorded before the
choice existed (the study's committed rows)."""
import os

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.models import get_model, to_symbol_params
from gn_mxnet.models.convs import CONVS, make_conv
from gn_mxnet.operator.gluon import StdConv2D
from gn_mxnet.study import protocol
from gn_mxnet.study.runner import pending_runs, read_runs
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training.rundir import require_same_run, run_identity
from symbols import resnet, vgg
from test_symbols import randomize, symbol_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-5   # Qiao et al.'s, the default convention's

# (model, its input, kwargs): the small-image ResNet (fused GN), an ImageNet v1b ResNet built
# by gluoncv (unfused BN: Conv.apply on gluoncv's blocks), a fused-GN v1b and VGG.
NETS = [
    ('resnet8_small', (2, 1, 14, 14), dict(norm='gn', num_groups=8)),
    ('resnet18_v1b', (2, 3, 32, 32), dict(norm='bn')),
    ('resnet50_v1b', (1, 3, 32, 32), dict(norm='gn')),
    ('vgg11', (2, 3, 32, 32), dict(norm='gn', dropout=0.0)),
]


def qiao(weight):
    """Qiao et al.'s Weight Standardization in float64: (w - mean) / (unbiased std + eps)."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    mean = w.mean(axis=1, keepdims=True)
    std = w.std(axis=1, ddof=1, keepdims=True)
    return ((w - mean) / (std + EPS)).reshape(weight.shape)


def built(model, shape, conv, seed=0, **kwargs):
    with mx.name.NameManager():   # fresh prefix counters: vgg0 for both nets
        net = get_model(model, num_classes=10, conv=conv, **kwargs)
    net.initialize()
    net(mx.nd.zeros(shape))
    randomize(net, seed)
    return net


def conv_weights(net):
    return {name: param for name, param in net._collect_params_with_prefix().items()
            if name.endswith('weight') and len(param.shape) == 4}


@pytest.mark.parametrize('model, shape, kwargs', NETS)
def test_ws_net_is_the_plain_net_on_standardized_weights(model, shape, kwargs):
    ws = built(model, shape, 'ws', **kwargs)
    plain = built(model, shape, 'plain', seed=1, **kwargs)
    values = {name: p.data().asnumpy() for name, p in ws._collect_params_with_prefix().items()}
    for name in conv_weights(ws):
        values[name] = qiao(values[name])
    for name, param in plain._collect_params_with_prefix().items():
        param.set_data(mx.nd.array(values[name]))
    x = mx.nd.array(np.random.RandomState(2).uniform(-1, 1, shape))
    expected = plain(x).asnumpy()
    got = ws(x).asnumpy()
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # Every conv of the ws net standardizes; gluoncv's were swapped, sharing their Parameters.
    convs = [b for b in _blocks(ws) if isinstance(b, mx.gluon.nn.Conv2D)]
    assert convs and all(isinstance(b, StdConv2D) for b in convs)


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


@pytest.mark.parametrize('model, shape, kwargs', NETS)
def test_ws_names_are_the_plain_names_and_plain_weights_load(model, shape, kwargs, tmp_path):
    plain = built(model, shape, 'plain', **kwargs)
    ws = built(model, shape, 'ws', seed=3, **kwargs)
    assert list(ws._collect_params_with_prefix()) == list(plain._collect_params_with_prefix())
    assert list(ws.collect_params()) == list(plain.collect_params())
    path = str(tmp_path / 'plain.params')
    plain.save_parameters(path)
    ws.load_parameters(path)
    for name, param in ws._collect_params_with_prefix().items():
        np.testing.assert_array_equal(
            param.data().asnumpy(),
            plain._collect_params_with_prefix()[name].data().asnumpy(), err_msg=name)


@pytest.mark.parametrize('builder, depth, image_shape, kwargs', [
    (resnet, 8, '1,14,14', dict(norm='gn', num_groups=8)),
    (resnet, 50, '3,224,224', dict(norm='gn')),
    (resnet, 18, '3,224,224', dict(norm='bn')),
    (vgg, 11, '3,32,32', dict(norm='gn')),
])
def test_ws_symbols_have_the_plain_variables(builder, depth, image_shape, kwargs):
    plain = builder.get_symbol(10, depth, image_shape, **kwargs)
    ws = builder.get_symbol(10, depth, image_shape, conv='ws', **kwargs)
    assert ws.list_arguments() == plain.list_arguments()
    assert ws.list_auxiliary_states() == plain.list_auxiliary_states()
    assert ws.tojson() != plain.tojson()


def test_ws_symbol_equals_ws_gluon():
    shape = (2, 1, 14, 14)
    net = built('resnet8_small', shape, 'ws', norm='gn', num_groups=8)
    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, shape))
    symbol = resnet.get_symbol(10, 8, '1,14,14', norm='gn', num_groups=8, conv='ws')
    arg_params, aux_params = to_symbol_params(net)
    diff = np.abs(symbol_logits(symbol, 'fc', x, arg_params, aux_params) - net(x).asnumpy())
    assert diff.max() <= 1e-5


def test_a_ws_run_trains_and_a_plain_resume_of_it_is_refused(tmp_path):
    from gn_mxnet.training.loop import train
    quick = dict(train_subset=64, val_subset=64, epochs=1, batch_size=16, progress=False,
                 out_dir=str(tmp_path))
    summary = train(TrainConfig(conv='ws', **quick))
    assert summary['finished'] and np.isfinite(summary['final']['train_loss'])
    saved = mx.nd.load(str(tmp_path / 'last.params'))
    plain = get_model('resnet8_small', num_classes=10, norm='gn', num_groups=8)
    assert sorted(saved) == sorted(plain._collect_params_with_prefix())
    with pytest.raises(ValueError, match="conv: saved 'ws', now 'plain'"):
        train(TrainConfig(resume=True, **{**quick, 'epochs': 2}))


def test_plain_conv_keeps_the_identity_of_runs_recorded_before_it():
    cfg = TrainConfig().resolved()
    assert 'conv' not in cfg.identity()
    assert TrainConfig(conv='ws').resolved().identity()['conv'] == 'ws'
    old = run_identity(cfg, 1)   # what a checkpoint of before the choice holds
    require_same_run(old, run_identity(cfg, 1), 'out')
    with pytest.raises(ValueError, match="conv: saved 'plain', now 'ws'"):
        require_same_run(old, run_identity(TrainConfig(conv='ws').resolved(), 1), 'out')


@pytest.mark.parametrize('folder', ['results', os.path.join('results', 'fashion_mnist_study')])
def test_committed_study_rows_keep_their_fingerprints(folder):
    """Every committed row's fingerprint, recomputed from its cell and the study's settings.json,
    is the one it was written with; so the runner retrains none of them, and the only runs it
    has left are GN+WS cells (the arm of the Fashion-MNIST study's amendment)."""
    out = os.path.join(REPO, folder)
    with open(os.path.join(out, protocol.SETTINGS_NAME)) as f:
        s = protocol.StudySettings.from_json(f.read(), out_dir=out)
    cells = {cell.key: cell for cell, _ in protocol.planned_runs(s)}
    rows = read_runs(out)
    plain = [row for row in rows if cells[row['cell']].conv == 'plain']
    assert len(plain) >= 57
    for row in rows:
        assert protocol.fingerprint(cells[row['cell']], int(row['seed']), s) == row['settings']
    assert all(cell.conv == 'ws' for cell, _ in pending_runs(s, rows))


@pytest.mark.parametrize('call', [
    lambda: make_conv('wss'),
    lambda: get_model('resnet8_small', num_classes=10, num_groups=8, conv='WS'),
    lambda: get_model('vgg11', conv='std'),
    lambda: resnet.get_symbol(10, 8, '1,28,28', num_groups=8, conv='weight_std'),
    lambda: TrainConfig(conv='x').resolved(),
])
def test_an_unknown_conv_is_one_error_listing_the_convs(call):
    with pytest.raises(ValueError) as error:
        call()
    assert ', '.join(CONVS) in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_plain_apply_changes_nothing_and_ws_options_are_checked():
    net = get_model('resnet8_small', num_classes=10, num_groups=8)
    before = list(net._children.values())
    make_conv('plain').apply(net)
    assert list(net._children.values()) == before
    with pytest.raises(ValueError, match='convention'):
        make_conv('ws', convention='wu')
    with pytest.raises(ValueError, match='backend'):
        make_conv('ws', backend='cuda')
