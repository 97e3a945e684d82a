"""symbols/resnet.py and symbols/vgg.py: the Symbol nets equal their Gluon twins on the same weights."""

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.models import from_symbol_params, get_model, to_symbol_params

from symbols import resnet, vgg


# The library is part of the install: a missing one fails these tests rather than skipping them.
NATIVE = 'native'


def randomize(net, seed=0):
    """Random values for every parameter, gammas and BN statistics included: with the
    default init (gamma 1 or 0, beta 0, mean 0, var 1) a swapped or skipped norm could hide."""
    rng = np.random.RandomState(seed)
    for name, param in net._collect_params_with_prefix().items():
        if name.endswith('running_var'):
            value = rng.uniform(0.5, 1.5, param.shape)
        elif name.endswith(('gamma', 'beta', 'running_mean', 'bias')):
            value = rng.uniform(-1, 1, param.shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(param.shape[1:])), param.shape)
        param.set_data(mx.nd.array(value))


def symbol_logits(symbol, logits_name, x, arg_params, aux_params):
    """Inference outputs of the layer ``logits_name`` through the Module API."""
    logits = symbol.get_internals()[logits_name + '_output']
    module = mx.mod.Module(logits, data_names=['data'], label_names=None)
    module.bind([('data', x.shape)], for_training=False)
    module.set_params(arg_params, aux_params)  # raises on any missing or extra name
    module.forward(mx.io.DataBatch([x]), is_train=False)
    return module.get_outputs()[0].asnumpy()


def compare(model, builder, depth, image_shape, logits_name, **kwargs):
    net = get_model(model, num_classes=10, **kwargs)
    net.initialize()
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, (2,) + image_shape))
    net(x)
    randomize(net)
    gluon_out = net(x).asnumpy()
    symbol = builder.get_symbol(10, depth, ','.join(map(str, image_shape)), **kwargs)
    arg_params, aux_params = to_symbol_params(net)
    symbol_out = symbol_logits(symbol, logits_name, x, arg_params, aux_params)
    return np.abs(gluon_out - symbol_out).max(), np.abs(gluon_out).max()


@pytest.mark.parametrize('backend', ['ops', 'custom', NATIVE])
def test_resnet50_gn_symbol_equals_gluon(backend):
    diff, scale = compare('resnet50_v1b', resnet, 50, (3, 64, 64), 'fc', norm='gn',
                          backend=backend)
    print('ResNet-50-GN (%s): max |Symbol - Gluon| = %.3g (logits up to %.3g)'
          % (backend, diff, scale))
    assert diff <= 1e-5


@pytest.mark.parametrize('model, builder, depth, image_shape, kwargs', [
    ('resnet18_v1b', resnet, 18, (3, 64, 64), dict(norm='bn')),
    ('resnet34_v1b', resnet, 34, (3, 64, 64), dict(norm='ln')),
    ('resnet20_small', resnet, 20, (1, 28, 28), dict(norm='gn', num_groups=8)),
    ('resnet11_small', resnet, 11, (3, 32, 32), dict(norm='in')),
    ('resnet8_small', resnet, 8, (1, 28, 28), dict(norm='none')),
    ('vgg11', vgg, 11, (3, 32, 32), dict(norm='gn')),
    ('vgg13', vgg, 13, (3, 32, 32), dict(norm='bn')),
    ('vgg11', vgg, 11, (3, 32, 32), dict(norm='none')),
])
def test_symbol_equals_gluon_for_every_family_and_norm(model, builder, depth, image_shape,
                                                        kwargs):
    logits = 'classifier_4' if builder is vgg else 'fc'
    diff, _ = compare(model, builder, depth, image_shape, logits, backend='ops', **kwargs)
    assert diff <= 1e-5, (model, kwargs, diff)


def test_symbol_params_load_back_into_gluon():
    net = get_model('resnet14_small', num_classes=10, norm='bn', num_groups=8, backend='ops')
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    randomize(net)
    arg_params, aux_params = to_symbol_params(net)
    again = get_model('resnet14_small', num_classes=10, norm='bn', num_groups=8, backend='ops')
    from_symbol_params(again, arg_params, aux_params)
    for (key, a), (_, b) in zip(sorted(net._collect_params_with_prefix().items()),
                                sorted(again._collect_params_with_prefix().items())):
        assert np.array_equal(a.data().asnumpy(), b.data().asnumpy()), key
    del arg_params['fc_bias']
    with pytest.raises(ValueError, match='fc_bias'):
        from_symbol_params(again, arg_params, aux_params)


@pytest.mark.parametrize('builder, depth, image_shape', [
    (resnet, 50, '3,224,224'), (resnet, 20, '1,28,28'), (resnet, 164, '3,32,32'),
    (vgg, 16, '3,224,224')])
def test_softmax_output_and_shapes(builder, depth, image_shape):
    symbol = builder.get_symbol(7, depth, image_shape, norm='gn', num_groups=16, backend='ops')
    assert symbol.list_outputs() == ['softmax_output']
    assert 'softmax_label' in symbol.list_arguments()
    channels, height, width = map(int, image_shape.split(','))
    _, out_shapes, _ = symbol.infer_shape(data=(2, channels, height, width))
    assert out_shapes == [(2, 7)]


def test_last_gamma_is_zero_after_module_init_and_only_there():
    symbol = resnet.get_symbol(10, 50, '3,64,64', norm='gn', backend='ops', last_gamma=True)
    module = mx.mod.Module(symbol, data_names=['data'], label_names=['softmax_label'])
    module.bind([('data', (1, 3, 64, 64))], [('softmax_label', (1,))])
    module.init_params(mx.init.Xavier())
    arg_params, _ = module.get_params()
    gammas = {k: v.asnumpy() for k, v in arg_params.items() if k.endswith('_gamma')}
    assert len(gammas) == 53
    for name, value in gammas.items():
        expected = 0.0 if name.endswith('_bn3_gamma') else 1.0
        assert (value == expected).all(), name


def test_float16_symbol_infers_types():
    for norm in ('gn', 'bn'):
        symbol = resnet.get_symbol(10, 20, '3,32,32', norm=norm, num_groups=8, backend='ops',
                                   dtype='float16')
        _, out_types, _ = symbol.infer_type(data=np.float32)
        assert out_types == [np.float32]
        conv_types = dict(zip(symbol.list_arguments(), symbol.infer_type(data=np.float32)[0]))
        assert conv_types['conv1_weight'] == np.float16


@pytest.mark.parametrize('call, words', [
    (lambda: resnet.get_symbol(10, 51, '3,224,224'), 'depth 51'),
    (lambda: resnet.get_symbol(10, 21, '3,32,32'), '6n\\+2'),
    (lambda: resnet.get_symbol(10, 50, '224,224'), 'channels,height,width'),
    (lambda: resnet.get_symbol(10, 50, '3,224,224', norm='gm'), "'gm'"),
    (lambda: resnet.get_symbol(10, 20, '3,32,32', num_groups=32, backend='ops'),
     'does not divide 16'),
    (lambda: resnet.get_symbol(10, 20, '3,32,32', dtype='int8'), 'int8'),
    (lambda: vgg.get_symbol(10, 16, '1,28,28'), '32x32'),
    (lambda: vgg.get_symbol(10, 17, '3,224,224'), 'VGG of depth 17'),
])
def test_bad_arguments_raise_clear_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['ops', NATIVE])
def test_resnet50_gn_symbol_equals_gluon_at_224(backend):
    diff, scale = compare('resnet50_v1b', resnet, 50, (3, 224, 224), 'fc', norm='gn',
                          backend=backend)
    print('ResNet-50-GN (%s) at 224: max |Symbol - Gluon| = %.3g (logits up to %.3g)'
          % (backend, diff, scale))
    assert diff <= 1e-5
