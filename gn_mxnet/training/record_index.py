"""RecordIO bookkeeping for reading `.rec` files on several workers: the `.idx` index beside a
`.rec`, the number of records, and how MXNet splits an indexed file into parts.

Without an index, ImageRecordIter's ``num_parts`` cuts the file into parts of equal *bytes*;
with images of uneven sizes the parts hold different numbers of records, a worker with a short
part ends its epoch early, and the others wait for it in their next allreduce. Given the index
(``path_imgidx``), dmlc-core's indexed splitter cuts by *records* instead: part k holds records
[k·s, (k+1)·s) of the file's order with s = ceil(n / parts), so only the last part is shorter.
"""
import os

import mxnet as mx

from .source import DataError

HOW_TO_INDEX = ("make one with im2rec (mxnet/tools/im2rec.py in the mxnet package writes "
                "NAME.idx beside NAME.rec), or write the records with "
                "mx.recordio.MXIndexedRecordIO(idx_path, rec_path, 'w').write_idx(key, record)")


# dmlc-core's RecordIO magic number, the first 4 bytes (little-endian) of every record.
RECORDIO_MAGIC = (0xced7230a).to_bytes(4, 'little')


def check_recordio(rec_path, what='the .rec file'):
    """Refuses a file that is not RecordIO (MXNet's own check ends in a C++ stack trace)."""
    with open(rec_path, 'rb') as f:
        start = f.read(4)
    if start != RECORDIO_MAGIC:
        raise DataError(f"{what} {rec_path} is not a RecordIO file ("
                         f"{'it is empty' if not start else 'it does not start with one record'}"
                         f"); make it with im2rec (mxnet/tools/im2rec.py)")


def index_path(rec_path):
    """The index MXNet and im2rec pair with NAME.rec: NAME.idx."""
    return os.path.splitext(rec_path)[0] + '.idx'


def existing_index(rec_path):
    path = index_path(rec_path)
    return path if os.path.isfile(path) else None


def count_records(rec_path):
    """Records in a `.rec`: its index's entries, or (no index) a pass over the whole file."""
    idx = existing_index(rec_path)
    if idx:
        with open(idx) as f:
            return sum(1 for line in f if line.strip())
    reader = mx.recordio.MXRecordIO(rec_path, 'r')
    count = 0
    while reader.read() is not None:
        count += 1
    reader.close()
    return count


def part_sizes(num_records, num_parts):
    """Records in each part of dmlc-core's IndexedRecordIOSplitter (ceil-sized parts)."""
    step = -(-num_records // num_parts)
    return [max(0, min(num_records, (k + 1) * step) - k * step) for k in range(num_parts)]
