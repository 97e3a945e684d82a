"""Runs the study: trains every (cell, seed) of the protocol not yet in ``<out>/runs.csv`` (one
row per finished run, the file rewritten atomically after each), then writes the report. A
study that was stopped resumes by skipping the runs already there.

Every run trains in a spawned worker process started with ``OMP_NUM_THREADS = s.threads``
(``jobs`` of them in parallel), never in the calling process: MXNet's and the GN library's
OpenMP teams are sized once per process, and a conv's or a reduction's float sums depend on
how many threads split them, so a run trained in a process of another thread count gives other
digits. This way a cell gives the same numbers whether one or several jobs run.
"""
import contextlib
import os
import time

from ..training.rundir import (adopt_legacy_table, claim_out_dir, refuse_foreign, remove_run,
                               require_folder)
from ..utils.files import atomic_write_text, make_own_folder, remove_own_folder
from ..utils.tables import read_csv, write_csv
from . import bn_statistics
from .protocol import (CSV_COLUMNS, CSV_NAME, RUN_IDENTITY, SETTINGS_NAME, WORK_NAME,
                       fingerprint, planned_identity, planned_runs, rows_of, run_identity,
                       train_config)
from .plots import BATCH_PLOT, EPOCHS_PLOT, GROUPS_PLOT
from .report import TABLES_NAME, write_report

# What the study writes in its out-dir (recorded in its manifest, as a run's files are): a
# user's file of one of these names there is refused, never read or replaced.
STUDY_FILES = (CSV_NAME, SETTINGS_NAME, TABLES_NAME, BATCH_PLOT, GROUPS_PLOT, EPOCHS_PLOT,
               bn_statistics.CSV_NAME)


def make_data(s, batch_size, seed):
    from ..training.grey_images import FashionMNISTSource, MNIST5kSource
    source = MNIST5kSource if s.dataset == 'mnist5k' else FashionMNISTSource
    return source(batch_size, seed=seed, train_subset=s.train_subset, val_subset=s.val_subset,
                  image_size=s.image_size, val_batch=s.val_batch)


def train_cell(cell, seed, s, work_dir):
    """Train one (cell, seed) in this process; returns (CSV row, the trained net, its data).
    A run stopped midway resumes from its checkpoint in ``work_dir``; the run's own files (and
    the directory, when nothing else is in it) are removed when the run is done. (The study
    calls it in its workers: see the module docstring.)"""
    from ..models import get_model
    from ..models.norms import ChannelsPerGroupNorm
    from ..training import checkpoint as ckpt
    from ..training.loop import train
    from ..training.reporting import LOG_NAME
    start = time.time()
    cfg = train_config(cell, seed, s, work_dir)
    # The work dir is this run's own: continue its checkpoint, or replace what a run killed
    # before its first checkpoint left there.
    cfg.resume = ckpt.has_checkpoint(work_dir)   # an old pickled one is refused, not run
    cfg.overwrite = not cfg.resume
    norm = ChannelsPerGroupNorm(cell.group_size) if cell.group_size else cell.norm
    net = get_model(s.network, num_classes=10, norm=norm, num_groups=cell.num_groups or 1,
                    last_gamma=cfg.resolved().last_gamma, conv=cell.conv)
    data = make_data(s, cell.batch_size, seed)
    summary = train(cfg, net=net, data=data)
    if not summary['finished']:
        raise RuntimeError(f"run {cell.key} seed {seed} did not finish")
    final = summary['final']
    per_epoch = read_csv(os.path.join(work_dir, LOG_NAME))
    row = dict(cell=cell.key, norm=cell.norm, num_groups=cell.num_groups or '',
               group_size=cell.group_size or '', batch_size=cell.batch_size, seed=seed,
               dataset=s.dataset, network=s.network, epochs=s.epochs,
               train_subset=s.train_subset or '', image_size=s.image_size, base_lr=s.base_lr,
               wd=s.wd, threads=s.threads, settings=fingerprint(cell, seed, s),
               lr=s.base_lr * cell.batch_size / 256.0,
               val_error=100 * (1 - final['val_top1']),
               best_val_error=100 * (1 - summary['best_val_top1']),
               train_error=100 * (1 - final['train_top1']), train_loss=final['train_loss'],
               val_errors=' '.join(f"{100 * (1 - float(r['val_top1'])):.2f}"
                                   for r in per_epoch),
               steps=s.epochs * (data.num_train // cell.batch_size),
               seconds=round(time.time() - start, 2))
    remove_run(work_dir)
    return row, net, data


def run_one(cell, seed, s, work_dir):
    """One run as the study's workers do it: (CSV row, BN diagnostic row or None)."""
    row, net, data = train_cell(cell, seed, s, work_dir)
    diagnostic = None
    if cell.norm == 'bn' and cell.batch_size in s.bn_diagnostic_batches:
        diagnostic = bn_statistics.measure(net, data, s, row)
    return row, diagnostic


def _run_job(args):
    return run_one(*args)


@contextlib.contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def train_in_workers(jobs, processes, threads):
    """Yields the results of ``_run_job(job)`` as workers finish them: spawned processes
    that inherit OMP_NUM_THREADS = threads (see the module docstring). A worker that dies
    (killed, out of memory) stops the study with BrokenProcessPool instead of a hang; the
    runs finished before it are in the CSV, so the study resumes from there."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    # No max_tasks_per_child: with it, Python 3.11's executor was seen to hang once its first
    # workers retired (8 runs done, no worker left, no error). A worker trains run after run;
    # each run re-seeds every generator and builds a fresh net, so its digits do not depend
    # on what the worker ran before (tests/test_study.py compares 1 and 2 jobs).
    with _environment(OMP_NUM_THREADS=threads), ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = [pool.submit(_run_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# -- the runs' CSV ---------------------------------------------------------------------------
def read_runs(out_dir):
    path = os.path.join(out_dir, CSV_NAME)
    return read_csv(path) if os.path.exists(path) else []


def write_runs(out_dir, rows):
    # Rows an older version wrote may lack a column: kept, with the cell empty.
    write_csv(os.path.join(out_dir, CSV_NAME), rows, CSV_COLUMNS, fill_missing=True)


def pending_runs(s, rows):
    done = {run_identity(r) for r in rows}
    return [(cell, seed) for cell, seed in planned_runs(s)
            if planned_identity(cell, seed, s) not in done]


def run_study(s, log=print):
    """Train every run not yet in ``<out_dir>/runs.csv`` (every planned run, with
    ``s.resume`` False) and write tables and plots. Returns the rows of this study's settings.
    Rows of other settings stay in the CSV; a row trained again replaces its older twin."""
    require_folder(s.out_dir)
    adopt_legacy_table(s.out_dir, STUDY_FILES, CSV_NAME, RUN_IDENTITY)
    refuse_foreign(s.out_dir, STUDY_FILES)
    rows = read_runs(s.out_dir)
    diagnostics = bn_statistics.read_rows(s.out_dir)
    todo = pending_runs(s, rows) if s.resume else planned_runs(s)
    scratch = os.path.join(s.out_dir, WORK_NAME)
    if todo:   # refused before anything is written if a folder of that name is not ours
        make_own_folder(scratch, "study's scratch folder")
    claim_out_dir(s.out_dir, STUDY_FILES, overwrite=False)
    atomic_write_text(os.path.join(s.out_dir, SETTINGS_NAME), s.to_json())
    log(f"{len(planned_runs(s))} runs planned, {len(todo)} to train "
        f"({s.dataset}, {s.epochs} epochs on {s.train_subset or 'all'} samples, "
        f"jobs={s.jobs}, {s.threads} thread(s) each)")
    jobs = [(cell, seed, s, os.path.join(scratch, f'{cell.key}_s{seed}'))
            for cell, seed in todo]
    start = time.time()
    if jobs:
        for done, (row, diagnostic) in enumerate(
                train_in_workers(jobs, min(s.jobs, len(jobs)), s.threads), start=1):
            rows = [r for r in rows if run_identity(r) != run_identity(row)] + [row]
            write_runs(s.out_dir, rows)
            if diagnostic is not None:
                same = lambda d: (run_identity(d), d.get('diagnostic')) == (  # noqa: E731
                    run_identity(diagnostic), diagnostic['diagnostic'])
                diagnostics = [d for d in diagnostics if not same(d)]
                diagnostics.append(diagnostic)
                bn_statistics.write_rows(s.out_dir, diagnostics, bn_statistics.columns(s))
            log(f"[{done}/{len(jobs)} {time.time() - start:6.0f}s] {row['cell']} seed "
                f"{row['seed']}: val error {row['val_error']:.2f}% ({row['seconds']:.0f}s)")
    if os.path.isdir(scratch):
        remove_own_folder(scratch)
    mine = rows_of(s, read_runs(s.out_dir))
    write_report(s, mine, bn_statistics.rows_of(s, bn_statistics.read_rows(s.out_dir)))
    return mine
