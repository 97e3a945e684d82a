"""Weight files: .safetensors state dicts, pickles refused unless they hold only arrays, and
writes that a kill or an exception cannot truncate (gn_mxnet/models/weight_files.py).

The state dicts are test_convert's: torchvision's real ResNet-50 names and shapes, random values.
"""
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gn_mxnet.models import convert, get_model
from gn_mxnet.utils import cli
from test_convert import (IMAGE, _gn50, _snapshot, check_reproduces_torchvision,
                          make_detectron_blobs, make_torchvision_gn_state)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def torch_state():
    return make_torchvision_gn_state()


def _same_tensors(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
                                    for k in a)


# --- safetensors ----------------------------------------------------------------------------
def test_safetensors_save_and_read_back_are_identical(tmp_path):
    net = _gn50()
    net(mx.nd.zeros(IMAGE))
    path = str(tmp_path / 'r50_gn.safetensors')
    convert.save_weights(net, path)
    written = load_file(path)  # what any safetensors reader (timm, torch) sees
    assert 'layer1.0.bn1.weight' in written and 'layer4.2.downsample.0.weight' not in written
    ours = _snapshot(net)
    assert _same_tensors(written, {convert.ours_to_torchvision(k): v for k, v in ours.items()})
    # The same names as the torchvision .npz format.
    assert set(written) == set(convert.export_tensors(net, 'torchvision'))
    again = convert.load_weights(_gn50(), path)
    assert _same_tensors(_snapshot(again), ours)


def test_safetensors_state_dict_reproduces_the_source_model(tmp_path, torch_state):
    path = str(tmp_path / 'resnet50_gn.safetensors')
    save_file(torch_state, path)
    check_reproduces_torchvision(convert.load_weights(_gn50(), path), torch_state, 'safetensors')


def test_command_line_safetensors_to_params_and_back_is_exact(tmp_path, torch_state):
    source, params = str(tmp_path / 'src.safetensors'), str(tmp_path / 'mid.params')
    back = str(tmp_path / 'back.safetensors')
    save_file(torch_state, source)
    assert convert.main([source, params]) == 0
    assert convert.main([params, back]) == 0
    assert _same_tensors(load_file(back), torch_state)
    net = _gn50()
    net.load_parameters(params)  # the middle file is a plain Gluon .params
    assert np.array_equal(net.layer3[5].bn2.gamma.data().asnumpy(),
                          torch_state['layer3.5.bn2.weight'])


def test_safetensors_mismatch_is_refused_by_name_and_loads_nothing(tmp_path, torch_state):
    broken = dict(torch_state)
    del broken['layer2.1.bn2.weight']
    broken['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
    broken['layer1.0.conv2.weight'] = np.zeros((64, 64, 1, 1), np.float32)
    path = str(tmp_path / 'broken.safetensors')
    save_file(broken, path)
    net = _gn50()
    net(mx.nd.zeros(IMAGE))
    before = _snapshot(net)
    with pytest.raises(convert.WeightMismatchError) as error:
        convert.load_weights(net, path)
    message = str(error.value)
    for name in ('layer2.1.bn2.gamma (layer2.1.bn2.weight)', 'layer5.0.conv1.weight',
                 'layer1.0.conv2.weight (64, 64, 1, 1) (net wants (64, 64, 3, 3))'):
        assert name in message, (name, message)
    assert _same_tensors(_snapshot(net), before)


def test_safetensors_batchnorm_round_trip_keeps_running_statistics(tmp_path):
    net = get_model('resnet20_small', num_classes=10, norm='bn', backend='ops')
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = str(tmp_path / 'bn.safetensors')
    convert.save_weights(net, path)
    written = load_file(path)
    assert written['layer1.0.bn1.num_batches_tracked'].dtype == np.int64
    assert convert.describe(written, 'safetensors') == ('resnet20_small', 10, 'bn')
    again = get_model('resnet20_small', num_classes=10, norm='bn', backend='ops')
    convert.load_weights(again, path)
    assert _same_tensors(_snapshot(again), _snapshot(net))


# --- pickles that would run code ------------------------------------------------------------
class _RunsACommand:
    """What a malicious .pkl holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ('touch %s' % self.marker,)


@pytest.mark.parametrize('where', ['top', 'inside blobs'])
def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, where):
    marker = tmp_path / 'pwned'
    payload = _RunsACommand(marker)
    blobs = {'conv1_w': np.ones((64, 3, 7, 7), np.float32)}
    if where == 'top':
        content = payload
    else:
        blobs['conv1_gn_s'] = payload
        content = {'blobs': blobs}
    path = str(tmp_path / 'evil.pkl')
    with open(path, 'wb') as f:
        pickle.dump(content, f, protocol=2)
    with pytest.raises(convert.UnsafePickleError) as error:
        convert.read_tensors(path)
    assert 'posix.system' in str(error.value) and path in str(error.value)
    assert not marker.exists()
    # The command line says so and exits 1 (a refusal at run time), still without running it.
    assert cli.run(convert.main, [path, str(tmp_path / 'never.params')]) == 1
    assert not marker.exists() and not (tmp_path / 'never.params').exists()


def test_array_pickles_still_load(tmp_path):
    """Every protocol Python 3 writes (5 rebuilds arrays differently), a NumPy scalar among
    the blobs."""
    blobs = make_detectron_blobs(classes=10)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = str(tmp_path / ('p%d.pkl' % protocol))
        with open(path, 'wb') as f:
            pickle.dump({'blobs': dict(blobs, lr=np.float32(0.1)), 'cfg': 'MODEL: {}'}, f,
                        protocol=protocol)
        read = convert.read_tensors(path)
        assert read['lr'] == np.float32(0.1)
        del read['lr']
        assert _same_tensors(read, blobs)
    # NumPy >= 2 names numpy._core where NumPy < 1.24 has numpy.core (protocol 2 spells globals
    # out as text, so the rename is a byte replacement).
    path = str(tmp_path / 'numpy2.pkl')
    with open(path, 'wb') as f:
        f.write(pickle.dumps({'blobs': blobs}, protocol=2).replace(b'numpy.core', b'numpy._core'))
    assert _same_tensors(convert.read_tensors(path), blobs)


# --- atomic writes --------------------------------------------------------------------------
OLD = b'the previous, complete weight file'


@pytest.mark.parametrize('extension', ['.pkl', '.npz', '.safetensors'])
def test_an_exception_mid_write_leaves_the_old_file(tmp_path, extension):
    path = tmp_path / ('out' + extension)
    path.write_bytes(OLD)
    # The arrays are written first; the object array after them cannot be serialized.
    tensors = {'conv1.weight': np.ones((256, 256), np.float32),
               'z.unwritable': np.array([lambda: 0], dtype=object)}
    with pytest.raises(Exception):
        convert.write_tensors(tensors, str(path))
    assert path.read_bytes() == OLD
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


# Kills the converter right after mx.nd.save has written half the file, before it returns:
# where a kill mid-write leaves things.
_KILLED_MID_WRITE = '''
import os, signal, sys
import mxnet as mx
real_save = mx.nd.save
def save_half_then_die(fname, data):
    real_save(fname, data)
    with open(fname, 'r+b') as f:
        f.truncate(os.path.getsize(fname) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
mx.nd.save = save_half_then_die
from gn_mxnet.models import convert
sys.exit(convert.main(sys.argv[1:]))
'''


def test_a_kill_mid_write_leaves_the_old_params_file(tmp_path, torch_state):
    source, out = str(tmp_path / 'src.npz'), tmp_path / 'out.params'
    np.savez(source, **torch_state)
    out.write_bytes(OLD)
    killed = subprocess.run([sys.executable, '-c', _KILLED_MID_WRITE, source, str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert out.read_bytes() == OLD
