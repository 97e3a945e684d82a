"""gn_mxnet.sym.GroupNorm, the Symbol API in MXNet's convention, and keyword inputs for the
compiled op's own functions mx.sym/mx.nd.GroupNormalization."""
import json

import mxnet as mx
import numpy as np
import pytest

import gn_mxnet
from gn_mxnet.sym import GroupNorm

import gn_reference


@pytest.fixture(scope='module', autouse=True)
def library():
    gn_mxnet.load_library()


def _op_nodes(symbol):
    return {node['name']: node for node in json.loads(symbol.tojson())['nodes']
            if node['op'] != 'null'}


def _forward(symbol, **arrays):
    executor = symbol.bind(mx.cpu(), {k: mx.nd.array(v) for k, v in arrays.items()})
    return executor.forward()


@pytest.mark.parametrize('backend', gn_mxnet.BACKENDS)
@pytest.mark.parametrize('axis, shape', [(1, (2, 8, 3, 5)), (-1, (2, 3, 5, 8))])
def test_group_norm_symbol_creates_named_variables_and_one_output(backend, axis, shape):
    y = GroupNorm(data=mx.sym.Variable('data'), num_groups=4, eps=1e-3, axis=axis,
                  name='gn1', backend=backend)
    assert y.list_arguments() == ['data', 'gn1_gamma', 'gn1_beta']
    assert len(y.list_outputs()) == 1
    op = 'GroupNormalization' if backend == 'native' else 'Custom'
    if backend != 'ops':  # the stock-op composition has no one op node
        assert _op_nodes(y)['gn1']['op'] == op
    assert all(name == 'gn1' or name.startswith('gn1_') for name in _op_nodes(y))
    arg_shapes, _, _ = y.infer_shape(data=shape)
    assert arg_shapes[1:] == [(8,), (8,)]
    rng = np.random.RandomState(0)
    x, gamma, beta = rng.normal(3, 2, shape), rng.uniform(0.5, 2, 8), rng.uniform(-1, 1, 8)
    out = _forward(y, data=x, gn1_gamma=gamma, gn1_beta=beta)
    assert len(out) == 1
    expected = gn_reference.forward(x, gamma, beta, 4, eps=1e-3, axis=axis)
    np.testing.assert_allclose(out[0].asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_variables_carry_ones_and_zeros_inits():
    attrs = GroupNorm(data=mx.sym.Variable('data'), num_groups=2, name='gn').attr_dict()
    assert json.loads(attrs['gn_gamma']['__init__'])[0] == 'one'
    assert json.loads(attrs['gn_beta']['__init__'])[0] == 'zero'


def test_given_gamma_and_beta_are_used_not_created():
    gamma, beta = mx.sym.Variable('my_scale'), mx.sym.Variable('my_shift')
    y = GroupNorm(data=mx.sym.Variable('data'), gamma=gamma, beta=beta, num_groups=2,
                  name='gn')
    assert y.list_arguments() == ['data', 'my_scale', 'my_shift']
    only_beta = GroupNorm(data=mx.sym.Variable('data'), beta=beta, num_groups=2, name='gn')
    assert only_beta.list_arguments() == ['data', 'gn_gamma', 'my_shift']


def test_unnamed_layers_get_unique_names_and_a_prefix_applies_once():
    data = mx.sym.Variable('data')
    with mx.name.NameManager():
        first = GroupNorm(data=data, num_groups=2)
        second = GroupNorm(data=first, num_groups=2)
    assert second.list_arguments() == ['data', 'groupnorm0_gamma', 'groupnorm0_beta',
                                       'groupnorm1_gamma', 'groupnorm1_beta']
    with mx.name.Prefix('stage1_'):
        named = GroupNorm(data=data, num_groups=2, name='gn')
        auto = GroupNorm(data=named, num_groups=2)
    assert auto.list_arguments() == ['data', 'stage1_gn_gamma', 'stage1_gn_beta',
                                     'stage1_groupnorm0_gamma', 'stage1_groupnorm0_beta']
    assert 'stage1_gn' in _op_nodes(named) and 'stage1_stage1_gn' not in _op_nodes(named)


@pytest.mark.parametrize('call, error, words', [
    (lambda: GroupNorm(data=mx.nd.ones((2, 4))), TypeError, 'gn_mxnet.group_norm'),
    (lambda: GroupNorm(num_groups=2), TypeError, 'Symbol'),
    (lambda: GroupNorm(data=mx.sym.var('x'), gamma=mx.nd.ones(4)), TypeError, 'gamma'),
    (lambda: GroupNorm(data=mx.sym.var('x'), num_groups=0), ValueError, 'num_groups'),
    (lambda: GroupNorm(data=mx.sym.var('x'), backend='cuda'), ValueError, 'backend'),
])
def test_bad_arguments_raise_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_compiled_op_accepts_keyword_inputs_and_keeps_three_outputs():
    data, gamma, beta = (mx.sym.Variable(n) for n in ('x', 'g', 'b'))
    positional = mx.sym.GroupNormalization(data, gamma, beta, num_groups=2)
    keywords = mx.sym.GroupNormalization(data=data, gamma=gamma, beta=beta, num_groups=2,
                                         name='kw')
    mixed = mx.sym.op.GroupNormalization(data, beta=beta, gamma=gamma, num_groups=2)
    for symbol in (positional, keywords, mixed):
        assert symbol.list_arguments() == ['x', 'g', 'b']
        assert len(symbol.list_outputs()) == 3
    assert keywords.name == 'kw'
    rng = np.random.RandomState(1)
    x, g, b = rng.normal(size=(2, 4, 3)), rng.uniform(size=4), rng.uniform(size=4)
    expected = [o.asnumpy() for o in _forward(positional, x=x, g=g, b=b)]
    for symbol in (keywords, mixed):
        for got, want in zip(_forward(symbol, x=x, g=g, b=b), expected):
            np.testing.assert_array_equal(got.asnumpy(), want)
    nd_out = mx.nd.GroupNormalization(data=mx.nd.array(x), beta=mx.nd.array(b),
                                      gamma=mx.nd.array(g), num_groups=2)
    assert len(nd_out) == 3
    np.testing.assert_array_equal(nd_out[0].asnumpy(), expected[0])


@pytest.mark.parametrize('namespace', [mx.sym, mx.nd])
def test_compiled_op_without_gamma_points_at_the_symbol_api(namespace):
    data = mx.sym.var('x') if namespace is mx.sym else mx.nd.ones((2, 4, 3))
    with pytest.raises(ValueError, match=r'missing gamma, beta.*gn_mxnet\.sym\.GroupNorm'):
        namespace.GroupNormalization(data=data, num_groups=2)
    with pytest.raises(TypeError, match='both'):
        namespace.GroupNormalization(data, data, data, data=data, num_groups=2)


def test_keyword_wrapper_survives_a_second_load_library_call():
    before = mx.sym.GroupNormalization
    gn_mxnet.load_library()
    assert mx.sym.GroupNormalization is before is mx.sym.op.GroupNormalization
    assert mx.nd.GroupNormalization is mx.nd.op.GroupNormalization


def residual_unit(data, num_filter, stride, dim_match, name, num_groups=4):
    """MXNet's example/image-classification/symbols/resnet.py residual_unit (pre-activation,
    basic), its BatchNorm(data=..., name=...) calls swapped for gn_mxnet.sym.GroupNorm."""
    gn1 = GroupNorm(data=data, num_groups=num_groups, eps=2e-5, name=name + '_gn1')
    act1 = mx.sym.Activation(data=gn1, act_type='relu', name=name + '_relu1')
    conv1 = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(3, 3), stride=stride,
                               pad=(1, 1), no_bias=True, name=name + '_conv1')
    gn2 = GroupNorm(data=conv1, num_groups=num_groups, eps=2e-5, name=name + '_gn2')
    act2 = mx.sym.Activation(data=gn2, act_type='relu', name=name + '_relu2')
    conv2 = mx.sym.Convolution(data=act2, num_filter=num_filter, kernel=(3, 3), stride=(1, 1),
                               pad=(1, 1), no_bias=True, name=name + '_conv2')
    if dim_match:
        shortcut = data
    else:
        shortcut = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(1, 1),
                                      stride=stride, no_bias=True, name=name + '_sc')
    return conv2 + shortcut


def tiny_resnet(num_classes=2):
    body = mx.sym.Convolution(data=mx.sym.Variable('data'), num_filter=8, kernel=(3, 3),
                              pad=(1, 1), no_bias=True, name='conv0')
    body = residual_unit(body, 8, (1, 1), True, 'stage1_unit1')
    body = residual_unit(body, 16, (2, 2), False, 'stage2_unit1')
    body = mx.sym.Activation(GroupNorm(data=body, num_groups=4, name='gn_final'),
                             act_type='relu')
    pooled = mx.sym.Pooling(body, global_pool=True, kernel=(1, 1), pool_type='avg')
    logits = mx.sym.FullyConnected(mx.sym.Flatten(pooled), num_hidden=num_classes, name='fc')
    return mx.sym.SoftmaxOutput(logits, name='softmax')


class _SevensForNormParams(mx.init.Xavier):
    """Xavier, except that parameters named *gamma/*beta without an init of their own get 7:
    the ones/zeros seen after init_params can then only come from GroupNorm's variables."""

    def _init_gamma(self, _, arr):
        arr[:] = 7.0

    def _init_beta(self, _, arr):
        arr[:] = 7.0


def _stripes(count, rng):
    """Two classes of 8x8 images: horizontal vs vertical stripes, under noise and a random
    brightness offset (which GroupNorm removes)."""
    labels = rng.randint(0, 2, count)
    stripes = np.tile((np.arange(8) % 2)[:, None], (1, 8)).astype(np.float32)
    images = np.where(labels[:, None, None] == 0, stripes, stripes.T)
    images = images + rng.normal(0, 0.6, images.shape) + rng.normal(0, 3, (count, 1, 1))
    return images[:, None].astype(np.float32), labels.astype(np.float32)


def test_example_style_residual_net_trains_with_module_fit():
    mx.random.seed(0)
    rng = np.random.RandomState(0)
    images, labels = _stripes(256, rng)
    train = mx.io.NDArrayIter(images, labels, batch_size=32, shuffle=True,
                              label_name='softmax_label')
    module = mx.mod.Module(tiny_resnet(), data_names=['data'], label_names=['softmax_label'])
    module.bind(train.provide_data, train.provide_label)
    module.init_params(_SevensForNormParams(rnd_type='gaussian', magnitude=2))
    arg_params, _ = module.get_params()
    norm_params = [n for n in arg_params if n.endswith(('_gamma', '_beta'))]
    assert len(norm_params) == 10
    for name in norm_params:
        expected = 1.0 if name.endswith('_gamma') else 0.0
        assert (arg_params[name].asnumpy() == expected).all(), name
    before = dict(module.score(train, ['acc', 'ce']))
    train.reset()  # score leaves it exhausted; fit does not rewind before its first epoch
    module.fit(train, num_epoch=4, optimizer='sgd',
               optimizer_params={'learning_rate': 0.1, 'momentum': 0.9},
               eval_metric='acc')
    after = dict(module.score(train, ['acc', 'ce']))
    print('before', before, 'after', after)
    assert after['cross-entropy'] < 0.5 * before['cross-entropy']
    assert after['accuracy'] >= 0.9 and after['accuracy'] > before['accuracy'] + 0.2
    trained, _ = module.get_params()
    assert not (trained['stage1_unit1_gn1_gamma'].asnumpy() == 1.0).all()
