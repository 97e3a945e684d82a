"""gn_mxnet.convert: Detectron / gluoncv / torchvision ResNet-GN weights load and round-trip.

Nothing is downloaded: the files are built here with each framework's real names and shapes
and random values, and a float64 NumPy forward pass written in the *source* layout (Detectron's
res<k>_<i>_branch2a..., torchvision's layer<k>.<i>.conv1...) is the reference.
"""
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from gn_mxnet.models import convert
from gn_mxnet.models import get_model
from gn_mxnet.utils import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_UNITS, R101_UNITS = (3, 4, 6, 3), (3, 4, 23, 3)
GROUPS = 32
IMAGE = (1, 3, 64, 64)


# --- a float64 NumPy ResNet, independent of MXNet -------------------------------------------
def conv2d(x, w, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def group_norm(x, gamma, beta, groups=GROUPS, eps=1e-5):
    grouped = x.reshape(x.shape[0], groups, -1)
    normed = (grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True)
                                                                   + eps)
    return normed.reshape(x.shape) * gamma[None, :, None, None] + beta[None, :, None, None]


def max_pool_3x3_s2(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


relu = lambda x: np.maximum(x, 0)


def detectron_forward(blobs, x):
    """Detectron's ResNet-GN (STRIDE_1X1=False: the stride is on branch2b) plus the pred fc."""
    b = {k: v.astype(np.float64) for k, v in blobs.items()}
    conv_gn = lambda x, name, stride=1, pad=0: group_norm(
        conv2d(x, b[name + '_w'], stride, pad), b[name + '_gn_s'], b[name + '_gn_b'])
    x = max_pool_3x3_s2(relu(conv_gn(x, 'conv1', 2, 3)))
    for stage in range(2, 6):
        unit = 0
        while 'res%d_%d_branch2a_w' % (stage, unit) in b:
            prefix = 'res%d_%d' % (stage, unit)
            stride = 2 if unit == 0 and stage > 2 else 1
            out = relu(conv_gn(x, prefix + '_branch2a'))
            out = relu(conv_gn(out, prefix + '_branch2b', stride, 1))
            out = conv_gn(out, prefix + '_branch2c')
            short = conv_gn(x, prefix + '_branch1', stride) if prefix + '_branch1_w' in b else x
            x = relu(out + short)
            unit += 1
    return x.mean(axis=(2, 3)) @ b['pred_w'].T + b['pred_b']


def torchvision_forward(state, x):
    """torchvision's ResNet-50 (v1.5: stride on conv2) with nn.GroupNorm(32, C) as norm."""
    s = {k: v.astype(np.float64) for k, v in state.items()}
    norm = lambda x, name: group_norm(x, s[name + '.weight'], s[name + '.bias'])
    x = max_pool_3x3_s2(relu(norm(conv2d(x, s['conv1.weight'], 2, 3), 'bn1')))
    for layer in range(1, 5):
        block = 0
        while 'layer%d.%d.conv1.weight' % (layer, block) in s:
            p = 'layer%d.%d.' % (layer, block)
            stride = 2 if block == 0 and layer > 1 else 1
            out = relu(norm(conv2d(x, s[p + 'conv1.weight']), p + 'bn1'))
            out = relu(norm(conv2d(out, s[p + 'conv2.weight'], stride, 1), p + 'bn2'))
            out = norm(conv2d(out, s[p + 'conv3.weight']), p + 'bn3')
            if p + 'downsample.0.weight' in s:
                x = norm(conv2d(x, s[p + 'downsample.0.weight'], stride), p + 'downsample.1')
            x = relu(out + x)
            block += 1
    return x.mean(axis=(2, 3)) @ s['fc.weight'].T + s['fc.bias']


# --- files with each framework's real names and shapes --------------------------------------
def _bottleneck_stages(units):
    """(stage number from 1, unit, dim_in, dim_inner, dim_out) for every bottleneck block."""
    dim_in = 64
    for stage, count in enumerate(units, start=1):
        inner, out = 64 * 2 ** (stage - 1), 256 * 2 ** (stage - 1)
        for unit in range(count):
            yield stage, unit, dim_in, inner, out
            dim_in = out


def _conv_weight(rng, out, inp, k):
    return rng.normal(0, np.sqrt(2.0 / (inp * k * k)), (out, inp, k, k)).astype(np.float32)


def _affine(rng, channels):
    return (rng.uniform(0.5, 1.5, channels).astype(np.float32),
            rng.uniform(-0.5, 0.5, channels).astype(np.float32))


def make_detectron_blobs(units=R50_UNITS, classes=1000, seed=0):
    rng = np.random.RandomState(seed)
    blobs = {}

    def conv_gn(name, out, inp, k):
        blobs[name + '_w'] = _conv_weight(rng, out, inp, k)
        blobs[name + '_gn_s'], blobs[name + '_gn_b'] = _affine(rng, out)
    conv_gn('conv1', 64, 3, 7)
    for stage, unit, dim_in, inner, out in _bottleneck_stages(units):
        prefix = 'res%d_%d' % (stage + 1, unit)
        conv_gn(prefix + '_branch2a', inner, dim_in, 1)
        conv_gn(prefix + '_branch2b', inner, inner, 3)
        conv_gn(prefix + '_branch2c', out, inner, 1)
        if unit == 0:
            conv_gn(prefix + '_branch1', out, dim_in, 1)
    blobs['pred_w'] = rng.normal(0, 0.01, (classes, 2048)).astype(np.float32)
    blobs['pred_b'] = rng.uniform(-0.1, 0.1, classes).astype(np.float32)
    # Training state that Detectron checkpoints carry alongside the weights.
    blobs['conv1_w_momentum'] = np.zeros_like(blobs['conv1_w'])
    return blobs


def make_torchvision_gn_state(units=R50_UNITS, classes=1000, seed=1):
    rng = np.random.RandomState(seed)
    state = {'conv1.weight': _conv_weight(rng, 64, 3, 7)}
    state['bn1.weight'], state['bn1.bias'] = _affine(rng, 64)
    for stage, unit, dim_in, inner, out in _bottleneck_stages(units):
        p = 'layer%d.%d.' % (stage, unit)
        for index, (o, i, k) in enumerate([(inner, dim_in, 1), (inner, inner, 3),
                                           (out, inner, 1)], start=1):
            state[p + 'conv%d.weight' % index] = _conv_weight(rng, o, i, k)
            state[p + 'bn%d.weight' % index], state[p + 'bn%d.bias' % index] = _affine(rng, o)
        if unit == 0:
            state[p + 'downsample.0.weight'] = _conv_weight(rng, out, dim_in, 1)
            state[p + 'downsample.1.weight'], state[p + 'downsample.1.bias'] = _affine(rng, out)
    state['fc.weight'] = rng.normal(0, 0.01, (classes, 2048)).astype(np.float32)
    state['fc.bias'] = rng.uniform(-0.1, 0.1, classes).astype(np.float32)
    return state


def _image(seed=2):
    return np.random.RandomState(seed).uniform(-1, 1, IMAGE)


def _ours(net, image):
    return net(mx.nd.array(image)).asnumpy()


def _gn50():
    net = get_model('resnet50_v1b', norm='gn', backend='ops', last_gamma=False)
    net.initialize()
    return net


def _snapshot(net):
    # MKLDNN reorders conv weights asynchronously after a forward pass; reading one before that
    # finishes can return a half-reordered array, so wait first.
    mx.nd.waitall()
    return {k: p.data().asnumpy().copy() for k, p in net._collect_params_with_prefix().items()}


@pytest.fixture(scope='module')
def detectron_file(tmp_path_factory):
    blobs = make_detectron_blobs()
    path = str(tmp_path_factory.mktemp('detectron') / 'R-50-GN.pkl')
    with open(path, 'wb') as f:
        pickle.dump({'blobs': blobs}, f, protocol=2)
    return path, blobs


# --- (a) Detectron ------------------------------------------------------------------------
def test_detectron_r50_gn_reproduces_the_source_model(detectron_file):
    path, blobs = detectron_file
    net = convert.load_weights(_gn50(), path)
    image = _image()
    reference = detectron_forward(blobs, image)
    diff = np.abs(_ours(net, image) - reference).max()
    print('Detectron R-50-GN: max |ours - NumPy reference| = %.3g (logits up to %.3g)'
          % (diff, np.abs(reference).max()))
    assert diff < 1e-5 * max(1.0, np.abs(reference).max())


def test_detectron_r101_gn_names_and_shapes_all_fit():
    blobs = make_detectron_blobs(R101_UNITS, classes=10)
    assert convert.describe(blobs, 'detectron') == ('resnet101_v1b', 10, 'gn')
    net = get_model('resnet101_v1b', num_classes=10, backend='ops', last_gamma=False)
    convert.load_tensors(net, blobs, 'detectron')
    assert np.array_equal(net.layer3[22].bn3.gamma.data().asnumpy(),
                          blobs['res4_22_branch2c_gn_s'])
    assert np.array_equal(net.layer2[0].downsample[0].weight.data().asnumpy(),
                          blobs['res3_0_branch1_w'])


def test_detectron_mismatch_is_refused_by_name_and_loads_nothing(detectron_file):
    _, blobs = detectron_file
    broken = dict(blobs)
    del broken['res3_1_branch2b_gn_s']
    broken['res6_0_branch2a_w'] = np.zeros((1, 1, 1, 1), np.float32)
    broken['res2_0_branch2b_w'] = np.zeros((64, 64, 1, 1), np.float32)
    net = _gn50()
    net(mx.nd.zeros(IMAGE))
    before = _snapshot(net)
    with pytest.raises(convert.WeightMismatchError) as error:
        convert.load_tensors(net, broken, 'detectron', source='broken.pkl')
    message = str(error.value)
    assert '1 missing, 1 unexpected, 1 of the wrong shape' in message and '\n' not in message
    for name in ('res3_1_branch2b_gn_s', 'layer2.1.bn2.gamma', 'res6_0_branch2a_w',
                 'res2_0_branch2b_w'):
        assert name in message, (name, message)
    assert error.value.unexpected == ['res6_0_branch2a_w']
    assert [name.split()[0] for name in error.value.misshaped] == ['res2_0_branch2b_w']
    after = _snapshot(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_mismatch_with_another_net_is_counted_not_listed():
    """A ResNet-18's weights for a ResNet-50: hundreds of names, a message of one short line."""
    small = get_model('resnet18_v1b', num_classes=5, backend='ops')
    small.initialize()
    small(mx.nd.zeros((1, 3, 32, 32)))
    with pytest.raises(convert.WeightMismatchError) as error:
        convert.load_tensors(_gn50(), convert.export_tensors(small, 'gluoncv'), 'gluoncv')
    mismatch = error.value
    assert len(mismatch.missing) > 50 and mismatch.misshaped
    message = str(mismatch)
    assert '\n' not in message and len(message) < 1000, message
    assert f"{len(mismatch.missing)} missing" in message
    assert f"{len(mismatch.misshaped)} of the wrong shape" in message
    assert mismatch.missing[0] in message and mismatch.missing[-1] not in message


def test_detectron_batchnorm_affine_blobs_are_reported_not_guessed():
    blobs = make_detectron_blobs(classes=10)
    blobs['res_conv1_bn_s'] = blobs.pop('conv1_gn_s')
    with pytest.raises(convert.WeightMismatchError, match='res_conv1_bn_s'):
        convert.load_tensors(get_model('resnet50_v1b', num_classes=10, backend='ops'), blobs,
                             'detectron')


def test_detectron_round_trip_is_exact(tmp_path, detectron_file):
    _, blobs = detectron_file
    net = convert.load_tensors(_gn50(), blobs, 'detectron')
    path = str(tmp_path / 'ours.pkl')
    convert.save_weights(net, path)
    written = convert.read_tensors(path)
    assert set(written) == {k for k in blobs if not k.endswith('_momentum')}
    assert all(np.array_equal(written[k], blobs[k]) for k in written)
    again = convert.load_weights(_gn50(), path)
    first, second = _snapshot(net), _snapshot(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)


# --- (b) gluoncv ----------------------------------------------------------------------------
def test_gluoncv_resnet50_v1b_gn_params_load_and_agree(tmp_path):
    from gluoncv.model_zoo.resnetv1b import resnet50_v1b_gn
    source = resnet50_v1b_gn()
    source.initialize(mx.init.Xavier(magnitude=2))
    image = mx.nd.array(_image(3))
    source(image)
    rng = np.random.RandomState(4)
    for name, param in source.collect_params().items():
        if name.endswith(('gamma', 'beta')):  # non-trivial affine, so a swap would show
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    path = str(tmp_path / 'resnet50_v1b_gn.params')
    source.save_parameters(path)
    net = convert.load_weights(_gn50(), path)
    expected = source(image).asnumpy()
    diff = np.abs(net(image).asnumpy() - expected).max()
    print('gluoncv resnet50_v1b_gn: max |ours - gluoncv| = %.3g' % diff)
    assert diff < 1e-5 * max(1.0, np.abs(expected).max())
    # The same file loads straight into our net with Gluon's own loader: the names agree.
    _gn50().load_parameters(path)
    # ours -> .params -> ours is exact and writes the file's own tensors back.
    out = str(tmp_path / 'back.params')
    convert.save_weights(net, out)
    original, written = convert.read_tensors(path), convert.read_tensors(out)
    assert set(original) == set(written)
    assert all(np.array_equal(original[k], written[k]) for k in original)


def test_gluoncv_legacy_prefixed_params_load(tmp_path):
    net = get_model('resnet18_v1b', num_classes=10, backend='ops')
    net.initialize()
    net(mx.nd.zeros(IMAGE))
    path = str(tmp_path / 'legacy.params')
    net.collect_params().save(path, strip_prefix=net.prefix)
    again = get_model('resnet18_v1b', num_classes=10, backend='ops')
    convert.load_weights(again, path)
    first, second = _snapshot(net), _snapshot(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)


# --- (c) torchvision state dict as .npz -----------------------------------------------------
def check_reproduces_torchvision(net, state, what):
    """net's logits against a float64 NumPy forward of the torchvision state dict."""
    image = _image(5)
    reference = torchvision_forward(state, image)
    diff = np.abs(_ours(net, image) - reference).max()
    print('%s R-50-GN: max |ours - NumPy reference| = %.3g' % (what, diff))
    assert diff < 1e-5 * max(1.0, np.abs(reference).max())


def test_torchvision_gn_state_dict_reproduces_the_source_model(tmp_path):
    state = make_torchvision_gn_state()
    path = str(tmp_path / 'resnet50_gn.npz')
    np.savez(path, **state)
    net = convert.load_weights(_gn50(), path)
    check_reproduces_torchvision(net, state, 'torchvision')
    # ours -> .npz -> ours is exact, and writes torchvision's names back.
    out = str(tmp_path / 'back.npz')
    convert.save_weights(net, out)
    written = convert.read_tensors(out)
    assert set(written) == set(state)
    assert all(np.array_equal(written[k], state[k]) for k in state)


def test_torchvision_batchnorm_round_trip_keeps_running_statistics(tmp_path):
    net = get_model('resnet20_small', num_classes=10, norm='bn', backend='ops')
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    for name, param in net._collect_params_with_prefix().items():
        if 'running' in name:
            param.set_data(mx.nd.random.uniform(0.5, 1.5, param.shape))
    path = str(tmp_path / 'bn.npz')
    convert.save_weights(net, path)
    written = convert.read_tensors(path)
    assert 'layer1.0.bn1.weight' in written and 'layer1.0.bn1.num_batches_tracked' in written
    assert convert.describe(written, 'torchvision') == ('resnet20_small', 10, 'bn')
    again = get_model('resnet20_small', num_classes=10, norm='bn', backend='ops')
    convert.load_weights(again, path)
    first, second = _snapshot(net), _snapshot(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_skip_leaves_a_new_head_to_the_caller():
    state = make_torchvision_gn_state(classes=1000)
    net = get_model('resnet50_v1b', num_classes=5, backend='ops')
    with pytest.raises(convert.WeightMismatchError, match='fc.weight'):
        convert.load_tensors(net, state, 'torchvision')
    convert.load_tensors(net, state, 'torchvision', skip=('fc.',))
    net.fc.initialize()
    assert net(mx.nd.zeros(IMAGE)).shape == (1, 5)


def test_unknown_format_and_extension_are_named():
    with pytest.raises(ValueError, match='caffe'):
        convert.read_tensors('x.pkl', 'caffe')
    with pytest.raises(ValueError, match='weights.bin'):
        convert.guess_format('weights.bin')


# --- the command line -----------------------------------------------------------------------
def test_command_line_converts_detectron_to_params(tmp_path, detectron_file):
    path, blobs = detectron_file
    out = str(tmp_path / 'r50_gn.params')
    result = subprocess.run([sys.executable, '-m', 'gn_mxnet.convert', path, out],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'resnet50_v1b' in result.stdout
    net = _gn50()
    net.load_parameters(out)  # a plain Gluon .params with our (gluoncv's) names
    image = _image(6)
    reference = detectron_forward(blobs, image)
    assert np.abs(_ours(net, image) - reference).max() < 1e-5 * max(1.0, np.abs(reference).max())


def test_command_line_refuses_a_mismatched_file_naming_the_tensor(tmp_path, capsys):
    blobs = make_detectron_blobs(classes=10)
    del blobs['res4_5_branch2c_w']
    path = str(tmp_path / 'broken.pkl')
    convert.write_tensors(blobs, path)
    out = str(tmp_path / 'never.params')
    assert cli.run(convert.main, [path, out, '--model', 'resnet50_v1b']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert '1 missing' in err and 'res4_5_branch2c_w' in err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_detectron_r101_gn_reproduces_the_source_model_at_224():
    blobs = make_detectron_blobs(R101_UNITS, classes=1000, seed=7)
    net = get_model('resnet101_v1b', norm='gn', backend='ops', last_gamma=False)
    convert.load_tensors(net, blobs, 'detectron')
    image = np.random.RandomState(8).uniform(-1, 1, (1, 3, 224, 224))
    reference = detectron_forward(blobs, image)
    diff = np.abs(_ours(net, image) - reference).max()
    print('Detectron R-101-GN at 224: max |ours - NumPy reference| = %.3g' % diff)
    assert diff < 1e-5 * max(1.0, np.abs(reference).max())
