"""The fronts around the op: errors, Gluon layer, export/import, gluoncv drop-in, loading."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gn_mxnet
from gn_mxnet import BACKENDS
from gn_mxnet.operator import library as _library
from gn_mxnet.gluon import GroupNorm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nd(shape, dtype='float32'):
    return mx.nd.array(np.random.RandomState(0).randn(*shape), dtype=dtype)


BAD_CALLS = [
    # (data shape, gamma shape, kwargs, words the message must contain)
    ((2, 6, 4), (6,), dict(num_groups=4), 'must divide the number of channels (6)'),
    ((2, 6, 4), (6,), dict(num_groups=0), 'num_groups must be >= 1'),
    ((2, 6, 4), (6,), dict(num_groups=-2), 'num_groups must be >= 1'),
    ((2, 6, 4), (3,), dict(num_groups=3), 'gamma must have shape (6,)'),
    ((6,), (6,), dict(num_groups=3), 'data must have 2 to 5 dimensions'),
    ((2, 6, 1, 1, 1, 1), (6,), dict(num_groups=3), 'data must have 2 to 5 dimensions'),
    ((2, 6, 4), (6,), dict(num_groups=3, eps=-1e-5), 'eps must be finite and >= 0'),
    ((2, 6, 4), (6,), dict(num_groups=3, axis=3), 'axis 3 is out of range'),
    ((2, 6, 4, 4), (6,), dict(num_groups=3, axis=2), 'axis must be the channel axis'),
]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('data_shape, gamma_shape, kwargs, words', BAD_CALLS)
def test_bad_input_raises_value_error(backend, data_shape, gamma_shape, kwargs, words):
    with pytest.raises(ValueError) as info:
        gn_mxnet.group_norm(nd(data_shape), nd(gamma_shape), nd(gamma_shape),
                            backend=backend, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize('backend', BACKENDS)
def test_integer_dtype_and_empty_batch_are_refused(backend):
    with pytest.raises(ValueError, match='data dtype must be one of float16, float32, float64'):
        gn_mxnet.group_norm(nd((2, 4, 3), 'int32'), nd((4,), 'int32'), nd((4,), 'int32'), 2,
                            backend=backend)
    with pytest.raises(ValueError, match='gamma dtype must match data'):
        gn_mxnet.group_norm(nd((2, 4, 3)), nd((4,), 'float64'), nd((4,)), 2, backend=backend)
    # N = 0 is refused: MXNet 1.9 cannot even hold an empty NDArray in its default shape mode,
    # so the validator names the problem for any shape that reaches it with a zero dimension.
    from gn_mxnet.operator.validation import layout, parse_attrs
    with pytest.raises(ValueError, match='data must be non-empty'):
        layout(parse_attrs(2), (0, 4, 3))


def test_axis_layout_agrees_with_the_validator_for_every_ndim():
    """What a Symbol front reads from the axis alone is what channel_axis resolves for each
    ndim it accepts, and it names an ndim (checked at bind time) or raises for the rest."""
    from gn_mxnet.operator.validation import axis_layout, channel_axis
    for axis in range(-7, 8):
        try:
            spelled = axis_layout(axis)
        except ValueError:
            spelled = None
        for ndim in range(2, 6):
            try:
                resolved = channel_axis(axis, ndim)
            except ValueError:
                assert spelled is None or spelled.ndim not in (None, ndim), (axis, ndim)
                continue
            assert spelled is not None and spelled.ndim in (None, ndim), (axis, ndim)
            # 2-D data is the same bytes channels-first and channels-last.
            assert spelled.channels_last == (resolved != 1) or ndim == 2, (axis, ndim)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('axis, shape', [(-2, (2, 4, 4, 4)), (-2, (2, 4, 4, 1)), (3, (2, 4, 4)),
                                         (3, (2, 4, 4, 4, 2)), (-3, (2, 4, 4))])
def test_symbol_axis_of_another_ndim_is_refused_at_bind(native_library, backend, axis, shape):
    """-2 is the channel axis of 3-D data only, 3 of 4-D only: a Symbol learns its ndim at
    bind time, and every backend must refuse there rather than guess a layout."""
    symbol = gn_mxnet.group_norm(mx.sym.var('data'), mx.sym.var('gamma'), mx.sym.var('beta'),
                                 2, axis=axis, backend=backend)
    with pytest.raises(mx.base.MXNetError) as info:
        symbol.infer_shape(data=shape)  # what binding does first
    if backend == 'ops':
        assert f'groupnorm_axis_wants_{abs(axis) + 1}d_data' in str(info.value)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('axis, words', [(0, 'axis must be the channel axis'),
                                         (5, 'axis 5 is out of range'),
                                         (-6, 'axis -6 is out of range')])
def test_axis_no_ndim_allows_is_refused_when_the_graph_is_built(backend, axis, words):
    with pytest.raises(ValueError, match=words):
        gn_mxnet.group_norm(mx.sym.var('data'), mx.sym.var('gamma'), mx.sym.var('beta'), 2,
                            axis=axis, backend=backend)
    with pytest.raises(ValueError, match=words):
        GroupNorm(2, axis=axis, backend=backend)


def test_bad_attribute_types_and_backend():
    with pytest.raises(ValueError, match='num_groups must be an integer'):
        gn_mxnet.group_norm(nd((2, 4)), nd((4,)), nd((4,)), 2.5)
    with pytest.raises(ValueError, match='backend must be one of'):
        gn_mxnet.group_norm(nd((2, 4)), nd((4,)), nd((4,)), 2, backend='cuda')
    with pytest.raises(TypeError, match='data must be an mxnet NDArray or Symbol'):
        gn_mxnet.group_norm(np.zeros((2, 4)), nd((4,)), nd((4,)), 2)
    with pytest.raises(ValueError, match='must divide the number of channels'):
        GroupNorm(num_groups=4, in_channels=6)


@pytest.mark.parametrize('kwargs, words', [
    (dict(num_groups=4), 'num_groups (4) must divide the number of channels (6)'),
    (dict(num_groups=0), 'num_groups must be >= 1'),
    (dict(num_groups=3, eps=-1.0), 'eps must be finite and >= 0'),
    (dict(num_groups=3, axis=5), 'axis 5 is out of range'),
    (dict(num_groups='x'), "num_groups must be an integer, got 'x'"),
    (dict(), 'num_groups is required'),
])
def test_native_op_errors_become_mxnet_errors(native_library, kwargs, words):
    """The library validates too: bad attributes reaching it directly raise MXNetError."""
    with pytest.raises(mx.base.MXNetError) as info:
        mx.nd.GroupNormalization(nd((2, 6, 4)), nd((6,)), nd((6,)), **kwargs)
    assert words in str(info.value)
    with pytest.raises(mx.base.MXNetError) as info:  # at creation or at shape inference
        symbol = mx.sym.GroupNormalization(mx.sym.var('data'), mx.sym.var('gamma'),
                                           mx.sym.var('beta'), **kwargs)
        symbol.infer_shape(data=(2, 6, 4))
    assert words in str(info.value)


def test_native_op_shape_and_dtype_errors(native_library):
    with pytest.raises(mx.base.MXNetError, match=r'gamma must have shape \(6,\)'):
        mx.nd.GroupNormalization(nd((2, 6, 4)), nd((3,)), nd((6,)), num_groups=3)
    with pytest.raises(mx.base.MXNetError, match='data dtype must be one of'):
        mx.nd.GroupNormalization(nd((2, 6, 4), 'int32'), nd((6,), 'int32'),
                                 nd((6,), 'int32'), num_groups=3)
    with pytest.raises(mx.base.MXNetError, match='data must have 2 to 5 dimensions'):
        mx.nd.GroupNormalization(nd((6,)), nd((6,)), nd((6,)), num_groups=3)


def test_native_op_returns_statistics(native_library):
    x = nd((2, 6, 5))
    y, mean, rstd = mx.nd.GroupNormalization(x, mx.nd.ones(6), mx.nd.zeros(6), num_groups=3)
    grouped = x.asnumpy().reshape(2, 3, -1)
    np.testing.assert_allclose(mean.asnumpy(), grouped.mean(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd.asnumpy(), 1 / np.sqrt(grouped.var(axis=2) + 1e-5),
                               rtol=1e-5)


@pytest.mark.parametrize('backend', BACKENDS)
def test_gluon_layer_deferred_init_and_hybridize(native_library, backend):
    x = nd((2, 3, 6, 6))
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3, padding=1), GroupNorm(4, backend=backend))
    net.initialize()
    imperative = net(x).asnumpy()
    assert net[1].gamma.shape == (8,) and net[1].beta.shape == (8,)
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), imperative, rtol=1e-5, atol=1e-5)


def test_gluon_center_scale_false_freezes_parameters(native_library):
    layer = GroupNorm(2, in_channels=4, center=False, scale=False)
    layer.initialize()
    assert layer.gamma.grad_req == 'null' and layer.beta.grad_req == 'null'
    x = nd((2, 4, 3))
    x.attach_grad()
    with mx.autograd.record():
        y = layer(x)
    y.backward()
    grouped = x.asnumpy().reshape(2, 2, -1)
    expected = (grouped - grouped.mean(2, keepdims=True)) / np.sqrt(grouped.var(2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.asnumpy().reshape(2, 2, -1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.gamma.data().asnumpy(), np.ones(4))


@pytest.mark.parametrize('backend', BACKENDS)
def test_export_and_symbolblock_imports_round_trip(native_library, backend, tmp_path):
    export_round_trip(backend, str(tmp_path / 'gn'))


def conv_gn_net(backend, channels=64):
    """Two Conv2D -> GroupNorm pairs: with 64 channels MKLDNN keeps the convolution outputs in
    its blocked layout, which a CustomOp must not read as plain NCHW (ops._in_default_layout)."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(channels, 3, padding=1, in_channels=8),
            GroupNorm(8, in_channels=channels, backend=backend),
            mx.gluon.nn.Conv2D(channels, 3, padding=1, in_channels=channels),
            GroupNorm(8, in_channels=channels, backend=backend))
    return net


@pytest.mark.parametrize('backend', BACKENDS)
def test_graphs_after_mkldnn_convolutions_match_native(native_library, backend):
    """Hybridized training steps and a bound executor, repeated (a layout mix-up showed as
    wrong values that changed from call to call), against the native op imperatively; for
    'native' that checks the Reshape its graphs put in front of the op (a plain-layout copy)."""
    mx.random.seed(3)
    reference = conv_gn_net('native')
    reference.initialize(mx.init.Xavier())
    net = conv_gn_net(backend)
    net.initialize()
    for (_, mine), (_, theirs) in zip(sorted(net.collect_params().items()),
                                      sorted(reference.collect_params().items())):
        mine.set_data(theirs.data())
    x = nd((4, 8, 10, 10))

    def output_and_input_grad(block):
        data = x.copy()
        data.attach_grad()
        with mx.autograd.record():
            y = block(data)
        y.backward()
        return y.asnumpy(), data.grad.asnumpy()

    expected_y, expected_grad = output_and_input_grad(reference)
    net.hybridize()
    for _ in range(3):
        y, grad = output_and_input_grad(net)
        np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)
    executor = net(mx.sym.var('data')).simple_bind(mx.cpu(), data=x.shape)
    for name, param in net.collect_params().items():
        param.data().copyto(executor.arg_dict[name])
    x.copyto(executor.arg_dict['data'])
    for _ in range(3):
        executor.forward(is_train=True)
        executor.backward(mx.nd.ones_like(executor.outputs[0]))
        np.testing.assert_allclose(executor.outputs[0].asnumpy(), expected_y, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(executor.grad_dict['data'].asnumpy(), expected_grad,
                                   rtol=1e-4, atol=1e-5)


def export_net(backend, prefix, x):
    """Exports a hybridized Conv2D -> GroupNorm -> ReLU net as prefix-symbol.json and
    prefix-0003.params; returns its output for x."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3, padding=1), GroupNorm(4, backend=backend),
            mx.gluon.nn.Activation('relu'))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    expected = net(x).asnumpy()
    net.export(prefix, epoch=3)
    return expected


def export_round_trip(backend, prefix):
    x = nd((2, 3, 6, 6))
    expected = export_net(backend, prefix, x)
    loaded = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                          prefix + '-0003.params')
    for _ in range(3):  # repeated calls: a race in a backend would show from the second on
        np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)
    loaded.hybridize()
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)


# A new process as docs/user_guide.md's recipe has it; with the CustomOp registered after
# mx.library.load rebuilt mx.nd/mx.sym; and where the library is not built (no native export).
IMPORTS_IN_A_NEW_PROCESS = {
    'recipe': ('import gn_mxnet\ngn_mxnet.load_library()', BACKENDS),
    'registered_after_library': ('import gn_mxnet\n'
                                 'mx.library.load(gn_mxnet.library_path(), verbose=False)\n'
                                 'import gn_mxnet.operator.custom_op', BACKENDS),
    'library_not_built': ('import gn_mxnet.operator.library as library\n'
                          'library.library_path = lambda: "/nonexistent/libgn_mxnet.so"\n'
                          'try:\n    library.load_library()\n'
                          'except library.LibraryNotBuiltError:\n    pass', ('custom', 'ops')),
}
_IMPORT_EXPORTED = """import sys
import mxnet as mx
import numpy as np
{load}
x = mx.nd.array(np.load(sys.argv[1]))
for prefix in sys.argv[2:]:
    net = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0003.params')
    np.save(prefix + '-y.npy', net(x).asnumpy())
"""


@pytest.mark.parametrize('load', sorted(IMPORTS_IN_A_NEW_PROCESS))
def test_every_export_imports_in_a_new_process(native_library, tmp_path, load):
    """The CustomOp registers when custom_op.py is imported: a new process that only imports
    gn_mxnet and loads the library must still find it ('Cannot find custom operator')."""
    code, backends = IMPORTS_IN_A_NEW_PROCESS[load]
    x = nd((2, 3, 6, 6))
    np.save(tmp_path / 'x.npy', x.asnumpy())
    expected = {str(tmp_path / b): export_net(b, str(tmp_path / b), x) for b in backends}
    done = subprocess.run(
        [sys.executable, '-c', _IMPORT_EXPORTED.format(load=code),
         str(tmp_path / 'x.npy'), *expected],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for prefix, y in expected.items():
        np.testing.assert_allclose(np.load(prefix + '-y.npy'), y, rtol=1e-6, atol=1e-6)


def test_gluoncv_resnet50_drop_in(native_library):
    from gluoncv.model_zoo import get_model
    net = get_model('resnet50_v1b', norm_layer=GroupNorm, norm_kwargs={'num_groups': 32},
                    last_gamma=True, classes=10)
    net.initialize(mx.init.Xavier())
    assert net.layer1[0].bn3.gamma.data().asnumpy().max() == 0  # last_gamma: zero-init
    x, label = nd((2, 3, 64, 64)), mx.nd.array([1, 7])
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    # With last_gamma the branches start as identity, so the first step moves the stem's norm
    # and each block's last (zero) gamma, not the norms inside the branch.
    watched = (net.bn1.gamma, net.layer1[0].bn3.gamma)
    before = [p.data().asnumpy().copy() for p in watched]
    with mx.autograd.record():
        loss = loss_fn(net(x), label)
    loss.backward()
    trainer.step(2)
    assert np.isfinite(loss.asnumpy()).all()
    for param, old_value in zip(watched, before):
        assert not np.array_equal(old_value, param.data().asnumpy()), param.name
    imperative = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), imperative, rtol=1e-4, atol=1e-4)


def test_load_library_is_idempotent(native_library):
    assert gn_mxnet.load_library() == native_library == gn_mxnet.load_library()
    assert _library.is_loaded()


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(_library, '_loaded_path', None)
    monkeypatch.setattr(_library, 'library_path', lambda: str(tmp_path / 'libgn_mxnet.so'))
    with pytest.raises(gn_mxnet.LibraryNotBuiltError, match='pip install -e .'):
        gn_mxnet.load_library()
