"""Training checkpoints: weights, optimizer states, RNG states and history in one file of data
only, written atomically (gn_mxnet.utils.files), so a kill at any moment leaves the last
complete checkpoint.

The file is an .npz read with allow_pickle=False: numeric arrays (weights, optimizer states,
NumPy's RNG keys) and one uint8 array holding JSON (epoch, best, history, config, the other
RNG and optimizer values). Loading it cannot run code, so a checkpoint planted in an out-dir
(the comparison and the study resume theirs without --resume) is data or an error. Checkpoints
of earlier versions were pickles (checkpoint.pkl): they are never loaded, only converted on
request by `python -m gn_mxnet.migrate DIR` (checkpoint_migration, which
unpickles with nothing but the arrays and optimizer values such a file holds).
"""
import io
import json
import os
import random
import zipfile
import zlib

import mxnet as mx
import numpy as np

from ..utils.files import atomic_path, atomic_write_bytes
from . import optimizer_state

CHECKPOINT_NAME = 'checkpoint.npz'
LEGACY_CHECKPOINT_NAME = 'checkpoint.pkl'   # the pickles of earlier versions
CHECKPOINT_VERSION = 2
MIGRATE_COMMAND = 'python -m gn_mxnet.migrate'   # gn_mxnet/migrate.py
_META = 'meta'                 # the JSON, as uint8
_NUMPY_KEYS = 'rng/numpy'      # MT19937's 624 uint32 keys
# What np.load and zipfile raise on a truncated, corrupt or foreign file.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error,
               NotImplementedError)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class _OtherVersion(ValueError):
    pass


def save_parameters(net, path):
    """net.save_parameters(path), atomically."""
    with atomic_path(path) as tmp:
        net.save_parameters(tmp)


def parameter_arrays(net):
    """{structural name: numpy array} of every parameter (the names save_parameters uses)."""
    return {name: param.data().asnumpy()
            for name, param in net._collect_params_with_prefix().items()}


def set_parameter_arrays(net, arrays):
    params = net._collect_params_with_prefix()
    missing = sorted(set(params) - set(arrays))
    unexpected = sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the network: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, param in params.items():
        value = arrays[name]
        if tuple(param.shape) != value.shape:
            raise ValueError(f"checkpoint parameter {name} has shape {value.shape}, the "
                             f"network expects {param.shape}")
        param.set_data(mx.nd.array(value, dtype=value.dtype))


def require_finite(net, when):
    """Raises FloatingPointError naming the parameters holding NaN or Inf. Called before a run
    writes its params and checkpoint, so a diverged step never replaces the last good ones.
    (A finite loss does not prove finite weights: ReLU maps NaN to 0.)"""
    bad = [name for name, param in net._collect_params_with_prefix().items()
           if not np.isfinite(param.data().asnumpy()).all()]
    if bad:
        raise FloatingPointError(f"{when}: {len(bad)} parameter(s) are NaN or Inf "
                                 f"({', '.join(bad[:5])}); nothing was written, the last "
                                 f"checkpoint stays; lower the learning rate")


def has_checkpoint(out_dir):
    """Whether `out_dir` holds a checkpoint (of this version or a pickle of an earlier one),
    that is, whether a run there continues instead of starting."""
    return any(os.path.isfile(os.path.join(out_dir, name))
               for name in (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME))


def python_rng_state():
    return {'numpy': np.random.get_state(), 'python': random.getstate()}


def restore_python_rng_state(state):
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])


def checkpoint_state(*, net, trainer, epoch, best, history, config):
    """Everything needed to continue after `epoch` completed epochs, as load_checkpoint
    returns it."""
    meta, arrays = optimizer_state.trainer_state(trainer)
    return {
        'version': CHECKPOINT_VERSION,
        'epoch': epoch,
        'params': parameter_arrays(net),
        'trainer': {'meta': meta, 'arrays': arrays},
        'rng': python_rng_state(),
        'best': dict(best),
        'history': list(history),
        'config': dict(config),
    }


def _plain(value):
    """JSON for NumPy scalars (COCOeval's figures are np.float64, counts may be np.int64)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def encode(state):
    """{name: numpy array} for np.savez: the state's arrays, and its other values as JSON."""
    names = sorted(state['params'])
    numpy_rng = state['rng']['numpy']
    python_rng = state['rng']['python']
    meta = {
        'version': state['version'],
        'epoch': state['epoch'],
        'best': state['best'],
        'history': state['history'],
        'config': state['config'],
        'params': names,
        'trainer': state['trainer']['meta'],
        # (name, keys, pos, has_gauss, cached_gaussian); the keys are an array.
        'rng_numpy': [numpy_rng[0]] + list(numpy_rng[2:]),
        # (version, 625 ints, gauss_next)
        'rng_python': [python_rng[0], list(python_rng[1]), python_rng[2]],
    }
    text = json.dumps(meta, default=_plain)
    arrays = {_META: np.frombuffer(text.encode('utf-8'), dtype=np.uint8),
              _NUMPY_KEYS: np.asarray(numpy_rng[1], dtype=np.uint32)}
    arrays.update((f'param/{i}', np.asarray(state['params'][name]))
                  for i, name in enumerate(names))
    arrays.update(state['trainer']['arrays'])
    for key, value in arrays.items():
        if value.dtype.hasobject:   # np.savez would pickle it
            raise TypeError(f"checkpoint array {key} holds Python objects")
    return arrays


def decode(arrays):
    """The state that `encode` made `arrays` from; ValueError/KeyError/TypeError if they are
    not such arrays."""
    meta = json.loads(bytes(arrays[_META].astype(np.uint8)).decode('utf-8'))
    if meta['version'] != CHECKPOINT_VERSION:
        raise _OtherVersion(f"it is a checkpoint of version {meta['version']}, this "
                            f"gn_mxnet reads version {CHECKPOINT_VERSION}")
    name, pos, has_gauss, cached = meta['rng_numpy']
    version, words, gauss = meta['rng_python']
    rng = {'numpy': (name, arrays[_NUMPY_KEYS], pos, has_gauss, cached),
           'python': (version, tuple(words), gauss)}
    # Checked now, on generators of their own: a bad state fails here, not mid-restore.
    np.random.RandomState().set_state(rng['numpy'])
    random.Random().setstate(rng['python'])
    trainer_meta = meta['trainer']
    trainer_arrays = {key: arrays[key] for key in optimizer_state.array_keys(trainer_meta)}
    return {
        'version': meta['version'],
        'epoch': int(meta['epoch']),
        'params': {name: arrays[f'param/{i}'] for i, name in enumerate(meta['params'])},
        'trainer': {'meta': trainer_meta, 'arrays': trainer_arrays},
        'rng': rng,
        'best': meta['best'],
        'history': meta['history'],
        'config': meta['config'],
    }


def write_state(path, state):
    """`state` into the checkpoint file `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **encode(state))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _reason(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def read_state(path):
    """The state in checkpoint file `path`; CheckpointError if it is not a whole checkpoint."""
    try:
        loaded = np.load(path, allow_pickle=False)   # allow_pickle=False: data, never code
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}   # reads (and checks) all
        return decode(arrays)
    except _OtherVersion as error:
        raise CheckpointError(f"{path}: {error}; resume it with the gn_mxnet that wrote it, "
                              f"or start the run afresh with --overwrite") from None
    except (*_UNREADABLE, TypeError, IndexError) as error:
        raise CheckpointError(f"{path} is not a complete checkpoint ({_reason(error)}); "
                              f"restore it from a copy, or start the run afresh with "
                              f"--overwrite") from None


def save_checkpoint(out_dir, *, net, trainer, epoch, best, history, config):
    """Everything needed to continue after `epoch` completed epochs, in one atomic file."""
    state = checkpoint_state(net=net, trainer=trainer, epoch=epoch, best=best,
                             history=history, config=config)
    return write_state(os.path.join(out_dir, CHECKPOINT_NAME), state)


def legacy_refusal(out_dir, otherwise="start the run afresh with --overwrite"):
    """The error for a folder holding a pickled checkpoint of an earlier version; `otherwise`
    is the remedy besides migrating."""
    path = os.path.join(out_dir, LEGACY_CHECKPOINT_NAME)
    return CheckpointError(
        f"{path} is a checkpoint of an earlier gn_mxnet, a pickle, which is never loaded "
        f"(unpickling can run code); if you trust it, convert it with `{MIGRATE_COMMAND} "
        f"{out_dir}`, or {otherwise}")


def load_checkpoint(out_dir):
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(out_dir, LEGACY_CHECKPOINT_NAME)):
            raise legacy_refusal(out_dir)
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {path}")
    return read_state(path)


def restore_checkpoint(state, *, net, trainer):
    """Puts weights, optimizer states and Python/NumPy RNG states back; returns the epoch."""
    set_parameter_arrays(net, state['params'])
    optimizer_state.restore_trainer_state(trainer, state['trainer']['meta'],
                                          state['trainer']['arrays'])
    restore_python_rng_state(state['rng'])
    return state['epoch']
