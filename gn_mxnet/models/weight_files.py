"""Reading and writing the weight file formats, each in its own naming (convert.py maps names).

- ``detectron``: a pickled ``{'blobs': {name: ndarray}}`` (``.pkl``). Unpickling runs whatever
  callables the file names, so it goes through :class:`WeightUnpickler`, which resolves only
  what rebuilding NumPy arrays needs and refuses anything else by name.
- ``gluoncv``: an MXNet ``.params`` file (``mx.nd.save``).
- ``torchvision``: a PyTorch ``state_dict`` as ``.npz`` (``np.load`` refuses pickled objects).
- ``safetensors``: a ``.safetensors`` state dict with torchvision/timm names, through the
  ``safetensors`` package's NumPy API (no torch).

Every write goes through ``utils/files.py``: a temporary file in the destination's folder that
replaces the destination only once complete, so a kill or an exception mid-write leaves the
previous file as it was.
"""
import os
import pickle

import mxnet as mx
import numpy as np

from ..utils import cli
from ..utils.files import atomic_path, atomic_write_bytes

FORMATS = ('detectron', 'gluoncv', 'torchvision', 'safetensors')
"""The weight-file formats, as `fmt=`/`--from`/`--to` name them: 'detectron' (a Caffe2
pickle, `.pkl`), 'gluoncv' (MXNet `.params`), 'torchvision' (a state dict saved as `.npz`),
'safetensors' (`.safetensors`, torchvision/timm names). Without one, the extension decides."""
_EXTENSIONS = {'.pkl': 'detectron', '.npz': 'torchvision', '.params': 'gluoncv',
               '.safetensors': 'safetensors'}
# The parameter naming each format uses: safetensors files of ResNets are PyTorch state dicts.
NAMING = {'detectron': 'detectron', 'gluoncv': 'gluoncv', 'torchvision': 'torchvision',
          'safetensors': 'torchvision'}


class WeightMismatchError(ValueError):
    """A weight file does not fit the net. The message counts each kind of problem and names
    the first few of each (a ResNet-50 of another net would list hundreds); the full lists are
    the attributes ``missing`` (the net's parameters the file lacks), ``unexpected`` (the file's
    tensors the net lacks) and ``misshaped`` (tensors of the wrong shape)."""
    SHOWN = 3   # names per kind in the message

    def __init__(self, message, missing=(), unexpected=(), misshaped=()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.misshaped = list(misshaped)

    @classmethod
    def of(cls, what, missing, unexpected, misshaped):
        """'<what>: 12 missing, 3 unexpected, 2 of the wrong shape; missing: a, b, c, ...'"""
        kinds = [(label, names) for label, names in (
            ('missing', missing), ('unexpected', unexpected), ('of the wrong shape', misshaped))
            if names]
        counts = ', '.join('%d %s' % (len(names), label) for label, names in kinds)
        firsts = '; '.join('%s: %s%s' % (label, ', '.join(names[:cls.SHOWN]),
                                         ', ...' if len(names) > cls.SHOWN else '')
                           for label, names in kinds)
        return cls('%s: %s; %s' % (what, counts, firsts), missing, unexpected, misshaped)


class WeightFileError(ValueError):
    """A weight file cannot be read: empty, truncated, or not of the format it claims."""


class UnsafePickleError(ValueError):
    """A pickle names a global that weight files never need (it could run code)."""


def guess_format(path):
    fmt = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError("cannot tell the format of %r from its extension; pass one of %s"
                         % (path, ', '.join(FORMATS)))
    return fmt


def check_format(fmt):
    if fmt not in FORMATS:
        raise ValueError("unknown weight format %r; choose one of %s" % (fmt, ', '.join(FORMATS)))
    return fmt


class WeightUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, numbers and NumPy arrays, nothing else.

    Everything else a pickle can hold reaches the loader as a global to look up (``posix.system``
    is one); NumPy arrays and scalars need exactly the globals below, each of which only builds
    an array or a dtype from bytes: ``_reconstruct``/``ndarray``/``dtype`` (protocols 0-4),
    ``_frombuffer`` (protocol 5), ``scalar`` (NumPy scalars), and ``_codecs.encode``, which is
    how Python 3 writes ``bytes`` at protocol 2 (ours and any Python 3 Detectron file).
    """
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
               ('numpy.core.numeric', '_frombuffer'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
               ('_codecs', 'encode')}
    # NumPy >= 2 pickles name its private package numpy._core, which NumPy < 1.24 lacks.
    RENAMED = {'numpy._core.multiarray': 'numpy.core.multiarray',
               'numpy._core.numeric': 'numpy.core.numeric'}

    def __init__(self, file, source):
        # Detectron's pickles were written by Python 2; latin1 keeps their bytes intact.
        super().__init__(file, encoding='latin1')
        self.source = source

    def find_class(self, module, name):
        module = self.RENAMED.get(module, module)
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                "refusing to unpickle %s: it names the global %s.%s, and a weight file holds "
                "only dicts, lists, tuples, strings, numbers and NumPy arrays (allowed globals: "
                "%s)" % (self.source, module, name,
                         ', '.join(sorted('%s.%s' % pair for pair in self.ALLOWED))))
        return super().find_class(module, name)


def read_tensors(path, fmt=None):
    """{name: numpy array} of a weight file, in the file's own naming. A missing file raises
    FileNotFoundError, an empty or damaged one :class:`WeightFileError`, both naming it."""
    fmt = check_format(fmt or guess_format(path))
    if not os.path.isfile(path):
        raise FileNotFoundError("no weight file %s" % path)
    if os.path.getsize(path) == 0:
        raise WeightFileError("the weight file %s is empty" % path)
    try:
        return _read(path, fmt)
    except (UnsafePickleError, WeightMismatchError):
        raise
    except Exception as error:   # each format's reader fails its own way on a damaged file
        cause = cli.message_of(error)[:200]
        raise WeightFileError("%s is not a readable %s weight file (%s: %s); is it complete, "
                              "and of that format?" % (path, fmt, type(error).__name__, cause)
                              ) from error


def _read(path, fmt):
    if fmt == 'detectron':
        with open(path, 'rb') as f:
            blobs = WeightUnpickler(f, path).load()
        blobs = blobs.get('blobs', blobs) if isinstance(blobs, dict) else blobs
        if not isinstance(blobs, dict):
            raise WeightMismatchError("%s is not a Detectron weight pickle (expected a dict "
                                      "of blobs, got %s)" % (path, type(blobs).__name__))
        return {name: np.asarray(value) for name, value in blobs.items()}
    if fmt == 'torchvision':
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    if fmt == 'safetensors':
        from safetensors.numpy import load_file  # only this format needs the package
        return load_file(path)
    return {name: array.asnumpy() for name, array in mx.nd.load(path).items()}


def write_tensors(tensors, path, fmt=None):
    """Write {name: numpy array} (already in the format's naming) to ``path``, atomically."""
    fmt = check_format(fmt or guess_format(path))
    if fmt == 'detectron':
        # Protocol 2 keeps the file readable by Detectron's Python 2.
        atomic_write_bytes(path, pickle.dumps({'blobs': tensors}, protocol=2))
    elif fmt == 'safetensors':
        from safetensors.numpy import save
        # Hugging Face loaders refuse a file whose metadata does not say which framework's
        # layout it holds; PyTorch's (row-major, the names above) is NumPy's.
        atomic_write_bytes(path, save({name: np.ascontiguousarray(value)
                                       for name, value in tensors.items()},
                                      metadata={'format': 'pt'}))
    else:
        with atomic_path(path) as tmp:
            if fmt == 'torchvision':
                with open(tmp, 'wb') as f:  # an open file keeps np.savez from appending '.npz'
                    np.savez(f, **tensors)
            else:
                mx.nd.save(tmp, {name: mx.nd.array(value, dtype=value.dtype)
                                 for name, value in tensors.items()})
