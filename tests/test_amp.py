"""MXNet AMP (mx.contrib.amp) and GroupNormalization (gn_mxnet/operator/mixed_precision.py).

What runs on CPU here: the conversions, the dtypes around the op in converted graphs, and the op
itself in float16 inside a converted graph. A converted ResNet does not run on CPU: MXNet 1.9's
CPU convolution has no float16 GEMM ("FP16 gemm on cpu not implemented"), and bfloat16
convolutions need a CPU with AVX-512 BF16; running those needs a GPU (or such a CPU).
amp.init() rewires mx.nd/mx.sym for the whole process, so those tests run in subprocesses.
"""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.contrib import amp

import gn_mxnet
from gn_mxnet.gluon import GroupNorm
from gn_mxnet.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OP = 'GroupNormalization'
BF16 = amp.amp.bfloat16


@pytest.fixture(scope='module')
def gn_resnet(native_library):
    net = get_model('resnet18_v1b', norm='gn', num_classes=10)
    net.initialize()
    net.hybridize()
    net(mx.nd.random.uniform(shape=(1, 3, 32, 32)))
    return net


def _norm_layers(net):
    return sum(1 for name in net.collect_params() if name.endswith('_gamma'))


def graph_dtypes(sym, **input_types):
    """{entry name: dtype name} of every output and argument of sym's graph, and its nodes
    (amp_cast included: tojson drops them unless told not to)."""
    internals = sym.get_internals()
    args, outs, _ = internals.infer_type(**input_types)
    names = internals.list_outputs() + internals.list_arguments()
    dtypes = {n: np.dtype(t).name for n, t in zip(names, outs + args)}
    return dtypes, json.loads(sym.tojson(remove_amp_cast=False))['nodes']


def around_the_op(sym, **input_types):
    """[(input (op, dtype) x3, output dtype x3)] for each GroupNormalization node."""
    dtypes, nodes = graph_dtypes(sym, **input_types)

    def entry(node_id, index):
        node = nodes[node_id]
        if node['op'] == 'null':
            return node['name']
        single = node['name'] + '_output'
        return single if single in dtypes else '%s_output%d' % (node['name'], index)
    def producer(node_id):
        while nodes[node_id]['op'] == 'Reshape':
            node_id = nodes[node_id]['inputs'][0][0]
        return nodes[node_id]['op']

    found = []
    for node in nodes:
        if node['op'] == OP:
            # x, gamma, beta (a fused node's 4th input, the residual, is data-typed like x);
            # the op the input comes from, seen through the native front's plain-copy
            # Reshape (MKLDNN graphs), with the dtype the op receives.
            inputs = tuple((producer(i), dtypes[entry(i, j)]) for i, j, _ in node['inputs'][:3])
            outputs = tuple(dtypes['%s_output%d' % (node['name'], k)] for k in range(3))
            found.append((inputs, outputs))
    return found


def test_the_op_is_in_amp_lists_on_purpose(native_library):
    assert OP in amp.list_lp16_fp32_ops('float16')
    assert OP not in amp.list_lp16_ops('float16') + amp.list_fp32_ops('float16')
    assert OP in amp.list_fp32_ops(BF16)
    assert OP not in amp.list_lp16_ops(BF16) + amp.list_lp16_fp32_ops(BF16)


@pytest.mark.parametrize('target, inputs, outputs', [
    # No cast in front: data straight from the float16 convolution; gamma/beta through the
    # front's identity, typed float16 by the op (unknown parameters take data's dtype).
    ('float16', (('Convolution', 'float16'), ('_copy', 'float16'), ('_copy', 'float16')),
     ('float16', 'float32', 'float32')),
    # No bfloat16 kernel: AMP casts the bfloat16 convolution's output to float32 for the op.
    ('bfloat16', (('amp_cast', 'float32'), ('_copy', 'float32'), ('_copy', 'float32')),
     ('float32', 'float32', 'float32')),
])
def test_conversion_gives_the_op_the_dtypes_it_is_listed_for(gn_resnet, target, inputs, outputs):
    _, sym = gn_resnet._cached_graph
    converted = amp.convert_symbol(sym, target, data_names=['data'])
    ops = around_the_op(converted, data='float32')
    assert len(ops) == _norm_layers(gn_resnet)
    assert all(op == (inputs, outputs) for op in ops), ops


def test_convert_hybrid_block_stores_gamma_beta_as_the_op_infers(gn_resnet):
    block = amp.convert_hybrid_block(gn_resnet, 'float16', ctx=mx.cpu())
    params = {name: p.dtype for name, p in block.collect_params().items()}
    norms = [n for n in params if n.endswith(('_gamma', '_beta'))]
    assert len(norms) == 2 * _norm_layers(gn_resnet) and all(params[n] == np.float16 for n in norms)
    # Convolution weights stay float32: AMP casts them in the graph.
    assert all(params[n] == np.float32 for n in params if n.endswith('conv0_weight'))
    # Running it needs a GPU: MXNet 1.9 has no float16 convolution on CPU.
    with pytest.raises(mx.MXNetError, match='FP16 gemm on cpu not implemented'):
        block(mx.nd.zeros((1, 3, 32, 32))).wait_to_read()


@pytest.mark.parametrize('override, data_in, params_in, out', [
    # The user's list wins: in fp32_ops the op gets float32 copies of everything.
    ('fp32_ops', ('amp_cast', 'float32'), ('amp_cast', 'float32'), 'float32'),
    # In target_dtype_ops AMP casts gamma/beta (float32 variables) to float16 per call.
    ('target_dtype_ops', ('Convolution', 'float16'), ('amp_cast', 'float16'), 'float16'),
])
def test_amp_lists_accept_the_op_name(gn_resnet, override, data_in, params_in, out):
    _, sym = gn_resnet._cached_graph
    lists = {'fp32_ops': amp.list_fp32_ops('float16'),
             'target_dtype_ops': amp.list_lp16_ops('float16')}
    converted = amp.convert_symbol(sym, 'float16', data_names=['data'],
                                   **{override: lists[override] + [OP]})
    for inputs, outputs in around_the_op(converted, data='float32'):
        assert inputs == (data_in, params_in, params_in), inputs
        assert outputs == (out, 'float32', 'float32'), outputs


def _gn_block(channels=8):
    block = mx.gluon.nn.HybridSequential()
    block.add(GroupNorm(num_groups=4, in_channels=channels), mx.gluon.nn.Activation('relu'))
    block.initialize()
    for name, param in block.collect_params().items():  # a non-trivial affine
        param.set_data(mx.nd.random.uniform(0.5, 1.5, param.shape))
    block.hybridize()
    return block


def test_the_op_runs_in_float16_inside_a_converted_graph():
    x = mx.nd.random.normal(2, 3, shape=(2, 8, 5, 5))
    block = _gn_block()
    expected = block(x).asnumpy()
    tolerance = 1e-2 * np.abs(expected).max()
    # Default lists: float16 data in, float16 y out, no cast in front of the op, gamma/beta as
    # the graph gives them (float32 Parameters here). AMP casts the graph's output to float32.
    converted = amp.convert_hybrid_block(block, 'float16', ctx=mx.cpu())
    y = converted(x.astype('float16'))
    assert around_the_op(converted._cached_graph[1], data='float16') == [
        ((('_copy', 'float16'), ('_copy', 'float32'), ('_copy', 'float32')),
         ('float16', 'float32', 'float32'))]
    assert np.abs(y.asnumpy() - expected).max() < tolerance
    # Forced into float16 by the user's list: AMP casts float32 data and gamma/beta in front.
    forced = amp.convert_hybrid_block(block, 'float16', target_dtype_ops=[OP], fp32_ops=[],
                                      conditional_fp32_ops=[], ctx=mx.cpu())
    y = forced(x)
    assert around_the_op(forced._cached_graph[1], data='float32') == [
        ((('amp_cast', 'float16'),) * 3, ('float16', 'float32', 'float32'))]
    assert np.abs(y.asnumpy() - expected).max() < tolerance


# --- amp.init() and the load order ----------------------------------------------------------
_ORDER = '''
import json, sys
import mxnet as mx
import numpy as np
from mxnet.contrib import amp
import gn_mxnet

if sys.argv[1] == 'amp first':
    amp.init(**json.loads(sys.argv[2]))
    gn_mxnet.load_library()
else:
    gn_mxnet.load_library()
    amp.init(**json.loads(sys.argv[2]))
wrapped = lambda f: f.__code__.co_filename == amp.amp.__file__
data = mx.sym.var('data')
conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=8, no_bias=True, name='conv')
y = gn_mxnet.group_norm(conv, mx.sym.var('gamma'), mx.sym.var('beta'), num_groups=4)
internals = y.get_internals()
# Gluon's Parameters are float32 under amp.init(); AMP's casts leave them to be declared.
_, types, _ = internals.infer_type(data='float32', conv_weight='float32', gamma='float32',
                                   beta='float32')
dtypes = {n: np.dtype(t).name for n, t in zip(internals.list_outputs(), types)}
nd = mx.nd.GroupNormalization(mx.nd.ones((2, 8, 3), dtype='float16'), mx.nd.ones(8),
                              mx.nd.zeros(8), num_groups=4)
print(json.dumps({
    'wrapped': [wrapped(f) for f in (mx.nd.Convolution, mx.nd.op.Convolution, mx.sym.Convolution,
                                     mx.nd.SoftmaxOutput, mx.sym.contrib.MultiBoxPrior)],
    'gn': [dtypes[k] for k in sorted(dtypes) if k.startswith('groupnormalization0_output')],
    'casts': [n for n in internals.list_outputs() if 'amp_cast' in n],
    'nd': [o.dtype.__name__ for o in nd]}))
'''


@pytest.mark.parametrize('order', ['amp first', 'library first'])
def test_amp_init_survives_either_load_order(native_library, order):
    done = subprocess.run([sys.executable, '-c', _ORDER, order, '{}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    # AMP's casting wrappers are still in place, in mx.nd, mx.nd.op, mx.sym and submodules.
    assert found['wrapped'] == [True] * 5, found
    assert len(found['casts']) == 2, found  # data and weight of the convolution, none at GN
    assert found['gn'] == ['float16', 'float32', 'float32'], found
    assert found['nd'] == ['float16', 'float32', 'float32'], found


def test_amp_init_accepts_the_op_in_its_lists_after_load_library(native_library):
    fp32 = json.dumps({'fp32_ops': [OP]})
    done = subprocess.run([sys.executable, '-c', _ORDER, 'library first', fp32], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found['gn'] == ['float32', 'float32', 'float32'], found
