"""A Gluon Trainer's optimizer state as data: JSON-able values plus numpy arrays, never a pickle.

MXNet's own trainer.save_states/load_states pickle the updater's states and the optimizer
object, and unpickling can run code; a checkpoint made of data only cannot. What they save is
saved here too, so a resumed run continues exactly:
- the per-parameter states of the first updater (Updater.states: {index: NDArray | None |
  tuple/list of those}, e.g. SGD's momentum, or (momentum, fp32 master weights) under
  multi_precision). Every device's updater holds the same states (same summed gradients, same
  weights), which is why load_states gives each the first one's, as restore_trainer_state does;
- the optimizer's plain attributes (lr, wd, momentum, num_update, aggregate_num, ...) and its
  per-device update counts, which set the lr schedule and e.g. Adam's bias correction.
The optimizer's param_dict is not saved (load_states keeps the trainer's), nor lr_mult/wd_mult
and idx2name (set from the same parameters when the trainer is made).
"""
import mxnet as mx
import numpy as np

# The attributes Optimizer.__init__ and its subclasses set to plain values; a resumed run gets
# the saved ones back, as load_states gave it the pickled optimizer's.
_PLAIN = (bool, int, float, str, type(None))


def _prepare(trainer):
    """What save_states/load_states do first: the updaters exist once the kvstore is set up."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:
        raise ValueError("the optimizer runs on the kvstore (update_on_kvstore): its states are "
                         "not in this process; make the trainer with "
                         "gn_mxnet.training.distributed.make_trainer")


def _encode(value, arrays):
    """A JSON-able description of one state value; its arrays go into `arrays`."""
    if value is None:
        return None
    if isinstance(value, mx.nd.NDArray):
        if value.stype != 'default':
            raise ValueError(f"a {value.stype} optimizer state cannot be saved")
        value = value.asnumpy()
    if isinstance(value, np.ndarray):
        key = f'state/{len(arrays)}'
        arrays[key] = value
        return {'array': key}
    if isinstance(value, (tuple, list)):
        kind = 'tuple' if isinstance(value, tuple) else 'list'
        return {kind: [_encode(item, arrays) for item in value]}
    raise ValueError(f"an optimizer state of type {type(value).__name__} cannot be saved")


def _decode(spec, arrays):
    if spec is None:
        return None
    if 'array' in spec:
        value = arrays[spec['array']]
        return mx.nd.array(value, ctx=mx.cpu(), dtype=value.dtype)
    if 'tuple' in spec:
        return tuple(_decode(item, arrays) for item in spec['tuple'])
    return [_decode(item, arrays) for item in spec['list']]


def describe(optimizer_name, attributes, update_counts, current_counts, states):
    """(meta, arrays) of an optimizer's state: its class name, its attributes (the plain ones
    are kept), its {device: {index: count}} update counts and which of them is current (the
    same dict object), and the updater's {index: state} (NDArrays or numpy arrays)."""
    arrays = {}
    encoded = [[int(index), _encode(value, arrays)] for index, value in sorted(states.items())]
    current = [device for device, counts in update_counts.items() if counts is current_counts]
    meta = {
        'optimizer': optimizer_name,
        'attributes': {key: value for key, value in attributes.items()
                       if isinstance(value, _PLAIN)},
        'update_counts': [[int(device), [[int(i), int(n)] for i, n in sorted(counts.items())]]
                          for device, counts in update_counts.items()],
        'current_device': int(current[0]) if current else None,
        'states': encoded,
    }
    return meta, arrays


def trainer_state(trainer):
    """(meta, arrays): the optimizer state as JSON-able values and {key: numpy array}."""
    _prepare(trainer)
    optimizer = trainer._optimizer
    return describe(type(optimizer).__name__, vars(optimizer),
                    optimizer._all_index_update_counts, optimizer._index_update_count,
                    trainer._updaters[0].states)


def restore_trainer_state(trainer, meta, arrays):
    """Puts the state of trainer_state back, as trainer.load_states would."""
    _prepare(trainer)
    optimizer = trainer._optimizer
    if meta['optimizer'] != type(optimizer).__name__:
        raise ValueError(f"the checkpoint holds {meta['optimizer']} optimizer states, this "
                         f"run's optimizer is {type(optimizer).__name__}")
    num_params = len(trainer._params)
    indices = [index for index, _ in meta['states']]
    if any(not isinstance(i, int) or not 0 <= i < num_params for i in indices):
        raise ValueError(f"the checkpoint's optimizer states are for parameters {indices[:5]}"
                         f"..., this trainer has {num_params}")
    present = vars(optimizer)
    for key, value in meta['attributes'].items():
        if key in present and isinstance(value, _PLAIN):   # its own attributes, plain values
            setattr(optimizer, key, value)
    counts = {int(device): {int(i): int(n) for i, n in pairs}
              for device, pairs in meta['update_counts']} or {0: {}}
    optimizer._all_index_update_counts = counts
    # The device whose counts Optimizer._update_count advances, the same dict object.
    optimizer._index_update_count = counts.get(meta['current_device'],
                                               next(iter(counts.values())))
    for updater in trainer._updaters:
        # Each updater its own copies, on the CPU; the updater moves a state to its weight's
        # device at its next update (states_synced False), as after load_states.
        updater.states = {index: _decode(spec, arrays) for index, spec in meta['states']}
        updater.states_synced = dict.fromkeys(updater.states, False)
        updater.optimizer = optimizer


def array_keys(meta):
    """The keys of the arrays that `meta` (as read from a file) refers to; ValueError where
    it is not what trainer_state makes, so a bad file fails when it is read, not mid-restore."""
    keys = []

    def walk(spec):
        if spec is None:
            return
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"an optimizer state described as {spec!r:.60}")
        (kind, value), = spec.items()
        if kind == 'array' and isinstance(value, str):
            keys.append(value)
        elif kind in ('tuple', 'list') and isinstance(value, list):
            for item in value:
                walk(item)
        else:
            raise ValueError(f"an optimizer state described as {spec!r:.60}")

    def pairs(value):
        return isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) for p in value)

    if not (isinstance(meta, dict) and isinstance(meta.get('optimizer'), str)
            and isinstance(meta.get('attributes'), dict) and pairs(meta.get('states'))
            and pairs(meta.get('update_counts'))
            and all(pairs(counts) for _, counts in meta['update_counts'])
            and isinstance(meta.get('current_device'), (int, type(None)))):
        raise ValueError("its optimizer state is not what this version writes")
    for _, spec in meta['states']:
        walk(spec)
    return keys
