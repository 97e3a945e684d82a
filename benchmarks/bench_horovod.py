#!/usr/bin/env python
"""Training img/s of 2 Horovod ranks x 1 thread vs 1 process x 2 threads on one machine, the
default network and data (train_imagenet.py's MNIST-5k ResNet-8), the same global batch.

  python benchmarks/bench_horovod.py --out-dir results/horovod_scaling

Each round runs the two configurations one after the other (alternating which goes first), so a
machine shared with other work loads both alike; each run is `train/train_imagenet.py` for
--epochs epochs, and its img/s is that of its last epoch (the first builds the graph). Writes
OUT_DIR/runs.csv (one row per run and epoch) and OUT_DIR/scaling.txt (the machine line, every
run, the medians); needs Horovod (tools/install_horovod.sh).
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from gn_mxnet.utils import cli
from gn_mxnet.utils.files import atomic_write_text
from gn_mxnet.utils.tables import read_csv, write_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'train', 'train_imagenet.py')
# name: (processes, OpenMP threads each)
CONFIGS = {'1 process x 2 threads': (1, 2), '2 ranks x 1 thread': (2, 1)}
COLUMNS = ('round', 'config', 'processes', 'threads', 'batch_per_process', 'global_batch',
           'epoch', 'img_per_sec', 'epoch_seconds', 'load_1min_before')


def command(processes, batch, epochs, out_dir):
    train = [sys.executable, SCRIPT, '--batch-size', str(batch), '--epochs', str(epochs),
             '--no-progress', '--out-dir', out_dir]
    if processes == 1:
        return train
    horovodrun = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    # A loaded machine can start one rank over Gloo's default 30 s after the other.
    return [horovodrun, '--gloo', '--gloo-timeout-seconds', '300', '-np', str(processes),
            '-H', f'localhost:{processes}', *train, '--kv-store', 'horovod']


def run_one(processes, threads, global_batch, epochs, out_dir):
    """The rows of log.csv of one run (rank 0's, which counts the img/s of all ranks)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command(processes, global_batch // processes, epochs, out_dir),
                          cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"a run failed ({processes} process(es)): "
                           f"{(done.stderr or done.stdout)[-2000:]}")
    return read_csv(os.path.join(out_dir, 'log.csv'))


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=cli.positive_int, default=3)
    p.add_argument('--epochs', type=cli.positive_int, default=2)
    p.add_argument('--global-batch', type=cli.positive_int, default=64,
                   help='images per step over all processes (each rank takes half)')
    p.add_argument('--out-dir', default='runs/horovod_scaling')
    args = p.parse_args(argv)
    with cli.usage_errors(p):
        cli.output_folder(args.out_dir, '--out-dir')
        if args.global_batch % 2:
            raise ValueError(f"--global-batch {args.global_batch} must split over 2 ranks")
        from gn_mxnet.training.distributed import require_horovod
        require_horovod()
    from gn_mxnet.training.step_profile import machine_header
    os.makedirs(args.out_dir, exist_ok=True)
    lines = [machine_header(), f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"global batch {args.global_batch}, {args.epochs} epochs per run, img/s of the "
             f"last epoch"]
    print('\n'.join(lines), flush=True)
    rows, last = [], {name: [] for name in CONFIGS}
    for round_ in range(1, args.rounds + 1):
        order = list(CONFIGS) if round_ % 2 else list(CONFIGS)[::-1]
        for name in order:
            processes, threads = CONFIGS[name]
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as out:
                log = run_one(processes, threads, args.global_batch, args.epochs,
                              os.path.join(out, 'run'))
            for row in log:
                rows.append(dict(zip(COLUMNS, (
                    round_, name, processes, threads, args.global_batch // processes,
                    args.global_batch, row['epoch'], round(float(row['img_per_sec']), 1),
                    round(float(row['epoch_seconds']), 2), round(load, 2)))))
            last[name].append(float(log[-1]['img_per_sec']))
            line = (f"round {round_}: {name}: {last[name][-1]:.0f} img/s "
                    f"(load before {load:.2f})")
            lines.append(line)
            print(line, flush=True)
    medians = {name: statistics.median(values) for name, values in last.items()}
    base = medians['1 process x 2 threads']
    for name, value in medians.items():
        lines.append(f"median {name}: {value:.0f} img/s ({value / base:.2f}x)")
    lines.append(f"finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
                 f"average now {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print('\n'.join(lines[-3:]))
    write_csv(os.path.join(args.out_dir, 'runs.csv'), rows, COLUMNS)
    atomic_write_text(os.path.join(args.out_dir, 'scaling.txt'), '\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
