"""Training checkpoints: weights, optimizer states, RNG states and history in one file, written
atomically (gn_mxnet.utils.files), so a kill at any moment leaves the last complete checkpoint.
"""
import os
import pickle
import random
import tempfile

import mxnet as mx
import numpy as np

from ..utils.files import atomic_path, atomic_write_bytes

CHECKPOINT_NAME = 'checkpoint.pkl'
CHECKPOINT_VERSION = 1


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


def trainer_state_bytes(trainer):
    """The optimizer and its per-parameter states (momentum, fp32 master weights)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'trainer.states')
        trainer.save_states(path)
        with open(path, 'rb') as f:
            return f.read()


def load_trainer_state_bytes(trainer, payload):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'trainer.states')
        with open(path, 'wb') as f:
            f.write(payload)
        trainer.load_states(path)


def python_rng_state():
    return {'numpy': np.random.get_state(), 'python': random.getstate()}


def restore_python_rng_state(state):
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])


def save_checkpoint(out_dir, *, net, trainer, epoch, best, history, config):
    """Everything needed to continue after `epoch` completed epochs, in one atomic file."""
    state = {
        'version': CHECKPOINT_VERSION,
        'epoch': epoch,
        'params': parameter_arrays(net),
        'trainer': trainer_state_bytes(trainer),
        'rng': python_rng_state(),
        'best': dict(best),
        'history': list(history),
        'config': dict(config),
    }
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    atomic_write_bytes(path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def load_checkpoint(out_dir):
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {path}")
    with open(path, 'rb') as f:
        state = pickle.load(f)
    if state.get('version') != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {state.get('version')}, this code "
                         f"reads version {CHECKPOINT_VERSION}")
    return state


def restore_checkpoint(state, *, net, trainer):
    """Puts weights, optimizer states and Python/NumPy RNG states back; returns the epoch."""
    set_parameter_arrays(net, state['params'])
    load_trainer_state_bytes(trainer, state['trainer'])
    restore_python_rng_state(state['rng'])
    return state['epoch']
