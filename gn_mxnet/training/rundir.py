"""A run's out-dir, for the classifier and the detector alike: when a run may write into it,
what a killed run left there, and whether a resumed run is the run its checkpoint holds.

A run records the files it writes in a manifest, MANIFEST_NAME in its out-dir, written before
its first file. A folder holds a run when any of the run's files is there. A new run into it is
refused unless it resumes that run (from its checkpoint, with the same settings) or overwrites
it (the old run's files are deleted first, so the folder never mixes two runs): nothing is lost
silently. Only files the manifest lists are ever deleted or replaced: a file with a run file's
name that no manifest lists is the user's, and a run there is refused, --overwrite or not.

Starting a run has two steps: `start_run` checks everything and writes nothing (not even the
out-dir), `claim_out_dir` (once the run has built its data and network) creates the out-dir,
writes the manifest and deletes what --overwrite replaces. A start that fails leaves no trace.
"""
import csv
import dataclasses
import hashlib
import json
import os

from ..utils.files import atomic_write_text, remove_stale_temporaries
from . import checkpoint as ckpt
from .runtime import parse_gpus

_NOT_SAVED = '<not saved>'
MANIFEST_NAME = '.gn-mxnet-run.json'
_MANIFEST_KIND = 'gn-mxnet run'
# What require_same_run tells the user to do: the trainers' flags by default.
RESUME_REMEDY = "Resume with the saved settings, or start a new run (another --out-dir, or " \
                "--overwrite)"
# Settings added to the configs after runs were recorded, with the value every recorded run had:
# an identity leaves such a setting out while it has that value, so the identities and
# fingerprints recorded before it existed (checkpoints, the rows of results/*/runs.csv) still
# match, and require_same_run reads a setting missing on either side as that value.
LATER_SETTINGS = {'conv': 'plain'}


def config_identity(cfg, bookkeeping):
    """The settings of dataclass `cfg` that decide what a run computes: every field except the
    `bookkeeping` ones, so a field added later is compared on resume unless declared harmless.

    `gpus` counts devices (0: CPU): the count sets the total batch, which GPUs does not.
    A LATER_SETTINGS setting at its old value is left out.
    """
    values = {}
    for key, value in dataclasses.asdict(cfg).items():
        if key in bookkeeping or LATER_SETTINGS.get(key, _NOT_SAVED) == value:
            continue
        if key == 'gpus':
            value = len(parse_gpus(value))
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


def settings_fingerprint(values):
    """A short hash of a dict of settings: what a results table stores to tell its rows'
    settings apart (the study's runs.csv, the COCO comparison's)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def manifest_files(out_dir):
    """The files the run in `out_dir` recorded as its own (a set of names), or None when no
    run of ours recorded any there. Names with a path in them are not ours to touch."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        files = record['files'] if record.get('kind') == _MANIFEST_KIND else None
    except (ValueError, KeyError, TypeError, AttributeError):
        files = None
    if not isinstance(files, list):
        raise ValueError(f"{path} is not a gn-mxnet run record; move it away or choose another "
                         f"--out-dir")
    return {n for n in files if isinstance(n, str) and n == os.path.basename(n)
            and n not in ('', '.', '..')}


def _write_manifest(out_dir, files):
    record = {'kind': _MANIFEST_KIND, 'files': sorted(files)}
    atomic_write_text(os.path.join(out_dir, MANIFEST_NAME), json.dumps(record, indent=1) + '\n')


def refuse_foreign(out_dir, run_files, listed=False):
    """Raises FileExistsError when a file of `run_files` is in `out_dir` but no manifest there
    lists it (`listed`: the manifest's files, read here when not given)."""
    if listed is False:
        listed = manifest_files(out_dir)
    if listed is None and os.path.isfile(os.path.join(out_dir, ckpt.LEGACY_CHECKPOINT_NAME)):
        # A run folder of a version before run records: `migrate` converts it and records it.
        raise ckpt.legacy_refusal(out_dir, otherwise="choose another --out-dir")
    foreign = [name for name in run_files if os.path.lexists(os.path.join(out_dir, name))
               and name not in (listed or ())]
    if foreign:
        raise FileExistsError(
            f"{os.path.join(out_dir, foreign[0])} is listed by no gn-mxnet run record "
            f"({MANIFEST_NAME}) there, and a run would replace it; choose another --out-dir "
            f"or move it")


def require_folder(out_dir):
    """Raises NotADirectoryError when `out_dir` exists and is not a folder."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--out-dir {out_dir} is a file; choose a folder")


def prepare_out_dir(out_dir, run_files, *, resume, overwrite):
    """Refuses to start a new run over an existing one, or beside a user's file of a run
    file's name. Writes nothing."""
    if resume and overwrite:
        raise ValueError("give --resume (continue the run in the out-dir) or --overwrite "
                         "(replace it), not both")
    require_folder(out_dir)
    listed = manifest_files(out_dir)
    refuse_foreign(out_dir, run_files, listed)
    present = sorted(name for name in (listed or ())
                     if os.path.lexists(os.path.join(out_dir, name)))
    if present and not (resume or overwrite):
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(present)}); pass --resume to continue "
            f"it, or --overwrite to delete it and start afresh (or choose another --out-dir)")


def claim_out_dir(out_dir, run_files, *, overwrite):
    """Makes `out_dir` the run's own, once start_run has checked it and the run is built:
    creates it, deletes what killed writes left there and (with `overwrite`) the old run's
    files its manifest lists, then records `run_files` in the manifest."""
    listed = manifest_files(out_dir) or set()
    refuse_foreign(out_dir, run_files, listed)   # nothing new appeared since start_run
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temporaries(out_dir, listed | set(run_files) | {MANIFEST_NAME})
    if overwrite:
        for name in sorted(listed):
            path = os.path.join(out_dir, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
        listed = set()
    _write_manifest(out_dir, listed | set(run_files))


def add_to_manifest(out_dir, names):
    """Records more files in the run's manifest (before they are written): files a caller
    writes beside the run, such as the comparison's converted backbone."""
    listed = manifest_files(out_dir)
    if listed is None:
        raise FileNotFoundError(f"{out_dir} holds no gn-mxnet run record to add {names} to")
    refuse_foreign(out_dir, names, listed)
    _write_manifest(out_dir, listed | set(names))


def adopt_legacy_table(out_dir, files, csv_name, columns):
    """A folder of results an older version wrote (no manifest) is recognised by its CSV's
    header, which holds every one of `columns`: the `files` present there get a manifest,
    so the study or comparison goes on with them. Any other folder is left as it is."""
    path = os.path.join(out_dir, csv_name)
    if manifest_files(out_dir) is not None or not os.path.isfile(path):
        return
    with open(path, newline='') as f:
        header = set(next(csv.reader(f), []))
    if set(columns) <= header:
        adopt_legacy_run(out_dir, files)


def adopt_legacy_run(out_dir, run_files):
    """Records the files of `run_files` present in `out_dir` as its run's own: for a run
    folder of a version before run records, once the user has said it is one (`migrate`).
    Returns the names recorded."""
    if manifest_files(out_dir) is not None:
        return set()
    present = {n for n in run_files if os.path.lexists(os.path.join(out_dir, n))}
    _write_manifest(out_dir, present)
    return present


def remove_run(out_dir):
    """Deletes a finished run's own files (those its manifest lists, their temporaries, the
    manifest), and the folder if nothing else is left in it. A folder without a manifest is
    left alone; returns whether the folder went."""
    listed = manifest_files(out_dir)
    if listed is None:
        return False
    remove_stale_temporaries(out_dir, listed | {MANIFEST_NAME})
    for name in sorted(listed) + [MANIFEST_NAME]:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
    if os.listdir(out_dir):
        return False
    os.rmdir(out_dir)
    return True


def run_identity(cfg, num_workers):
    """What a checkpoint records and a resume compares: the config's identity and the number
    of distributed workers (they set the total batch, and so the lr)."""
    return cfg.identity() | {'num_workers': num_workers}


def _setting(identity, key):
    """A setting of an identity; a LATER_SETTINGS one left out has its old value."""
    return identity.get(key, LATER_SETTINGS.get(key, _NOT_SAVED))


def require_same_run(saved, identity, out_dir, remedy=RESUME_REMEDY):
    """Raises ValueError naming each setting whose saved value differs from the new one;
    `remedy` is what the message tells the user to do (the caller's own options)."""
    keys = list(identity) + [key for key in saved if key in LATER_SETTINGS and key not in identity]
    changed = [(key, _setting(saved, key), _setting(identity, key)) for key in keys
               if _setting(saved, key) != _setting(identity, key)]
    if changed:
        listed = '; '.join(f'{key}: saved {old!r}, now {new!r}' for key, old, new in changed)
        raise ValueError(f"{out_dir} holds a run of a different configuration than this "
                         f"one: {listed}. {remedy}")


def start_run(out_dir, run_files, identity, *, resume, overwrite):
    """Checks that `out_dir` may take the run; returns the checkpoint state to continue from,
    or None for a new run. Writes nothing: `claim_out_dir` does, once the run is built."""
    prepare_out_dir(out_dir, run_files, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    state = ckpt.load_checkpoint(out_dir)
    require_same_run(state['config'], identity, out_dir)
    return state
