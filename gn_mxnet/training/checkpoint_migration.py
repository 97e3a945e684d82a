"""Converts a checkpoint of an earlier version (checkpoint.pkl, a pickle) into this version's
data-only checkpoint: `python -m gn_mxnet.migrate DIR` (gn_mxnet/migrate.py).

The pickle is read by an unpickler that can build only what such a file holds, so a planted
one cannot run code here either. The old save_checkpoint pickled a dict of plain values and
numpy arrays (numpy's _frombuffer and dtype); its 'trainer' entry holds the bytes of MXNet's
trainer.save_states, a second pickle of (Updater.states, optimizer): NDArrays and an SGD/NAG
object. Those two are never built: stand-ins keep their pickled state (an NDArray's saved
bytes, the optimizer's attribute dict), and reading an NDArray's bytes is what mx.nd.load
does with a .params file. Anything else in either pickle (a function, a class to call, any
other global) refuses the file.
"""
import os
import pickle

import mxnet as mx
import numpy as np

from . import checkpoint as ckpt
from . import optimizer_state
from .rundir import adopt_legacy_run


class _LegacyNDArray:
    """An NDArray's pickled state, {'handle': its bytes}, read into a numpy array."""

    def __init__(self, handle=None):
        # NDArray.__reduce__ gives (NDArray, (None,), state): any other handle would be a
        # pointer taken from the file.
        if handle is not None:
            raise ValueError("an NDArray made from a handle")

    def __setstate__(self, state):
        if not isinstance(state, dict) or not isinstance(state.get('handle'), bytearray):
            raise ValueError("an NDArray without its data")
        array = mx.nd.NDArray.__new__(mx.nd.NDArray)
        array.__setstate__({'handle': state['handle']})
        self.value = array.asnumpy()


class _LegacyOptimizer:
    """An optimizer's pickled state: its attribute dict, never an optimizer object."""
    name = None

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ValueError("an optimizer without its attributes")
        self.state = state


def _optimizer_stand_ins():
    """A stand-in class for each optimizer MXNet registers (the old trainer's was SGD or NAG);
    each keeps its name, which the new format records."""
    names = {cls.__name__ for cls in mx.optimizer.Optimizer.opt_registry.values()}
    return {('mxnet.optimizer.optimizer', name): type(name, (_LegacyOptimizer,), {'name': name})
            for name in names}


# What the outer pickle (a dict of plain values and numpy arrays) may refer to: numpy's array
# reconstruction in its current and older forms, and NumPy scalars.
_OUTER = {
    ('numpy.core.numeric', '_frombuffer'): np.core.numeric._frombuffer,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy.core.multiarray', '_reconstruct'): np.core.multiarray._reconstruct,
    ('numpy.core.multiarray', 'scalar'): np.core.multiarray.scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, payload, allowed, path):
        import io
        super().__init__(io.BytesIO(payload))
        self.allowed, self.path = allowed, path

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise ckpt.CheckpointError(f"{self.path} refers to {module}.{name}, which a checkpoint "
                                   f"never holds: not migrated (start the run afresh with "
                                   f"--overwrite)")


def _unpickle(payload, allowed, path):
    try:
        return _RestrictedUnpickler(payload, allowed, path).load()
    except ckpt.CheckpointError:
        raise
    except Exception as error:   # any malformed pickle: one line, not the unpickler's trace
        raise ckpt.CheckpointError(f"{path} is not a readable pickled checkpoint "
                                   f"({type(error).__name__}: {error}); not migrated") from None


def _states(value):
    """Updater states with the stand-ins replaced by numpy arrays."""
    if isinstance(value, _LegacyNDArray):
        return value.value
    if isinstance(value, (tuple, list)):
        return type(value)(_states(item) for item in value)
    if value is None:
        return None
    raise ValueError(f"an optimizer state of type {type(value).__name__}")


def _trainer_state(payload, path):
    """(meta, arrays) of optimizer_state from the bytes of trainer.save_states."""
    allowed = {('mxnet.ndarray.ndarray', 'NDArray'): _LegacyNDArray,
               ('builtins', 'bytearray'): bytearray, **_optimizer_stand_ins()}
    loaded = _unpickle(payload, allowed, path)
    if not (isinstance(loaded, tuple) and len(loaded) == 2
            and isinstance(loaded[0], dict) and isinstance(loaded[1], _LegacyOptimizer)):
        raise ValueError("its trainer states are not (states, optimizer)")
    states, optimizer = loaded
    attributes = optimizer.state
    counts = attributes.get('_all_index_update_counts', {0: {}})
    current = attributes.get('_index_update_count')
    return optimizer_state.describe(optimizer.name, attributes, counts, current,
                                    {index: _states(value) for index, value in states.items()})


def legacy_state(path):
    """The state in pickled checkpoint `path`, as checkpoint.load_checkpoint returns it."""
    with open(path, 'rb') as f:
        old = _unpickle(f.read(), _OUTER, path)
    try:
        if not isinstance(old, dict) or old.get('version') != 1:
            raise ValueError("not a version 1 checkpoint")
        numpy_rng, python_rng = old['rng']['numpy'], old['rng']['python']
        meta, arrays = _trainer_state(old['trainer'], path)
        return {
            'version': ckpt.CHECKPOINT_VERSION,
            'epoch': int(old['epoch']),
            'params': {str(name): np.asarray(value) for name, value in old['params'].items()},
            'trainer': {'meta': meta, 'arrays': arrays},
            'rng': {'numpy': tuple(numpy_rng), 'python': tuple(python_rng)},
            'best': dict(old['best']),
            'history': list(old['history']),
            'config': dict(old['config']),
        }
    except ckpt.CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ckpt.CheckpointError(f"{path} is not a checkpoint this version can convert "
                                   f"({type(error).__name__}: {error}); start the run afresh "
                                   f"with --overwrite") from None


def migrate(out_dir, run_files):
    """Writes out_dir's checkpoint.pkl as this version's checkpoint (checked by reading it
    back), then removes the pickle. A folder of a version before run records gets one listing
    the files of `run_files` present (the user vouched for the folder by migrating it), so
    the run resumes and --overwrite may replace them. Returns (new checkpoint, names
    recorded)."""
    old = os.path.join(out_dir, ckpt.LEGACY_CHECKPOINT_NAME)
    new = os.path.join(out_dir, ckpt.CHECKPOINT_NAME)
    if not os.path.isfile(old):
        raise FileNotFoundError(f"no {ckpt.LEGACY_CHECKPOINT_NAME} to migrate in {out_dir}")
    if os.path.exists(new):
        raise FileExistsError(f"{new} exists already: {out_dir} was migrated (remove {old})")
    ckpt.write_state(new, legacy_state(old))
    ckpt.read_state(new)
    recorded = adopt_legacy_run(out_dir, set(run_files) | {ckpt.CHECKPOINT_NAME})
    os.remove(old)
    return new, recorded
