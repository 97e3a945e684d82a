"""The detector's per-epoch CSV (losses, COCO AP), PNG curves and JSON summary."""
import os

from ..utils.plots import pyplot, save_figure
from ..utils.tables import write_csv

LOSS_KEYS = ('total', 'rpn_cls', 'rpn_box', 'rcnn_cls', 'rcnn_box', 'mask')
AP_KEYS = ('bbox_AP', 'bbox_AP50', 'bbox_AP75', 'segm_AP', 'segm_AP50', 'segm_AP75')
CSV_COLUMNS = (('epoch', 'lr') + tuple('loss_' + k for k in LOSS_KEYS) + AP_KEYS
               + ('num_detections', 'train_seconds', 'eval_seconds'))
LOG_NAME, CURVES_NAME = 'coco_log.csv', 'coco_curves.png'


def epoch_row(epoch, lr, losses, result, train_seconds):
    """One CSV row; epoch 0 is the untrained model (no losses), ``result`` None an epoch that
    was not evaluated (AP NaN)."""
    nan = float('nan')
    row = {'epoch': epoch, 'lr': lr, 'train_seconds': round(train_seconds, 2),
           'eval_seconds': round(result['seconds'], 2) if result else 0.0,
           'num_detections': result['num_detections'] if result else 0}
    for key in LOSS_KEYS:
        row['loss_' + key] = losses.get(key, nan)
    for kind in ('bbox', 'segm'):
        for stat in ('AP', 'AP50', 'AP75'):
            row['%s_%s' % (kind, stat)] = result[kind][stat] if result else nan
    return row


def write_log(out_dir, history):
    return write_csv(os.path.join(out_dir, LOG_NAME), history, CSV_COLUMNS)


def plot(out_dir, history, title=''):
    """Training losses and bbox/segm AP against epoch."""
    plt = pyplot()
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 3.8))
    trained = [r for r in history if r['epoch'] > 0]
    for key in LOSS_KEYS:
        ax_loss.plot([r['epoch'] for r in trained], [r['loss_' + key] for r in trained], 'o-',
                     label=key)
    ax_loss.set(xlabel='epoch', ylabel='loss (epoch mean)', title='training losses')
    epochs = [r['epoch'] for r in history]
    for key in ('bbox_AP', 'bbox_AP50', 'segm_AP', 'segm_AP50'):
        ax_ap.plot(epochs, [100 * r[key] for r in history], 's-', label=key)
    ax_ap.set(xlabel='epoch (0 = untrained)', ylabel='COCO AP (%)', title='validation AP')
    for ax in (ax_loss, ax_ap):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, os.path.join(out_dir, CURVES_NAME), title)


def summary(cfg, history, best, num_train, num_val, contexts, wall_seconds):
    untrained, final = history[0], history[-1]
    evaluated_untrained = untrained['epoch'] == 0
    return {
        'data': cfg.coco_root or 'embedded %s COCO set' % cfg.embedded,
        'num_train_images': num_train, 'num_val_images': num_val,
        'devices': [str(c) for c in contexts],
        'untrained': {k: untrained[k] for k in AP_KEYS} if evaluated_untrained else None,
        'final': {k: final[k] for k in AP_KEYS}, 'final_epoch': final['epoch'],
        'best': best, 'wall_seconds': round(wall_seconds, 1),
    }
