"""A run's out-dir, for the classifier and the detector alike: when a run may write into it,
what a killed run left there, and whether a resumed run is the run its checkpoint holds.

A folder holds a run when any of the run's files is there. A new run into it is refused unless
it resumes that run (from its checkpoint, with the same settings) or overwrites it (the old
run's files are deleted first, so the folder never mixes two runs): nothing is lost silently.
"""
import dataclasses
import os

from ..utils.files import remove_stale_temporaries
from . import checkpoint as ckpt
from .runtime import parse_gpus

_NOT_SAVED = '<not saved>'


def worker_dir(out_dir, rank, num_workers):
    """Each worker of a multi-machine job writes its own files, in out_dir/worker<rank>."""
    return out_dir if num_workers == 1 else os.path.join(out_dir, f'worker{rank}')


def config_identity(cfg, bookkeeping):
    """The settings of dataclass `cfg` that decide what a run computes: every field except the
    `bookkeeping` ones, so a field added later is compared on resume unless declared harmless.

    `gpus` counts devices (0: CPU): the count sets the total batch, which GPUs does not.
    """
    values = {}
    for key, value in dataclasses.asdict(cfg).items():
        if key in bookkeeping:
            continue
        if key == 'gpus':
            value = len(parse_gpus(value))
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


def prepare_out_dir(out_dir, run_files, *, resume, overwrite):
    """Refuses to start a new run over an existing one; clears what killed writes left."""
    if resume and overwrite:
        raise ValueError("give --resume (continue the run in the out-dir) or --overwrite "
                         "(replace it), not both")
    present = [name for name in run_files if os.path.exists(os.path.join(out_dir, name))]
    if present and not (resume or overwrite):
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(present)}); pass --resume to continue "
            f"it, or --overwrite to delete it and start afresh (or choose another --out-dir)")
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temporaries(out_dir)
    if overwrite:
        for name in present:
            os.remove(os.path.join(out_dir, name))


def run_identity(cfg, num_workers):
    """What a checkpoint records and a resume compares: the config's identity and the number
    of distributed workers (they set the total batch, and so the lr)."""
    return cfg.identity() | {'num_workers': num_workers}


def require_same_run(saved, identity, out_dir):
    """Raises ValueError naming each setting whose saved value differs from the new one."""
    changed = [(key, saved.get(key, _NOT_SAVED), value) for key, value in identity.items()
               if saved.get(key, _NOT_SAVED) != value]
    if changed:
        listed = '; '.join(f'{key}: saved {old!r}, now {new!r}' for key, old, new in changed)
        raise ValueError(f"--resume with a different configuration than the checkpoint's in "
                         f"{out_dir}: {listed}. Resume with the saved settings, or start a new "
                         f"run (another --out-dir, or --overwrite)")


def start_run(out_dir, run_files, identity, *, resume, overwrite):
    """Makes `out_dir` ready for a run; returns the checkpoint state to continue from, or None
    for a new run. Everything is checked before the run builds or writes anything."""
    prepare_out_dir(out_dir, run_files, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    state = ckpt.load_checkpoint(out_dir)
    require_same_run(state['config'], identity, out_dir)
    return state
