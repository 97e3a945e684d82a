"""The IDX file format of MNIST and Fashion-MNIST (LeCun's, as Zalando distributes it), read
strictly: a file whose header, size or compression does not add up is refused, never returned
as a wrong array."""
import gzip
import os
import zlib

import numpy as np

# IDX type codes -> big-endian NumPy dtypes.
IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
GZIP_MAGIC = b'\x1f\x8b'


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def _read_bytes(path):
    with open(path, 'rb') as f:
        raw = f.read()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise IDXFormatError(f"{path} is a damaged gzip file ({error}); download or reinstall "
                             f"it") from None


def read_idx(path):
    """The array stored in an IDX file (.gz or plain), in its native dtype."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    payload = _read_bytes(path)
    if len(payload) < 4 or payload[:2] != b'\x00\x00':
        raise IDXFormatError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = payload[2], payload[3]
    if type_code not in IDX_DTYPES or ndim == 0:
        raise IDXFormatError(f"{path} is not an IDX file (type code {type_code:#x}, "
                             f"{ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise IDXFormatError(f"{path} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(payload, '>u4', count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) - header != expected:
        raise IDXFormatError(f"{path} holds {len(payload) - header} data bytes, its header "
                             f"{shape} of {dtype.name} says {expected}: truncated or corrupt")
    native = dtype.newbyteorder('=')
    return np.frombuffer(payload, dtype, offset=header).reshape(shape).astype(native)
