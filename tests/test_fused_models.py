"""The ResNet builders' fused form (norm → relu, norm → add → relu in one GroupNorm call):
same parameter names as the unfused twin, weights load either way, same outputs and gradients;
BN, 'none' and the gluoncv drop-in stay unfused."""
import json

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.resnetv1b import BasicBlockV1b, BottleneckV1b

import gn_mxnet
from gn_mxnet.models import get_model
from gn_mxnet.models.resnet import FusedBasicBlockV1b, FusedBottleneckV1b
from gn_mxnet.norms import ChannelsPerGroupNorm, make_norm

from symbols import resnet

NATIVE = 'native'


def _randomize(net, seed=0):
    # gammas and betas away from 1/0 so that a skipped add or relu shows in the output
    rng = np.random.RandomState(seed)
    for name, param in sorted(net._collect_params_with_prefix().items()):
        if name.endswith(('gamma', 'beta', 'bias')):
            value = rng.uniform(-1, 1, param.shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(param.shape[1:])), param.shape)
        param.set_data(mx.nd.array(value))


def _outputs_and_grads(net, x):
    x = x.copy()
    x.attach_grad()
    with mx.autograd.record():
        out = net(x)
        loss = (out * mx.nd.arange(out.size).reshape(out.shape)).sum()
    loss.backward()
    grads = {name: p.grad().asnumpy() for name, p in net._collect_params_with_prefix().items()}
    return out.asnumpy(), x.grad.asnumpy(), grads


def _graph_ops(net, x):
    net.hybridize()
    net(x)
    nodes = json.loads(net._cached_graph[1].tojson())['nodes']
    return [(n['op'], n.get('attrs', {})) for n in nodes if n['op'] != 'null']


CASES = [('resnet8_small', {'norm': 'gn', 'num_groups': 4}, (2, 3, 16, 16)),
         ('resnet11_small', {'norm': ChannelsPerGroupNorm(4)}, (2, 3, 16, 16)),
         ('resnet8_small', {'norm': 'in'}, (2, 1, 12, 12)),
         ('resnet18_v1b', {'norm': 'gn', 'num_groups': 8}, (1, 3, 32, 32)),
         ('resnet50_v1b', {'norm': 'ln'}, (1, 3, 32, 32))]


@pytest.mark.parametrize('model,kwargs,shape', CASES)
def test_fused_net_loads_into_unfused_twin_and_agrees(tmp_path, model, kwargs, shape):
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, shape))
    fused = get_model(model, num_classes=10, backend=NATIVE, **kwargs)
    plain = get_model(model, num_classes=10, backend=NATIVE, fused=False, **kwargs)
    for net in (fused, plain):
        net.initialize()
        net(x)
    assert sorted(fused.collect_params()) == sorted(plain.collect_params())
    _randomize(fused)
    fused.save_parameters(str(tmp_path / 'fused.params'))
    plain.load_parameters(str(tmp_path / 'fused.params'))
    got, want = _outputs_and_grads(fused, x), _outputs_and_grads(plain, x)
    scale = max(np.abs(want[0]).max(), 1.0)
    assert np.abs(got[0] - want[0]).max() <= 1e-5 * scale
    for g, w in [(got[1], want[1])] + [(got[2][n], want[2][n]) for n in want[2]]:
        assert np.abs(g - w).max() <= 1e-4 * max(np.abs(w).max(), 1.0)
    # the fused net really is fused: one relu-GroupNorm per norm → relu, none left unfused
    fused_ops, plain_ops = _graph_ops(fused, x), _graph_ops(plain, x)
    assert not any(op == 'Activation' for op, _ in fused_ops)
    relu_norms = [a for op, a in fused_ops if op == 'GroupNormalization'
                  and a.get('act_type') == 'relu']
    assert len(relu_norms) == sum(op == 'Activation' for op, _ in plain_ops)
    assert sum(a.get('has_residual') == '1' for a in relu_norms) == sum(
        op in ('elemwise_add', '_plus', 'broadcast_add') for op, _ in plain_ops)


@pytest.mark.parametrize('norm', ['bn', 'none'])
def test_bn_and_none_nets_are_gluoncvs_blocks(norm):
    net = get_model('resnet8_small', num_classes=10, norm=norm)
    assert type(net.layer1[0]) is BasicBlockV1b
    assert type(get_model('resnet50_v1b', norm=norm).layer1[0]) is BottleneckV1b


def test_group_norm_builders_use_the_fused_blocks():
    assert type(get_model('resnet8_small', norm='gn', num_groups=4).layer1[0]) \
        is FusedBasicBlockV1b
    assert type(get_model('resnet50_v1b').layer1[0]) is FusedBottleneckV1b


def test_gluoncv_drop_in_stays_unfused():
    from gluoncv.model_zoo.resnetv1b import resnet18_v1b
    net = resnet18_v1b(norm_layer=make_norm('gn', backend=NATIVE))
    assert type(net.layer1[0]) is BasicBlockV1b
    assert net.layer1[0].bn1._attrs.act_type == 'none'
    assert net.bn1._attrs.act_type == 'none'


def _symbol_outputs(symbol, x, arg_params):
    module = mx.mod.Module(symbol.get_internals()['fc_output'], data_names=['data'],
                           label_names=None)
    module.bind([('data', x.shape)], for_training=False)
    module.set_params(arg_params, {})
    module.forward(mx.io.DataBatch([x]), is_train=False)
    return module.get_outputs()[0].asnumpy()


@pytest.mark.parametrize('depth,image_shape', [(8, (3, 16, 16)), (11, (3, 16, 16)),
                                               (50, (3, 64, 64))])
def test_fused_symbol_keeps_arg_names_and_outputs(depth, image_shape):
    gn_mxnet.load_library()
    shape = ','.join(map(str, image_shape))
    kwargs = dict(norm='gn', num_groups=8 if depth > 32 else 4, backend=NATIVE)
    fused = resnet.get_symbol(10, depth, shape, **kwargs)
    plain = resnet.get_symbol(10, depth, shape, fused=False, **kwargs)
    assert fused.list_arguments() == plain.list_arguments()
    assert fused.list_auxiliary_states() == plain.list_auxiliary_states() == []
    ops = [n['op'] for n in json.loads(fused.tojson())['nodes']]
    assert 'Activation' not in ops and 'elemwise_add' not in ops and '_Plus' not in ops
    x = mx.nd.array(np.random.RandomState(2).uniform(-1, 1, (2,) + image_shape))
    arg_shapes, _, _ = plain.infer_shape(data=x.shape)
    rng = np.random.RandomState(3)
    args = {name: mx.nd.array(rng.uniform(-0.5, 0.5, s))
            for name, s in zip(plain.list_arguments(), arg_shapes)
            if name not in ('data', 'softmax_label')}
    got, want = _symbol_outputs(fused, x, args), _symbol_outputs(plain, x, args)
    assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0)


def test_bn_symbol_is_unchanged_by_the_switch():
    def build(**kwargs):
        with mx.name.NameManager():  # automatic node names count from 0 for each build
            return resnet.get_symbol(10, 8, '3,16,16', norm='bn', **kwargs).tojson()
    assert build() == build(fused=False)


def test_norms_without_a_fused_form_refuse_it_by_name():
    with pytest.raises(ValueError, match="norm='bn' has no fused form"):
        make_norm('bn').symbol(mx.sym.var('x'), 'bn1', 8, act_type='relu')
