"""PNG plots of the study: error vs batch size beside the paper's, val error per epoch at the
largest batch vs batch 2, and error vs groups / channels per group."""
import math
import os

import numpy as np

from ..utils.plots import pyplot, save_figure
from . import protocol

BATCH_PLOT, GROUPS_PLOT, EPOCHS_PLOT = ('error_vs_batch.png', 'error_vs_groups.png',
                                        'error_per_epoch.png')


def _errorbar(ax, have, fmt, **kwargs):
    if have:
        ax.errorbar([n for n, _ in have], [v[0] for _, v in have],
                    yerr=[0 if math.isnan(v[1]) else v[1] for _, v in have],
                    fmt=fmt, capsize=3, **kwargs)


def _log2_axis(ax, ticks):
    ax.set_xscale('log', base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(n) for n in ticks])


def plot_batch(s, stats, data_name):
    plt = pyplot()
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(9, 3.4))
    sizes = list(s.batch_sizes)
    for label, marker in zip(protocol.table2_labels(s), ('o-', 's-', '^-')):
        cells = [protocol.batch_cell(s, label, n) for n in sizes]
        _errorbar(ours, [(n, stats[c.key]) for n, c in zip(sizes, cells) if c.key in stats],
                  marker, label=label)
    for norm, marker in (('BN', 'o-'), ('GN', 's-')):
        table = protocol.PAPER_TABLE2[norm]
        paper.plot([n for n in sizes if n in table], [table[n] for n in sizes if n in table],
                   marker, label=norm)
    ours.set(title=f'ours: {s.network}, {data_name}', ylabel='val error (%)')
    paper.set(title='paper: ResNet-50, ImageNet', ylabel='val error (%)')
    for ax in (ours, paper):
        _log2_axis(ax, sizes)
        ax.invert_xaxis()
        ax.set_xlabel('batch size per device')
        ax.grid(alpha=0.3)
        ax.legend()
    path = os.path.join(s.out_dir, BATCH_PLOT)
    save_figure(fig, path, dpi=72)
    return path


def plot_epochs(s, rows, data_name):
    """Mean val error per epoch (band: ± std over seeds) of Table 2's rows (BN, GN, GN+WS) at
    the largest batch and at batch 2 (the paper's Figure 5 compares 32 and 2)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    batches = [b for b in (max(s.batch_sizes), 2) if b in s.batch_sizes]
    for norm, color in zip(protocol.table2_labels(s), ('tab:blue', 'tab:orange', 'tab:green')):
        for batch, style in zip(batches, ('-', '--')):
            key = protocol.batch_cell(s, norm, batch).key
            curves = [[float(v) for v in r['val_errors'].split()] for r in rows
                      if r['cell'] == key and r.get('val_errors')]
            if not curves or len({len(c) for c in curves}) != 1:
                continue
            curves = np.array(curves)
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(axis=0), curves.std(axis=0)
            ax.plot(epochs, mean, style, color=color,
                    label=f'{norm}, batch {batch} ({len(curves)} seeds)')
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
    ax.set(title=f'{s.network}, {data_name}: val error per epoch', xlabel='epoch',
           ylabel='val error (%)')
    ax.set_xticks(range(1, s.epochs + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(s.out_dir, EPOCHS_PLOT)
    save_figure(fig, path, dpi=72)
    return path


def plot_groups(s, stats, data_name):
    plt = pyplot()
    fig, (by_g, by_d) = plt.subplots(1, 2, figsize=(9, 3.4))
    b = s.table_batch
    _errorbar(by_g, [(n, stats[protocol.Cell('gn', b, num_groups=n).key]) for n in s.groups
                     if protocol.Cell('gn', b, num_groups=n).key in stats],
              's-', label=f'ours ({data_name}, left axis)')
    twin = by_g.twinx()
    paper_g = sorted(protocol.PAPER_TABLE3_GROUPS)
    twin.plot(paper_g, [protocol.PAPER_TABLE3_GROUPS[n] for n in paper_g], 'x--', color='gray',
              label='paper (ImageNet, right axis)')
    twin.set_ylabel('paper val error (%)', color='gray')
    by_g.set(title=f'GN groups G (batch {b})', xlabel='groups G', ylabel='val error (%)')
    _log2_axis(by_g, paper_g)
    by_g.legend(loc='lower left', fontsize=8)
    twin.legend(loc='upper right', fontsize=8)
    _errorbar(by_d, [(n, stats[protocol.Cell('gn', b, group_size=n).key])
                     for n in s.group_sizes
                     if protocol.Cell('gn', b, group_size=n).key in stats], 'o-')
    by_d.set(title=f'channels per group D (batch {b})', xlabel='channels per group D',
             ylabel='val error (%)')
    _log2_axis(by_d, sorted(s.group_sizes))
    for ax in (by_g, by_d):
        ax.grid(alpha=0.3)
    path = os.path.join(s.out_dir, GROUPS_PLOT)
    save_figure(fig, path, dpi=72)
    return path
