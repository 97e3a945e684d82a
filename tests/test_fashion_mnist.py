"""Fashion-MNIST: the strict IDX reader on files written here, the data source on a small
folder and on the real Debian files, and the trainer's --dataset fashion-mnist."""
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gn_mxnet.training import grey_images as gi
from gn_mxnet.training.idx import IDXFormatError, read_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'train', 'train_imagenet.py')
REAL = all(os.path.isfile(os.path.join(gi.FASHION_MNIST_DIR, name))
           for names in gi.FASHION_MNIST_FILES.values() for name in names)


def idx_bytes(array):
    codes = {np.dtype('uint8'): 0x08, np.dtype('int32'): 0x0C, np.dtype('float32'): 0x0D}
    header = struct.pack('>BBBB', 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack('>' + 'I' * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def write_idx(path, array, compress=True):
    payload = idx_bytes(array)
    with open(path, 'wb') as f:
        f.write(gzip.compress(payload) if compress else payload)
    return path


def write_fashion_folder(folder, n_train=64, n_test=32, seed=0):
    """Zalando's four files with random garments-like content and balanced labels."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        images_name, labels_name = gi.FASHION_MNIST_FILES[split]
        write_idx(os.path.join(folder, images_name),
                  rng.randint(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(os.path.join(folder, labels_name), (np.arange(n) % 10).astype(np.uint8))
    return folder


@pytest.mark.parametrize('compress', [True, False])
@pytest.mark.parametrize('array', [np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
                                   np.array([-1, 7, 2 ** 30], dtype=np.int32),
                                   np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)])
def test_idx_round_trip(tmp_path, array, compress):
    back = read_idx(write_idx(str(tmp_path / 'a.idx'), array, compress))
    assert back.dtype == array.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_refuses_truncated_corrupt_and_foreign_files(tmp_path):
    payload = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    cases = {'short.idx': payload[:-1], 'long.idx': payload + b'\0',
             'header.idx': payload[:9], 'magic.idx': b'\x01\x00' + payload[2:],
             'type.idx': payload[:2] + b'\x07' + payload[3:],
             'cut.gz': gzip.compress(payload)[:-12]}
    corrupt = bytearray(gzip.compress(payload))
    corrupt[len(corrupt) // 2] ^= 0xFF
    cases['crc.gz'] = bytes(corrupt)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(IDXFormatError, match='truncated|corrupt|not an IDX|damaged'):
            read_idx(str(tmp_path / name))
    with pytest.raises(FileNotFoundError):
        read_idx(str(tmp_path / 'absent.idx'))


def test_missing_files_name_the_install_command_and_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(gi, 'FASHION_MNIST_DIR', str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError) as default:
        gi.load_fashion_mnist()
    assert gi.FASHION_MNIST_INSTALL in str(default.value)
    assert 'train-images-idx3-ubyte.gz' in str(default.value)
    write_fashion_folder(str(tmp_path))
    os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
    with pytest.raises(FileNotFoundError, match='missing: t10k-labels-idx1-ubyte.gz;'):
        gi.load_fashion_mnist(str(tmp_path))


def test_labels_must_match_the_images(tmp_path):
    folder = write_fashion_folder(str(tmp_path))
    write_idx(os.path.join(folder, 'train-labels-idx1-ubyte.gz'), np.zeros(63, np.uint8))
    with pytest.raises(IDXFormatError, match='labels for 64 images'):
        gi.load_fashion_mnist(folder)
    write_idx(os.path.join(folder, 'train-labels-idx1-ubyte.gz'), np.full(64, 10, np.uint8))
    with pytest.raises(IDXFormatError, match='outside 0..9'):
        gi.load_fashion_mnist(folder)


def test_source_on_a_folder_uses_the_official_split_and_repeats_epochs(tmp_path):
    folder = write_fashion_folder(str(tmp_path), n_train=64, n_test=32)
    source = gi.FashionMNISTSource(batch_size=16, seed=5, folder=folder)
    assert (len(source.x_train), len(source.x_val), source.num_train) == (64, 32, 64)
    (x_train, _), (x_test, y_test) = gi.load_fashion_mnist(folder)
    expected_val = (x_test.astype(np.float32) / 255 - gi.FASHION_MEAN) / gi.FASHION_STD
    val = np.concatenate([x.asnumpy() for x, _ in source.val_batches()])
    np.testing.assert_allclose(val[:, 0], expected_val, rtol=1e-6)
    first = [x.asnumpy() for x, _ in source.train_batches(3)]
    again = [x.asnumpy() for x, _ in source.train_batches(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # Mirroring: some images of an epoch are flipped left-right versions of their source.
    unshifted = gi.FashionMNISTSource(batch_size=64, seed=5, folder=folder, shift_pixels=0)
    batch, labels = next(iter(unshifted.train_batches(0)))
    normalized = (x_train.astype(np.float32) / 255 - gi.FASHION_MEAN) / gi.FASHION_STD
    flipped = sum(any(np.array_equal(img[0], ref[:, ::-1]) for ref in normalized)
                  for img in batch.asnumpy())
    assert 0 < flipped < 64


@pytest.mark.skipif(not REAL and not os.environ.get('CI'),
                    reason=f'Fashion-MNIST not installed ({gi.FASHION_MNIST_INSTALL})')
def test_the_real_files_hold_the_official_60k_10k_split():
    (x_train, y_train), (x_test, y_test) = gi.load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert abs(x_train.mean() / 255 - gi.FASHION_MEAN) < 1e-3
    assert abs(x_train.std() / 255 - gi.FASHION_STD) < 1e-3


def run_trainer(*args, timeout=600):
    done = subprocess.run([sys.executable, SCRIPT, '--no-progress', *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index('{'):])


def test_trainer_reads_a_named_folder(tmp_path, native_library):
    folder = write_fashion_folder(str(tmp_path / 'fmnist'))
    out = run_trainer('--dataset', 'fashion-mnist', '--data-dir', folder, '--epochs', '1',
                      '--batch-size', '16', '--out-dir', str(tmp_path / 'run'))
    summary = json.load(open(out['summary']))
    assert summary['data'].startswith(f'Fashion-MNIST ({folder})')
    assert summary['config']['dataset'] == 'fashion-mnist' and summary['epochs_done'] == 1


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason=f'Fashion-MNIST not installed ({gi.FASHION_MNIST_INSTALL})')
def test_fashion_mnist_preset_reaches_91_percent_in_15_minutes(tmp_path, native_library):
    out = run_trainer('--dataset', 'fashion-mnist', '--out-dir', str(tmp_path), timeout=15 * 60)
    print(json.dumps(out))
    assert out['final_val_top1'] >= 0.91
