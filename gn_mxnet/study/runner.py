"""Runs the study: trains every (cell, seed) of the protocol not yet in ``<out>/runs.csv`` (one
row per finished run, the file rewritten atomically after each), in a worker pool or in process,
then writes the report. A study that was stopped resumes by skipping the runs already there.
"""
import os
import shutil
import time

from ..models import get_model
from ..models.norms import ChannelsPerGroupNorm
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig
from ..training.grey_images import MNIST5kSource
from ..training.loop import train
from ..utils.tables import read_csv, write_csv
from .protocol import CSV_COLUMNS, CSV_NAME, planned_runs, run_identity
from .report import write_report


def run_one(cell, seed, s, work_dir):
    """Train one (cell, seed); returns its CSV row. A run stopped midway resumes from its
    checkpoint in ``work_dir``; the directory is removed when the run is done."""
    return train_cell(cell, seed, s, work_dir)[0]


def train_cell(cell, seed, s, work_dir):
    """run_one's work: returns (CSV row, the trained net, its data source)."""
    start = time.time()
    cfg = TrainConfig(network=s.network, norm=cell.norm, num_groups=cell.num_groups or 1,
                      epochs=s.epochs, batch_size=cell.batch_size, base_lr=s.base_lr,
                      train_subset=s.train_subset, seed=seed, out_dir=work_dir,
                      progress=False, **s.extra)
    # The work dir is this run's own: continue its checkpoint, or replace what a run killed
    # before its first checkpoint left there.
    cfg.resume = os.path.exists(os.path.join(work_dir, ckpt.CHECKPOINT_NAME))
    cfg.overwrite = not cfg.resume
    norm = ChannelsPerGroupNorm(cell.group_size) if cell.group_size else cell.norm
    net = get_model(s.network, num_classes=10, norm=norm, num_groups=cell.num_groups or 1,
                    last_gamma=cfg.last_gamma)
    data = MNIST5kSource(cell.batch_size, seed=seed, train_subset=s.train_subset,
                         val_subset=s.val_subset, image_size=s.image_size,
                         val_batch=s.val_batch)
    summary = train(cfg, net=net, data=data)
    if not summary['finished']:
        raise RuntimeError(f"run {cell.key} seed {seed} did not finish")
    final = summary['final']
    row = dict(cell=cell.key, norm=cell.norm, num_groups=cell.num_groups or '',
               group_size=cell.group_size or '', batch_size=cell.batch_size, seed=seed,
               network=s.network, epochs=s.epochs, train_subset=s.train_subset or '',
               image_size=s.image_size,
               base_lr=s.base_lr, lr=s.base_lr * cell.batch_size / 256.0,
               val_error=100 * (1 - final['val_top1']),
               best_val_error=100 * (1 - summary['best_val_top1']),
               train_error=100 * (1 - final['train_top1']), train_loss=final['train_loss'],
               steps=s.epochs * (data.num_train // cell.batch_size),
               seconds=round(time.time() - start, 2))
    shutil.rmtree(work_dir, ignore_errors=True)
    return row, net, data


def _run_job(args):
    cell, seed, s, work_dir = args
    return run_one(cell, seed, s, work_dir)


# -- the runs' CSV ---------------------------------------------------------------------------
def read_runs(out_dir):
    path = os.path.join(out_dir, CSV_NAME)
    return read_csv(path) if os.path.exists(path) else []


def write_runs(out_dir, rows):
    write_csv(os.path.join(out_dir, CSV_NAME), rows, CSV_COLUMNS)


def pending_runs(s, rows):
    done = {run_identity(r) for r in rows}
    wanted = []
    for cell, seed in planned_runs(s):
        ident = run_identity(dict(cell=cell.key, seed=seed, network=s.network, epochs=s.epochs,
                                  train_subset=s.train_subset or '', base_lr=s.base_lr,
                                  image_size=s.image_size))
        if ident not in done:
            wanted.append((cell, seed))
    return wanted


def run_study(s, log=print):
    """Train every run not yet in ``<out_dir>/runs.csv`` and write tables and plots.
    Returns the rows of this study's settings."""
    os.makedirs(s.out_dir, exist_ok=True)
    rows = read_runs(s.out_dir) if s.resume else []
    todo = pending_runs(s, rows)
    log(f"{len(planned_runs(s))} runs planned, {len(todo)} to train "
        f"({s.epochs} epochs on {s.train_subset or 'all'} samples, jobs={s.jobs})")
    jobs = [(cell, seed, s, os.path.join(s.out_dir, '_work', f'{cell.key}_s{seed}'))
            for cell, seed in todo]
    start = time.time()

    def record(row, done):
        rows.append(row)
        write_runs(s.out_dir, rows)
        log(f"[{done}/{len(jobs)} {time.time() - start:6.0f}s] {row['cell']} seed "
            f"{row['seed']}: val error {row['val_error']:.2f}% ({row['seconds']:.0f}s)")

    if s.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        os.environ.setdefault('OMP_NUM_THREADS', '1')
        with multiprocessing.get_context('spawn').Pool(s.jobs, maxtasksperchild=4) as pool:
            for done, row in enumerate(pool.imap_unordered(_run_job, jobs), start=1):
                record(row, done)
    else:
        for done, job in enumerate(jobs, start=1):
            record(_run_job(job), done)
    shutil.rmtree(os.path.join(s.out_dir, '_work'), ignore_errors=True)
    mine = [r for r in read_runs(s.out_dir) if r['network'] == s.network
            and r['epochs'] == str(s.epochs) and r['base_lr'] == str(s.base_lr)
            and r['train_subset'] == str(s.train_subset or '')
            and r['image_size'] == str(s.image_size) and int(r['seed']) in s.seeds]
    write_report(s, mine)
    return mine


