"""Per-epoch CSV log, JSON summary and PNG curves of a training run (all written atomically)."""
import csv
import io
import json
import os

from .checkpoint import atomic_path, atomic_write_text

CSV_COLUMNS = ('epoch', 'lr', 'train_loss', 'train_top1', 'train_top5', 'val_loss', 'val_top1',
               'val_top5', 'img_per_sec', 'epoch_seconds')
LOG_NAME, SUMMARY_NAME, CURVES_NAME = 'log.csv', 'summary.json', 'curves.png'


def write_csv(out_dir, history, columns=CSV_COLUMNS, name=LOG_NAME):
    """The whole history is rewritten each epoch, so a resumed run's log has no duplicate rows.

    ``columns``/``name`` let other jobs (the detector's AP log) write their own table.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for row in history:
        writer.writerow({key: row[key] for key in columns})
    path = os.path.join(out_dir, name)
    atomic_write_text(path, buffer.getvalue())
    return path


def read_csv(path):
    with open(path, newline='') as f:
        return [{k: (int(v) if k == 'epoch' else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def write_summary(out_dir, summary):
    path = os.path.join(out_dir, SUMMARY_NAME)
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + '\n')
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, title='', dpi=100):
    """Writes fig as a PNG atomically (a kill mid-write keeps the old file) and closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=dpi)
    pyplot().close(fig)
    return path


def plot_curves(out_dir, history, title=''):
    """Loss, top-1 error and learning rate against epoch."""
    plt = pyplot()
    epochs = [row['epoch'] for row in history]
    fig, (ax_loss, ax_err, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train')
    ax_loss.plot(epochs, [r['val_loss'] for r in history], 's-', label='val')
    ax_loss.set(xlabel='epoch', ylabel='cross-entropy loss', title='loss')
    ax_err.plot(epochs, [100 * (1 - r['train_top1']) for r in history], 'o-', label='train')
    ax_err.plot(epochs, [100 * (1 - r['val_top1']) for r in history], 's-', label='val')
    ax_err.set(xlabel='epoch', ylabel='top-1 error (%)', title='top-1 error', yscale='log')
    ax_lr.plot(epochs, [r['lr'] for r in history], 'o-')
    ax_lr.set(xlabel='epoch', ylabel='learning rate (end of epoch)', title='learning rate')
    for ax in (ax_loss, ax_err):
        ax.legend()
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
    return save_figure(fig, os.path.join(out_dir, CURVES_NAME), title)
