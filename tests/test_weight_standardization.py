"""Weight Standardization (gn_mxnet.standardize_weight, gluon.StdConv2D, sym.std_convolution):
both conventions against a float64 NumPy reference, forward and backward; the native op against
the stock-ops backend; the gradient against finite differences; the layers against
nn.Conv2D / mx.sym.Convolution with pre-standardized weights; export and import in a new
process; one clear ValueError for bad input."""
import os
import subprocess
import sys
import threading

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gn_mxnet
from gn_mxnet.gluon import StdConv2D
from gn_mxnet.operator.validation import WS_BACKENDS, WS_CONVENTIONS, WS_DEFAULT_EPS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = {'float64': 1e-12, 'float32': 2e-6, 'float16': 2e-3}
# (8, 3, 3, 3) a 3x3 conv; (5, 1, 1, 1) K = 1; (3, 7) a 2-D (dense) weight; (2, 64, 3, 3)
# K = 576, larger than the kernels' lane count.
SHAPES = [(8, 3, 3, 3), (5, 1, 1, 1), (3, 7), (2, 64, 3, 3)]


def reference(w, convention, eps, dy=None):
    """w_hat, and with dy the gradient dL/dw for dL/dw_hat = dy, in float64 (the formulas of
    weight_standardization.py and weight_standardization_cpu.cc, written out separately)."""
    w = np.asarray(w, np.float64)
    rows = w.reshape(w.shape[0], -1)
    K = rows.shape[1]
    c = rows - rows.mean(axis=1, keepdims=True)
    if convention == 'timm':
        r = 1.0 / np.sqrt((c ** 2).mean(axis=1, keepdims=True) + eps)
        w_hat = c * r
    else:
        std = np.sqrt((c ** 2).sum(axis=1, keepdims=True) / (K - 1)) if K > 1 else \
            np.zeros((rows.shape[0], 1))
        w_hat = c / (std + eps)
    if dy is None:
        return w_hat.reshape(w.shape)
    g = np.asarray(dy, np.float64).reshape(rows.shape)
    centered_g = g - g.mean(axis=1, keepdims=True)
    sum_gc = (g * c).sum(axis=1, keepdims=True)
    if convention == 'timm':
        dw = r * centered_g - c * r ** 3 * sum_gc / K
    else:
        s = std + eps
        with np.errstate(divide='ignore', invalid='ignore'):
            term = np.where(std > 0, sum_gc / (s ** 2 * max(K - 1, 1) * std), 0.0)
        dw = centered_g / s - c * term
    return w_hat.reshape(w.shape), dw.reshape(w.shape)


def run(w, dy, dtype, convention, backend, eps=None):
    x = mx.nd.array(w, dtype=dtype)
    x.attach_grad()
    with mx.autograd.record():
        y = gn_mxnet.standardize_weight(x, eps=eps, convention=convention, backend=backend)
    y.backward(mx.nd.array(dy, dtype=dtype))
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    return y.asnumpy().astype(np.float64), x.grad.asnumpy().astype(np.float64)


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1.0)


@pytest.mark.parametrize('backend', WS_BACKENDS)
@pytest.mark.parametrize('dtype', sorted(TOLERANCE))
@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_matches_reference_forward_and_backward(native_library, backend, dtype, convention):
    rng = np.random.default_rng(7)
    for shape in SHAPES:
        # An offset much larger than the spread, as trained weights rarely have, but as a
        # cancellation-prone mean computation would get wrong.
        w = (rng.standard_normal(shape) * 0.05 + 0.5).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y, dw = run(w, dy, dtype, convention, backend)
        eps = WS_DEFAULT_EPS[convention]
        want_y, want_dw = reference(w, convention, eps, dy.astype(np.float64))
        assert relative_error(y, want_y) < TOLERANCE[dtype], (shape, relative_error(y, want_y))
        # float16 gradients: dy rounds to float16 and dw once more; relative to its largest.
        assert relative_error(dw, want_dw) < TOLERANCE[dtype] * 4, shape


@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_native_and_ops_agree(native_library, convention):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32, 3, 3)).astype('float32') * 0.02
    dy = rng.standard_normal(w.shape).astype('float32')
    native = run(w, dy, 'float32', convention, 'native', eps=1e-8)
    ops = run(w, dy, 'float32', convention, 'ops', eps=1e-8)
    for a, b in zip(native, ops):
        assert relative_error(a, b) < 5e-6


@pytest.mark.parametrize('backend', WS_BACKENDS)
@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_gradient_matches_finite_differences(native_library, backend, convention):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((3, 2, 2, 2))
    probe = rng.standard_normal(w.shape)  # L = sum(w_hat * probe)

    def loss(v):
        out = gn_mxnet.standardize_weight(mx.nd.array(v, dtype='float64'),
                                          convention=convention, backend=backend)
        return float((out.asnumpy() * probe).sum())

    _, analytic = run(w, probe, 'float64', convention, backend)
    numeric = np.zeros_like(w)
    step = 1e-6
    for i in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[i] += step
        down[i] -= step
        numeric[i] = (loss(up) - loss(down)) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('backend', WS_BACKENDS)
@pytest.mark.parametrize('convention', WS_CONVENTIONS)
def test_constant_channel_and_k1_are_defined(native_library, backend, convention):
    """Zero variance gives w_hat = 0 and the documented gradient (no NaN): qiao
    (dy - mean dy) / eps, timm (dy - mean dy) / sqrt(eps); K = 1 gives 0 and 0."""
    eps = WS_DEFAULT_EPS[convention]
    dy = np.array([[1.0, -2.0, 0.5, 4.0], [3.0, 3.0, 3.0, 3.0]])
    y, dw = run(np.full((2, 4), 0.25), dy, 'float64', convention, backend)
    assert np.all(y == 0)
    scale = 1 / eps if convention == 'qiao' else 1 / np.sqrt(eps)
    np.testing.assert_allclose(dw, (dy - dy.mean(axis=1, keepdims=True)) * scale,
                               rtol=1e-9, atol=1e-9)
    y, dw = run(np.array([[0.3], [-2.0]]), np.array([[1.0], [5.0]]), 'float64', convention,
                backend)
    assert np.all(y == 0) and np.all(dw == 0)


def std_conv_net(backend, convention, hybridize, in_channels=0):
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(StdConv2D(6, 3, padding=1, in_channels=in_channels, ws_backend=backend,
                          ws_convention=convention),
                nn.Activation('relu'),
                StdConv2D(4, 3, strides=2, groups=2, use_bias=False, ws_backend=backend,
                          ws_convention=convention))
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize()
    return net


@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('backend', WS_BACKENDS)
def test_stdconv2d_is_conv2d_with_standardized_weights(native_library, backend, hybridize):
    """Also: the first layer's in_channels given or not (deferred init hybridized is
    test_export_imports_in_a_new_process's), groups; the parameters are nn.Conv2D's, with its
    names."""
    x = mx.nd.random.normal(shape=(2, 3, 9, 9), dtype='float64')
    net = std_conv_net(backend, 'timm', hybridize, in_channels=3 if hybridize else 0)
    net.cast('float64')
    y = net(x)
    plain = nn.HybridSequential(prefix='net_')
    with plain.name_scope():
        plain.add(nn.Conv2D(6, 3, padding=1), nn.Activation('relu'),
                  nn.Conv2D(4, 3, strides=2, groups=2, use_bias=False))
    plain.initialize()
    plain.cast('float64')
    plain(x)
    assert list(net.collect_params()) == list(plain.collect_params()) == [
        'net_conv0_weight', 'net_conv0_bias', 'net_conv1_weight']
    for std_conv, conv in ((net[0], plain[0]), (net[2], plain[2])):
        assert std_conv.weight.shape == conv.weight.shape
        conv.weight.set_data(mx.nd.array(reference(std_conv.weight.data().asnumpy(), 'timm',
                                                   1e-6), dtype='float64'))
        if conv.bias is not None:
            conv.bias.set_data(std_conv.bias.data())
    np.testing.assert_allclose(y.asnumpy(), plain(x).asnumpy(), rtol=1e-10, atol=1e-10)


def test_layer_and_symbol_validate_like_the_function():
    for make in (lambda **kw: StdConv2D(4, 3, **kw),
                 lambda **kw: gn_mxnet.sym.std_convolution(mx.sym.var('data'), kernel=(3, 3),
                                                           num_filter=4, **kw)):
        with pytest.raises(ValueError, match="convention must be one of 'qiao', 'timm', got 'x'"):
            make(ws_convention='x')
        with pytest.raises(ValueError, match='eps must be finite and > 0, got 0'):
            make(ws_eps=0)
        with pytest.raises(ValueError, match="backend must be one of native, ops, got 'custom'"):
            make(ws_backend='custom')


@pytest.mark.parametrize('backend', WS_BACKENDS)
def test_bad_input_is_one_clear_value_error(native_library, backend):
    w = mx.nd.ones((4, 3, 3, 3))
    cases = [(dict(convention='ws'), "convention must be one of 'qiao', 'timm', got 'ws'"),
             (dict(eps=0.0), 'eps must be finite and > 0, got 0.0'),
             (dict(eps=-1e-5), 'eps must be finite and > 0, got -1e-05'),
             (dict(eps=float('nan')), 'eps must be finite and > 0, got nan')]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('.', r'\.')):
            gn_mxnet.standardize_weight(w, backend=backend, **kwargs)
    with pytest.raises(ValueError, match=r'weight must have at least 2 dimensions '
                                         r'\(out_channels, \.\.\.\), got 1'):
        gn_mxnet.standardize_weight(mx.nd.ones((4,)), backend=backend)
    with pytest.raises(ValueError, match='weight dtype must be one of'):
        gn_mxnet.standardize_weight(mx.nd.ones((4, 2), dtype='int32'), backend=backend)
    with pytest.raises(TypeError, match='weight must be an mxnet NDArray or Symbol'):
        gn_mxnet.standardize_weight(np.ones((4, 2)), backend=backend)


def test_compiled_op_refuses_with_the_same_words(native_library):
    w = mx.nd.ones((4, 3))
    for attrs, message in ((dict(convention='ws'), "convention must be one of 'qiao', 'timm'"),
                           (dict(eps='0'), 'eps must be finite and > 0'),
                           (dict(eps='x'), "eps must be a real number, got 'x'")):
        with pytest.raises(mx.base.MXNetError, match=message):
            mx.nd.WeightStandardization(w, **attrs).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='weight must have at least 2 dimensions'):
        mx.nd.WeightStandardization(mx.nd.ones((4,))).wait_to_read()


def test_native_symbol_weight_needs_its_shape(native_library):
    """The compiled op cannot take the weight's shape from the convolution: a partly known one
    is refused in words that name the fixes; a shaped variable, or a shape given at bind time,
    binds (std_convolution and StdConv2D supply it from the data: tests below)."""
    def conv(weight):
        w_hat = gn_mxnet.standardize_weight(weight, backend='native')
        return mx.sym.Convolution(mx.sym.var('data'), w_hat, kernel=(3, 3), num_filter=4,
                                  no_bias=True)
    with pytest.raises(mx.base.MXNetError, match='shape of the weight is not known.*'
                                                 'gn_mxnet.sym.std_convolution'):
        conv(mx.sym.var('w', shape=(4, 0, 3, 3))).infer_shape(data=(2, 3, 5, 5))
    for weight, given in ((mx.sym.var('w', shape=(4, 3, 3, 3)), {}),
                          (mx.sym.var('w'), {'w': (4, 3, 3, 3)})):
        bound = conv(weight).simple_bind(mx.cpu(), data=(2, 3, 5, 5), **given)
        assert bound.arg_dict['w'].shape == (4, 3, 3, 3)


def test_messages_stay_with_their_call_across_threads_and_ops(native_library):
    """Both ops of the library report through one per-thread message list
    (operators/group_norm_op_messages.h): failing calls of each, made at once from several
    threads between good ones, each raise their own words only."""
    problems = []
    w = np.random.default_rng(2).standard_normal((6, 3, 3, 3))
    want = reference(w, 'qiao', 1e-5)

    def worker():
        for _ in range(10):
            for call, own, other in (
                    (lambda: mx.nd.WeightStandardization(mx.nd.ones((4, 3)), convention='x'),
                     "convention must be one of 'qiao', 'timm'", 'num_groups'),
                    (lambda: mx.nd.GroupNormalization(mx.nd.ones((2, 6, 4)), mx.nd.ones(6),
                                                      mx.nd.zeros(6), num_groups=4),
                     'num_groups (4) must divide', 'convention')):
                try:
                    call()[0].wait_to_read()
                    problems.append('no error: ' + own)
                except mx.base.MXNetError as error:
                    if own not in str(error) or other in str(error):
                        problems.append(str(error)[-300:])
            got = mx.nd.WeightStandardization(mx.nd.array(w, dtype='float64')).asnumpy()
            if np.abs(got - want).max() > 1e-12:
                problems.append('wrong result')

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not problems, problems[:3]


@pytest.mark.parametrize('backend', WS_BACKENDS)
def test_symbol_std_convolution_equals_gluon(native_library, backend):
    """Bound from the data shape alone (the weight is sized by the convolution), named as
    mx.sym.Convolution names its variables, and equal to StdConv2D with the same weights."""
    x = mx.nd.random.normal(shape=(2, 4, 7, 7))
    layer = StdConv2D(6, 3, padding=1, groups=2, ws_backend=backend, ws_convention='qiao')
    layer.initialize(mx.init.Xavier())
    want = layer(x).asnumpy()
    with mx.name.Prefix('stage1_'):
        out = gn_mxnet.sym.std_convolution(mx.sym.var('data'), kernel=(3, 3), num_filter=6,
                                           pad=(1, 1), num_group=2, ws_backend=backend)
    assert out.name == 'stage1_convolution0'
    assert out.list_arguments() == ['data', 'stage1_convolution0_weight',
                                    'stage1_convolution0_bias']
    executor = out.simple_bind(mx.cpu(), data=x.shape)
    executor.copy_params_from({'stage1_convolution0_weight': layer.weight.data(),
                               'stage1_convolution0_bias': layer.bias.data()})
    got = executor.forward(data=x)[0].asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


_IMPORT = """import sys
import mxnet as mx
import numpy as np
import gn_mxnet
gn_mxnet.load_library()
x = mx.nd.array(np.load(sys.argv[1]))
for prefix in sys.argv[2:]:
    net = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
    np.save(prefix + '-y.npy', net(x).asnumpy())
"""


def test_export_imports_in_a_new_process(native_library, tmp_path):
    """Hybridized from the start (deferred init inside the graph), exported, and imported in a
    new process that only loads the library, for both backends and conventions."""
    x = mx.nd.random.normal(shape=(2, 3, 8, 8))
    np.save(tmp_path / 'x.npy', x.asnumpy())
    expected = {}
    for backend in WS_BACKENDS:
        for convention in WS_CONVENTIONS:
            prefix = str(tmp_path / f'{backend}_{convention}')
            net = std_conv_net(backend, convention, hybridize=True)
            expected[prefix] = net(x).asnumpy()
            net.export(prefix)
    done = subprocess.run([sys.executable, '-c', _IMPORT, str(tmp_path / 'x.npy'), *expected],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for prefix, y in expected.items():
        np.testing.assert_allclose(np.load(prefix + '-y.npy'), y, rtol=1e-6, atol=1e-6)
