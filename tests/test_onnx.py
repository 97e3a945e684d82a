"""ONNX export (gn_mxnet.onnx, and mx.onnx.export_model once it is imported) of nets with
GroupNorm on every backend and with weight-standardized convolutions on both WS backends, run in
onnxruntime against MXNet; GroupNormalization-21 checked with onnx's checker, its reference
evaluator and onnxruntime. Needs: pip install -e ".[onnx]"."""
import json

import mxnet as mx
import numpy as np
import pytest

onnx = pytest.importorskip('onnx', reason='the onnx extra is not installed: '
                           'pip install -e ".[onnx]"')
ort = pytest.importorskip('onnxruntime', reason='the onnx extra is not installed: '
                          'pip install -e ".[onnx]"')

import gn_mxnet  # noqa: E402
import gn_mxnet.onnx as gn_onnx  # noqa: E402
from gn_mxnet.models import get_model, make_conv, to_symbol_params  # noqa: E402
from gn_mxnet.gluon import StdConv2D  # noqa: E402
from gn_mxnet.operator.validation import WS_BACKENDS, WS_CONVENTIONS  # noqa: E402
from gn_mxnet.sym import GroupNorm  # noqa: E402
from symbols import resnet  # noqa: E402

RELATIVE_TOLERANCE = 1e-4
WS_TOLERANCE = 1e-5  # issue 26: a weight-standardized conv runs in onnxruntime within 1e-5


@pytest.fixture(scope='module', autouse=True)
def library():
    gn_mxnet.load_library()


def run_onnxruntime(path, inputs):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # MXNet lists weights as graph inputs: a warning per weight
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return session, session.run(None, inputs)


def relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def op_types(path):
    return [node.op_type for node in onnx.load(path).graph.node]


def export_hybridized(block, tmp_path, shape, name):
    """block.export's files, exported to ONNX by gn_mxnet.onnx; returns the .onnx path."""
    block.export(str(tmp_path / name))
    return gn_onnx.export_model(str(tmp_path / (name + '-symbol.json')),
                                str(tmp_path / (name + '-0000.params')), [shape], np.float32,
                                str(tmp_path / (name + '.onnx')))


def gn_params(prefix, channels, rng):
    return {prefix + '_gamma': mx.nd.array(rng.uniform(0.5, 1.5, channels)),
            prefix + '_beta': mx.nd.array(rng.uniform(-0.5, 0.5, channels))}


def mxnet_outputs(symbol, params, **data):
    arrays = {k: mx.nd.array(v, dtype=v.dtype) for k, v in data.items()}
    arrays.update(params)
    return [o.asnumpy() for o in symbol.bind(mx.cpu(), arrays).forward()]


# Groups of 16 to 108 elements whose means sit far from 0 (x ~ N(3, 2)), in both layouts.
LAYOUTS = [(1, (2, 16, 6, 9)), (-1, (2, 6, 9, 16)), (-1, (2, 4, 3, 5, 16)), (1, (3, 16))]


@pytest.mark.parametrize('backend', gn_mxnet.BACKENDS)
@pytest.mark.parametrize('axis, shape', LAYOUTS)
@pytest.mark.parametrize('exporter', ['gn_mxnet', 'mxnet'])
def test_group_norm_of_every_backend_and_layout_runs_in_onnxruntime(backend, axis, shape,
                                                                    exporter, tmp_path):
    rng = np.random.RandomState(0)
    y = GroupNorm(data=mx.sym.Variable('data'), num_groups=4, axis=axis, name='gn',
                  backend=backend)
    params = gn_params('gn', 16, rng)
    x = rng.normal(3, 2, shape).astype(np.float32)
    path = str(tmp_path / 'gn.onnx')
    export = gn_onnx.export_model if exporter == 'gn_mxnet' else mx.onnx.export_model
    export(y, params, [shape], np.float32, path)
    if backend != 'ops':  # 'ops' is exported op by op, through the repaired stock translations
        assert 'InstanceNormalization' in op_types(path)
        assert 'Custom' not in op_types(path) and 'GroupNormalization' not in op_types(path)
    _, (got,) = run_onnxruntime(path, {'data': x})
    (want,) = mxnet_outputs(y, params, data=x)
    assert got.shape == want.shape
    assert relative_error(got, want) <= RELATIVE_TOLERANCE


def test_channels_last_net_runs_in_onnxruntime_within_tolerance(tmp_path):
    """NHWC conv output → GN over the last axis → relu; GN's input has a per-channel offset."""
    rng = np.random.RandomState(3)
    data = mx.sym.Variable('data')
    conv = mx.sym.Convolution(data, num_filter=64, kernel=(3, 3), pad=(1, 1), name='conv')
    nhwc = mx.sym.transpose(conv, axes=(0, 2, 3, 1))
    out = mx.sym.Activation(GroupNorm(data=nhwc, num_groups=8, axis=-1, name='gn'), 'relu')
    params = gn_params('gn', 64, rng)
    params['conv_weight'] = mx.nd.array(rng.normal(0, 0.2, (64, 3, 3, 3)))
    params['conv_bias'] = mx.nd.array(rng.normal(5, 3, 64))
    x = rng.normal(0, 1, (2, 3, 17, 23)).astype(np.float32)
    path = gn_onnx.export_model(out, params, [x.shape], np.float32, str(tmp_path / 'nhwc.onnx'))
    assert 'Transpose' in op_types(path)
    _, (got,) = run_onnxruntime(path, {'data': x})
    error = relative_error(got, mxnet_outputs(out, params, data=x)[0])
    print('channels-last GN: onnxruntime vs MXNet, max relative error %.2g' % error)
    assert error <= RELATIVE_TOLERANCE


def test_compiled_op_exports_y_mean_and_rstd(tmp_path):
    rng = np.random.RandomState(1)
    raw = mx.sym.GroupNormalization(mx.sym.Variable('data'), mx.sym.Variable('g'),
                                    mx.sym.Variable('b'), num_groups=4, eps=1e-3, name='raw')
    params = {'g': mx.nd.array(rng.uniform(size=16)), 'b': mx.nd.array(rng.uniform(size=16))}
    x = rng.normal(3, 2, (2, 16, 5, 5)).astype(np.float32)
    path = gn_onnx.export_model(raw, params, [x.shape], np.float32, str(tmp_path / 'raw.onnx'))
    session, got = run_onnxruntime(path, {'data': x})
    assert [o.name for o in session.get_outputs()] == ['raw0', 'raw1', 'raw2']
    for name, ours, theirs in zip(('y', 'mean', 'rstd'), got, mxnet_outputs(raw, params, data=x)):
        assert ours.shape == theirs.shape, name
        assert relative_error(ours, theirs) <= RELATIVE_TOLERANCE, name
    # Inside a net, unread statistics are not computed at all.
    y_only = GroupNorm(data=mx.sym.Variable('data'), num_groups=4, name='gn')
    path = gn_onnx.export_model(mx.sym.relu(y_only), gn_params('gn', 16, rng), [x.shape],
                                np.float32, str(tmp_path / 'y.onnx'))
    assert 'GlobalAveragePool' not in op_types(path)


@pytest.mark.parametrize('axis, shape', [(1, (2, 16, 4, 4)), (-1, (2, 4, 4, 16))])
def test_float16_export_keeps_float32_statistics(axis, shape, tmp_path):
    rng = np.random.RandomState(7)
    raw = mx.sym.GroupNormalization(mx.sym.Variable('data'), mx.sym.Variable('g'),
                                    mx.sym.Variable('b'), num_groups=4, axis=axis, name='raw')
    params = {'g': mx.nd.array(rng.uniform(0.5, 1.5, 16), dtype='float16'),
              'b': mx.nd.array(rng.uniform(-0.5, 0.5, 16), dtype='float16')}
    x = rng.normal(3, 2, shape).astype(np.float16)
    path = gn_onnx.export_model(raw, params, [shape], np.float16, str(tmp_path / 'h.onnx'))
    _, got = run_onnxruntime(path, {'data': x})
    want = mxnet_outputs(raw, params, data=x)
    assert [o.dtype for o in got] == [np.float16, np.float32, np.float32]
    assert relative_error(got[0].astype(np.float32), want[0].astype(np.float32)) <= 1e-3
    for ours, theirs in zip(got[1:], want[1:]):
        assert relative_error(ours, theirs) <= RELATIVE_TOLERANCE


def randomize_norms(net, rng):
    """gamma/beta away from 1/0, so a dropped or misplaced affine shows."""
    for name, param in net.collect_params().items():
        if name.endswith('gamma'):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
        elif name.endswith('beta'):
            param.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, param.shape)))


@pytest.mark.parametrize('model', ['resnet18_v1b', 'resnet50_v1b'])
def test_exported_gluoncv_resnet_with_gn_matches_mxnet(model, tmp_path):
    mx.random.seed(2)  # the Xavier weights: the same net, so the same measured error, each run
    rng = np.random.RandomState(2)
    net = get_model(model, num_classes=10, norm='gn')
    net.initialize(mx.init.Xavier(magnitude=2))
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 64, 64)))
    net(x)
    randomize_norms(net, rng)
    net.hybridize()
    want = net(x).asnumpy()
    path = export_hybridized(net, tmp_path, x.shape, model)
    assert op_types(path).count('InstanceNormalization') == (20 if model == 'resnet18_v1b'
                                                              else 53)
    _, (got,) = run_onnxruntime(path, {'data': x.asnumpy()})
    error = relative_error(got, want)
    print('%s GN: onnxruntime vs MXNet, max relative error %.2g' % (model, error))
    assert error <= RELATIVE_TOLERANCE


@pytest.mark.parametrize('depth, image_shape, backend', [
    (18, (3, 64, 64), 'native'), (8, (3, 32, 32), 'custom'), (8, (3, 32, 32), 'ops')])
def test_exported_symbols_resnet_matches_mxnet(depth, image_shape, backend, tmp_path):
    mx.random.seed(4)
    rng = np.random.RandomState(4)
    gluon_name = 'resnet%d_%s' % (depth, 'v1b' if depth == 18 else 'small')
    net = get_model(gluon_name, num_classes=10, norm='gn', num_groups=8)
    net.initialize(mx.init.Xavier(magnitude=2))
    x = rng.uniform(-1, 1, (2,) + image_shape).astype(np.float32)
    net(mx.nd.array(x))
    randomize_norms(net, rng)
    arg_params, aux_params = to_symbol_params(net)
    symbol = resnet.get_symbol(10, depth, ','.join(map(str, image_shape)), norm='gn',
                               num_groups=8, backend=backend)
    logits = symbol.get_internals()['fc_output']
    path = str(tmp_path / 'resnet.onnx')
    mx.onnx.export_model(logits, [arg_params, aux_params], [x.shape], np.float32, path)
    _, (got,) = run_onnxruntime(path, {'data': x})
    error = relative_error(got, net(mx.nd.array(x)).asnumpy())
    print('symbols.resnet-%d GN (%s): onnxruntime vs MXNet, max relative error %.2g'
          % (depth, backend, error))
    assert error <= RELATIVE_TOLERANCE


needs_group_norm_21 = pytest.mark.skipif(
    not gn_onnx.onnx_group_norm_available(),
    reason='onnx %s has no GroupNormalization-21 (onnx >= 1.16 has)' % onnx.__version__)


@needs_group_norm_21
@pytest.mark.parametrize('backend', ['native', 'custom'])
@pytest.mark.parametrize('axis, shape', LAYOUTS[:2])
def test_onnx_group_normalization_21_form(backend, axis, shape, tmp_path):
    reference = pytest.importorskip('onnx.reference', reason='onnx has no reference evaluator')
    rng = np.random.RandomState(5)
    y = GroupNorm(data=mx.sym.Variable('data'), num_groups=4, axis=axis, name='gn',
                  backend=backend)
    params = gn_params('gn', 16, rng)
    x = rng.normal(3, 2, shape).astype(np.float32)
    path = gn_onnx.export_model(y, params, [shape], np.float32, str(tmp_path / 'gn21.onnx'),
                                group_norm='onnx')
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 21
    assert 'GroupNormalization' in op_types(path)
    assert 'InstanceNormalization' not in op_types(path)
    want = mxnet_outputs(y, params, data=x)[0]
    (evaluated,) = reference.ReferenceEvaluator(model).run(None, {'data': x})
    assert relative_error(evaluated, want) <= RELATIVE_TOLERANCE
    _, (run,) = run_onnxruntime(path, {'data': x})
    assert relative_error(run, want) <= RELATIVE_TOLERANCE


class _Copy(mx.operator.CustomOp):
    def forward(self, is_train, req, in_data, out_data, aux):
        self.assign(out_data[0], req[0], in_data[0])


@mx.operator.register('someone_elses_op')
class _CopyProp(mx.operator.CustomOpProp):
    """Another library's CustomOp: no ONNX translation knows it."""

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []

    def create_operator(self, ctx, in_shapes, in_dtypes):
        return _Copy()


def test_unknown_form_and_foreign_custom_ops_raise_clear_errors(tmp_path):
    y = GroupNorm(data=mx.sym.Variable('data'), num_groups=2, name='gn')
    with pytest.raises(ValueError, match='instance_norm'):
        gn_onnx.export_model(y, gn_params('gn', 4, np.random), [(1, 4, 2, 2)], np.float32,
                             str(tmp_path / 'x.onnx'), group_norm='fused')
    foreign = mx.sym.Custom(mx.sym.Variable('data'), op_type='someone_elses_op')
    with pytest.raises(AttributeError, match='someone_elses_op'):
        mx.onnx.export_model(foreign, {}, [(1, 4)], np.float32, str(tmp_path / 'f.onnx'))


@pytest.mark.parametrize('build, shape', [
    (lambda x: mx.sym.mean(x, axis=(0, 2), exclude=True, keepdims=True), (2, 3, 4, 5)),
    (lambda x: mx.sym.mean(x, axis=-1, exclude=True), (2, 3, 4)),
    (lambda x: mx.sym.mean(x), (2, 3, 4)),
    (lambda x: mx.sym.mean(x, axis=1), (2, 3, 4)),
    (lambda x: mx.sym.sum(x, axis=0, exclude=True, keepdims=True), (2, 3, 4, 5)),
    (lambda x: mx.sym.sum(x, axis=(1, 2), exclude=True), (2, 3, 4)),
    (lambda x: mx.sym.sum(x), (2, 3)),
    (lambda x: mx.sym._internal._identity_with_attr_like_rhs(x * 2, x), (2, 3)),
    (lambda x: mx.sym.rsqrt(x + 1), (2, 3)),
    (lambda x: mx.sym.reshape(x, shape=(0, -4, 3, -1, -2)), (2, 6, 4, 5)),
    (lambda x: mx.sym.reshape(x, shape=(-3, -2)), (2, 6, 4)),
    (lambda x: mx.sym.reshape(x, shape=(0, -4, -1, 2, 0)), (2, 6, 4)),
])
def test_repaired_stock_op_translations_match_mxnet(build, shape, tmp_path):
    """The stock ops the 'ops' backends (GroupNorm's, weight standardization's) are made of, as
    MXNet computes them."""
    symbol = build(mx.sym.Variable('data'))
    x = np.random.RandomState(6).uniform(0, 2, shape).astype(np.float32)
    path = str(tmp_path / 'op.onnx')
    mx.onnx.export_model(symbol, {}, [shape], np.float32, path)
    _, (got,) = run_onnxruntime(path, {'data': x})
    (want,) = mxnet_outputs(symbol, {}, data=x)
    assert got.shape == want.shape, json.loads(symbol.tojson())['nodes'][-1]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('backend', ['native', 'custom'])
@pytest.mark.parametrize('act_type, with_residual', [('relu', False), ('relu', True),
                                                      ('silu', True), ('none', True)])
def test_fused_group_norm_exports_as_the_op_computes(backend, act_type, with_residual, tmp_path):
    """y = act(GN(x) + residual) becomes the GN nodes, an Add and Relu or x·Sigmoid(x)."""
    names = ('data', 'gn_gamma', 'gn_beta', 'res')
    data, gamma, beta, res = (mx.sym.Variable(n) for n in names)
    y = gn_mxnet.group_norm(data, gamma, beta, 2, backend=backend, act_type=act_type,
                            residual=res if with_residual else None)
    rng = np.random.RandomState(3)
    params = gn_params('gn', 4, rng)
    shapes = [(2, 4, 3, 3)] + ([(2, 4, 3, 3)] if with_residual else [])
    path = str(tmp_path / 'fused.onnx')
    gn_onnx.export_model(y, params, shapes, np.float32, path)
    feeds = {'data': rng.standard_normal(shapes[0]).astype(np.float32)}
    if with_residual:
        feeds['res'] = rng.standard_normal(shapes[0]).astype(np.float32)
    _, (got,) = run_onnxruntime(path, feeds)
    args = {k: mx.nd.array(v) for k, v in feeds.items()}
    args.update({k: v for k, v in params.items()})
    want = y.eval(ctx=mx.cpu(), **args)[0].asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ('Relu' in op_types(path)) == (act_type == 'relu')
    assert ('Sigmoid' in op_types(path)) == (act_type == 'silu')


# --- Weight Standardization --------------------------------------------------------------------

@pytest.mark.parametrize('backend', WS_BACKENDS)
@pytest.mark.parametrize('convention', WS_CONVENTIONS)
@pytest.mark.parametrize('shape', [(6, 3, 3, 3), (4, 1, 1, 1), (5, 7)])
def test_standardized_weight_exports_as_the_op_computes(backend, convention, shape, tmp_path):
    """w_hat itself, the weight a graph input: means far from 0, a constant channel (std 0:
    w_hat 0) and K = 1 (qiao's unbiased std is taken as 0 there: w_hat 0, no NaN)."""
    w = np.random.RandomState(8).normal(2, 0.5, shape).astype(np.float32)
    w[0] = 3.0
    y = gn_mxnet.standardize_weight(mx.sym.Variable('data'), convention=convention,
                                    backend=backend)
    ops = {node['op'] for node in json.loads(y.tojson())['nodes']}
    assert ('WeightStandardization' in ops) == (backend == 'native')
    path = gn_onnx.export_model(y, {}, [shape], np.float32, str(tmp_path / 'w.onnx'))
    _, (got,) = run_onnxruntime(path, {'data': w})
    (want,) = mxnet_outputs(y, {}, data=w)
    assert np.isfinite(want).all() and not want[0].any()
    print('w_hat %s %s %s: onnxruntime vs MXNet, max |difference| %.2g'
          % (backend, convention, shape, np.abs(got - want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=WS_TOLERANCE)


@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_float16_weight_is_standardized_in_float32(convention, tmp_path):
    w = np.random.RandomState(11).normal(2, 0.5, (6, 3, 3, 3)).astype(np.float16)
    y = gn_mxnet.standardize_weight(mx.sym.Variable('data'), convention=convention,
                                    backend='native')
    path = gn_onnx.export_model(y, {}, [w.shape], np.float16, str(tmp_path / 'h.onnx'))
    assert 'Cast' in op_types(path)
    _, (got,) = run_onnxruntime(path, {'data': w})
    (want,) = mxnet_outputs(y, {}, data=w)
    assert got.dtype == want.dtype == np.float16
    # both round w_hat (|w_hat| < 4) once to float16: at most an ulp (2^-9 below 4) apart
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=0,
                               atol=2 ** -9)


@pytest.mark.parametrize('backend', WS_BACKENDS)
@pytest.mark.parametrize('convention, use_bias, groups', [
    ('qiao', True, 1), ('qiao', False, 2), ('timm', False, 1), ('timm', True, 2)])
def test_std_conv2d_exported_from_gluon_matches_mxnet(backend, convention, use_bias, groups,
                                                      tmp_path):
    rng = np.random.RandomState(9)
    conv = StdConv2D(8, 3, padding=1, groups=groups, use_bias=use_bias, in_channels=4,
                     ws_convention=convention, ws_backend=backend, prefix='ws_')
    conv.initialize()
    conv.weight.set_data(mx.nd.array(rng.normal(0.3, 0.2, conv.weight.shape)))
    if use_bias:
        conv.bias.set_data(mx.nd.array(rng.normal(0, 1, 8)))
    conv.hybridize()
    x = rng.normal(0, 1, (2, 4, 7, 7)).astype(np.float32)
    want = conv(mx.nd.array(x)).asnumpy()
    _, (got,) = run_onnxruntime(export_hybridized(conv, tmp_path, x.shape, 'ws'), {'data': x})
    error = relative_error(got, want)
    print('StdConv2D %s %s bias=%s groups=%d: onnxruntime vs MXNet, max |difference| %.2g, '
          'relative %.2g' % (backend, convention, use_bias, groups, abs(got - want).max(), error))
    assert error <= WS_TOLERANCE


@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_exported_ws_resnet_matches_mxnet(convention, tmp_path):
    """A small GN+WS ResNet from the Gluon builder (native WS op, native GN) and its Symbol twin
    (the 'ops' backends), random norms, exported and run in onnxruntime. The GN after each
    conv would hide a wrong per-layer scale of w_hat (a missing K / (K - 1)): the tests above
    check w_hat and a lone conv for that; this one checks whole graphs export and agree."""
    mx.random.seed(10)
    rng = np.random.RandomState(10)
    net = get_model('resnet8_small', num_classes=10, norm='gn', num_groups=8,
                    conv=make_conv('ws', convention=convention, backend='native'))
    net.initialize(mx.init.Xavier(magnitude=2))
    x = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    net(mx.nd.array(x))
    randomize_norms(net, rng)
    net.hybridize()
    want = net(mx.nd.array(x)).asnumpy()
    path = export_hybridized(net, tmp_path, x.shape, 'net')
    with open(tmp_path / 'net-symbol.json') as f:
        assert 'WeightStandardization' in {node['op'] for node in json.load(f)['nodes']}
    _, (got,) = run_onnxruntime(path, {'data': x})
    errors = {'gluon, native': relative_error(got, want)}
    arg_params, aux_params = to_symbol_params(net)
    symbol = resnet.get_symbol(10, 8, '3,32,32', norm='gn', num_groups=8, backend='ops',
                               conv=make_conv('ws', convention=convention, backend='ops'))
    path = str(tmp_path / 'symbol.onnx')
    mx.onnx.export_model(symbol.get_internals()['fc_output'], [arg_params, aux_params],
                         [x.shape], np.float32, path)
    _, (got,) = run_onnxruntime(path, {'data': x})
    errors['symbol, ops'] = relative_error(got, want)
    print('resnet8_small GN+WS (%s): onnxruntime vs MXNet, max relative error %s' % (
        convention, ', '.join('%s %.2g' % item for item in errors.items())))
    assert max(errors.values()) <= WS_TOLERANCE
