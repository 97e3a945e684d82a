"""Per-epoch CSV log, JSON summary and PNG curves of a training run (all written atomically)."""
import json
import os

from ..utils.files import atomic_write_text
from ..utils.plots import pyplot, save_figure
from ..utils.tables import read_csv, write_csv

CSV_COLUMNS = ('epoch', 'lr', 'train_loss', 'train_top1', 'train_top5', 'val_loss', 'val_top1',
               'val_top5', 'img_per_sec', 'epoch_seconds')
LOG_NAME, SUMMARY_NAME, CURVES_NAME = 'log.csv', 'summary.json', 'curves.png'


def write_log(out_dir, history):
    """The run's whole history as out_dir/log.csv."""
    return write_csv(os.path.join(out_dir, LOG_NAME), history, CSV_COLUMNS)


def read_log(path):
    """A log.csv back as rows of numbers (epoch an int)."""
    return [{k: (int(v) if k == 'epoch' else float(v)) for k, v in row.items()}
            for row in read_csv(path)]


def write_summary(out_dir, summary):
    path = os.path.join(out_dir, SUMMARY_NAME)
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + '\n')
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
