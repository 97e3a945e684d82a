"""Gluon builders and the norm factory: names, shapes, recipes, errors, export/import."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from gn_mxnet.models import get_model, list_models
from gn_mxnet.norms import Identity, make_norm


# The library is part of the install: a missing one fails these tests rather than skipping them.
NATIVE = 'native'


def _count(net, skip=()):
    return sum(int(np.prod(p.shape)) for name, p in net.collect_params().items()
               if not any(s in name for s in skip))


# --- the norm factory ---------------------------------------------------------------------
def test_factory_builds_each_norm_with_the_right_groups():
    assert make_norm('gn', 32, backend='ops')(in_channels=64).num_groups == 32
    assert make_norm('ln', backend='ops')(in_channels=64).num_groups == 1
    assert make_norm('in', backend='ops')(in_channels=64).num_groups == 64
    assert isinstance(make_norm('bn')(in_channels=64), nn.BatchNorm)
    identity = make_norm('none')(in_channels=64, gamma_initializer='zeros')
    assert isinstance(identity, Identity) and not identity.collect_params().keys()


def test_factory_layers_compute_gn_ln_in():
    x = mx.nd.array(np.random.RandomState(0).normal(2, 3, (2, 8, 3, 3)))
    for norm, groups in (('gn', 4), ('ln', 1), ('in', 8)):
        layer = make_norm(norm, 4, backend='ops')(in_channels=8)
        layer.initialize()
        grouped = x.asnumpy().reshape(2, groups, -1)
        expected = ((grouped - grouped.mean(-1, keepdims=True))
                    / np.sqrt(grouped.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
        np.testing.assert_allclose(layer(x).asnumpy(), expected, atol=1e-5, err_msg=norm)


@pytest.mark.parametrize('kwargs, words', [
    (dict(norm='batchnorm'), 'batchnorm'),
    (dict(norm='gn', num_groups=0), 'num_groups'),
    (dict(norm='gn', backend='cuda'), 'cuda'),
])
def test_factory_rejects_bad_choices_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words):
        make_norm(**kwargs)


def test_group_count_must_divide_channels():
    with pytest.raises(ValueError, match='num_groups=32 does not divide 16'):
        make_norm('gn', 32)(in_channels=16)
    with pytest.raises(ValueError, match='in_channels'):
        make_norm('in')(in_channels=0)


def test_our_layer_works_as_gluoncv_norm_layer():
    from gluoncv.model_zoo.resnetv1b import resnet50_v1b
    net = resnet50_v1b(norm_layer=make_norm('gn', backend='ops'), last_gamma=True)
    net.initialize()
    assert net(mx.nd.zeros((1, 3, 64, 64))).shape == (1, 1000)
    assert not net.layer1[0].bn3.gamma.data().asnumpy().any()


# --- get_model -----------------------------------------------------------------------------
def test_list_models_all_build():
    names = list_models()
    for name in ('resnet18_v1b', 'resnet50_v1b', 'resnet152_v1b', 'resnet8_small',
                 'resnet20_small', 'resnet56_small', 'vgg11', 'vgg16', 'vgg19'):
        assert name in names
    for name in names:  # construction only: cheap, and catches a bad table entry
        get_model(name, num_classes=10, num_groups=16 if 'small' in name else 32,
                  backend='ops')


@pytest.mark.parametrize('name, message', [
    ('resnet51_v1b', 'depth 51'), ('resnet21_small', '6n\\+2'), ('vgg12', 'VGG of depth 12'),
    ('alexnet', "unknown model 'alexnet'"),
])
def test_unknown_models_are_named(name, message):
    with pytest.raises(ValueError, match=message):
        get_model(name, backend='ops')


def test_small_net_with_too_many_groups_fails_at_build_naming_the_width():
    with pytest.raises(ValueError, match='does not divide 16'):
        get_model('resnet20_small', num_classes=10, num_groups=32, backend='ops')


def test_resnet50_gn_parameter_count_matches_gluoncv_minus_running_stats():
    from gluoncv.model_zoo.resnetv1b import resnet50_v1b
    ours = get_model('resnet50_v1b', norm='gn', backend='ops')
    ours.initialize()
    reference = resnet50_v1b()
    reference.initialize()
    x = mx.nd.zeros((1, 3, 64, 64))
    ours(x), reference(x)
    learnable = _count(reference, skip=('running_mean', 'running_var'))
    assert _count(ours) == learnable == 25557032
    # ... and the structural names are gluoncv's, so its files load without a table.
    assert (set(ours._collect_params_with_prefix())
            == {k for k in reference._collect_params_with_prefix() if 'running' not in k})


@pytest.mark.parametrize('name, bottleneck', [('resnet8_small', False),
                                              ('resnet11_small', True),
                                              ('resnet20_small', False),
                                              ('resnet56_small', False)])
@pytest.mark.parametrize('norm', ['gn', 'bn', 'ln', 'in', 'none'])
def test_small_nets_take_mnist_sized_single_channel_input(name, bottleneck, norm):
    net = get_model(name, num_classes=10, norm=norm, num_groups=8, backend='ops')
    net.initialize(mx.init.Xavier())
    assert hasattr(net.layer1[0], 'conv3') == bottleneck
    depth = int(name[len('resnet'):-len('_small')])
    units = (depth - 2) // (9 if bottleneck else 6)
    assert [len(getattr(net, 'layer%d' % i)) for i in (1, 2, 3)] == [units] * 3
    out = net(mx.nd.random.uniform(shape=(2, 1, 28, 28)))
    assert out.shape == (2, 10) and np.isfinite(out.asnumpy()).all()


def test_last_gamma_zeroes_exactly_the_last_norm_of_each_block():
    for name, last in (('resnet18_v1b', 'bn2'), ('resnet50_v1b', 'bn3'),
                       ('resnet14_small', 'bn2'), ('resnet11_small', 'bn3')):
        for last_gamma in (True, False):
            net = get_model(name, num_classes=10, num_groups=16, backend='ops',
                            last_gamma=last_gamma)
            net.initialize()
            net(mx.nd.zeros((1, 3, 32, 32)))
            for key, param in net._collect_params_with_prefix().items():
                if key.endswith('.gamma'):
                    zero = last_gamma and key.endswith('.%s.gamma' % last)
                    expected = 0.0 if zero else 1.0
                    assert (param.data().asnumpy() == expected).all(), (name, key)


def test_vgg_layers_and_forward():
    for depth, convs in ((11, 8), (13, 10), (16, 13), (19, 16)):
        net = get_model('vgg%d' % depth, num_classes=10, backend='ops')
        assert sum(isinstance(b, nn.Conv2D) for b in net.features) == convs
    net = get_model('vgg16', num_classes=10, norm='gn', backend='ops')
    net.initialize(mx.init.Xavier())
    assert net(mx.nd.random.uniform(shape=(1, 3, 32, 32))).shape == (1, 10)
    assert net.features[0].bias is None  # the norm's beta is the bias
    plain = get_model('vgg11', num_classes=10, norm='none')
    assert plain.features[0].bias is not None


def test_one_training_step_moves_every_parameter():
    net = get_model('resnet11_small', num_classes=10, num_groups=8, backend='ops',
                    last_gamma=False)
    net.initialize(mx.init.Xavier())
    x, y = mx.nd.random.uniform(shape=(4, 1, 28, 28)), mx.nd.array([0, 1, 2, 3])
    net(x)
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    before = {k: p.data().asnumpy().copy() for k, p in net.collect_params().items()}
    with mx.autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    trainer.step(4)
    for key, param in net.collect_params().items():
        assert not np.array_equal(before[key], param.data().asnumpy()), key


# --- export: -symbol.json + .params, back through SymbolBlock and Module ---------------------
@pytest.mark.parametrize('backend', ['ops', 'custom', NATIVE])
def test_hybridized_gn_resnet50_exports_and_imports(tmp_path, backend):
    net = get_model('resnet50_v1b', norm='gn', backend=backend)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize()
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 64, 64))
    # Non-zero last gammas, so the residual branches count in the comparison.
    for key, param in net.collect_params().items():
        if key.endswith('gamma'):
            param.set_data(mx.nd.random.uniform(0.5, 1.5, shape=param.shape))
    expected = net(x).asnumpy()
    prefix = str(tmp_path / 'resnet50_gn')
    net.export(prefix, epoch=0)

    imported = nn.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                      prefix + '-0000.params')
    for _ in range(3):  # a race in a backend would show from the second call on
        np.testing.assert_allclose(imported(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)

    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
    module = mx.mod.Module(symbol, data_names=['data'], label_names=None)
    module.bind([('data', x.shape)], for_training=False)
    module.set_params(arg_params, aux_params)
    module.forward(mx.io.DataBatch([x]), is_train=False)
    np.testing.assert_allclose(module.get_outputs()[0].asnumpy(), expected, rtol=1e-5,
                               atol=1e-6)
