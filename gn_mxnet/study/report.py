"""Markdown tables and PNG plots of the paper-reproduction study (see gn_mxnet.study.protocol)."""
import math
import os

from ..utils.files import atomic_write_text
from ..utils.plots import pyplot, save_figure
from . import protocol

TABLES_NAME = 'tables.md'
BATCH_PLOT, GROUPS_PLOT = 'error_vs_batch.png', 'error_vs_groups.png'


def _fmt(stat):
    if stat is None:
        return 'not run'
    mean, std, n = stat
    spread = '' if math.isnan(std) else f' ± {std:.2f}'
    return f'{mean:.2f}{spread}'


def _row(label, values):
    return '| ' + ' | '.join([label] + list(values)) + ' |'


def _header(first, columns):
    return [_row(first, [str(c) for c in columns]),
            '|' + '---|' * (len(columns) + 1)]


def table2_lines(s, stats):
    sizes = list(s.batch_sizes)
    get = {norm: [stats.get(protocol.Cell(norm.lower(), n,
                                       num_groups=s.gn_groups if norm == 'GN' else None).key)
                  for n in sizes] for norm in ('BN', 'GN')}
    lines = ['### Table 2: sensitivity to the per-device batch size', '',
             f'Val error (%), mean ± std over seeds; GN has G = {s.gn_groups}; '
             f'lr = {s.base_lr} · B / 256.', '']
    lines += _header('batch size', sizes)
    for norm in ('BN', 'GN'):
        lines.append(_row(f'{norm} (ours)', [_fmt(v) for v in get[norm]]))
    for norm in ('BN', 'GN'):
        lines.append(_row(f'{norm} (paper, ImageNet)',
                          [str(protocol.PAPER_TABLE2[norm].get(n, '–')) for n in sizes]))
    diff = [f'{g[0] - b[0]:+.2f}' if g and b else '–' for b, g in zip(get['BN'], get['GN'])]
    lines.append(_row('GN − BN (ours)', diff))
    lines.append(_row('GN − BN (paper)',
                      [f"{protocol.PAPER_TABLE2['GN'][n] - protocol.PAPER_TABLE2['BN'][n]:+.1f}"
                       if n in protocol.PAPER_TABLE2['BN'] else '–' for n in sizes]))
    lines += ['', f'Spread of the mean error from batch {sizes[0]} to {sizes[-1]} (error at '
              'the smallest batch minus error at the largest; max − min over batches):', '']
    for norm, label in (('BN', 'BN'), ('GN', 'GN')):
        means = [v[0] for v in get[norm] if v]
        if len(means) == len(sizes):
            lines.append(f'- {label} (ours): {means[-1] - means[0]:+.2f} points; '
                         f'max − min {max(means) - min(means):.2f}')
        paper = [protocol.PAPER_TABLE2[norm][n] for n in sizes if n in protocol.PAPER_TABLE2[norm]]
        lines.append(f'- {label} (paper): {paper[-1] - paper[0]:+.1f} points; '
                     f'max − min {max(paper) - min(paper):.1f}')
    return lines


def table1_lines(s, stats):
    b, g = s.table_batch, s.gn_groups
    cells = protocol.table_cells(s)[1]
    lines = ['### Table 1: normalization methods', '',
             f'Batch {b}; LN is GN with G = 1, IN is GN with 1 channel per group, GN has '
             f'G = {g}. Val error (%), mean ± std over seeds.', '']
    names = list(cells)
    lines += _header('', names)
    lines.append(_row('ours', [_fmt(stats.get(cells[n].key)) for n in names]))
    lines.append(_row('paper (ImageNet)', [str(protocol.PAPER_TABLE1[n]) for n in names]))
    base = stats.get(cells['BN'].key)
    lines.append(_row('− BN (ours)', [f'{stats[cells[n].key][0] - base[0]:+.2f}'
                                      if base and cells[n].key in stats else '–'
                                      for n in names]))
    paper = protocol.PAPER_TABLE1
    lines.append(_row('− BN (paper)', [f'{paper[n] - paper["BN"]:+.1f}' for n in names]))
    return lines


def table3_lines(s, stats):
    b = s.table_batch
    groups = [64, 32] + [n for n in s.groups if n not in (64, 32)]
    lines = ['### Table 3: number of groups and channels per group', '',
             f'Batch {b}; val error (%), mean ± std over seeds. The layers are 16/32/64 '
             'channels wide, so G = 64 and 32 cannot be built.', '']
    lines += _header('groups G', groups)
    lines.append(_row('ours', ['n/a (width 16)' if n in (64, 32) else
                               _fmt(stats.get(protocol.Cell('gn', b, num_groups=n).key))
                               for n in groups]))
    lines.append(_row('paper (ImageNet)',
                      [str(protocol.PAPER_TABLE3_GROUPS.get(n, '–')) for n in groups]))
    sizes = list(s.group_sizes)
    lines += ['', 'Fixed channels per group D (G = C / D in every layer: D = 16 gives '
              'G = 1/2/4 in the 16/32/64-wide stages, D = 1 is IN):', '']
    lines += _header('channels per group D', sizes)
    lines.append(_row('ours', [_fmt(stats.get(protocol.Cell('gn', b, group_size=n).key))
                               for n in sizes]))
    return lines


def write_tables(s, stats, rows):
    lines = ['# GN paper reproduction on MNIST-5k', '',
             f'{s.network}, {s.epochs} epochs on {s.train_subset or "all 4000"} MNIST-5k train '
             f'images of the fixed 4000/1000 split, {s.image_size}x{s.image_size} pixels, '
             f'validated on {s.val_subset or "all 1000"} val images; '
             f'cosine lr, base lr {s.base_lr} per 256 images, seeds '
             f'{", ".join(str(x) for x in s.seeds)}; {len(rows)} runs in `{protocol.CSV_NAME}`. '
             'The paper column is ResNet-50 on ImageNet (Wu & He, 2018), for comparison '
             'only.', '']
    builders = {2: table2_lines, 1: table1_lines, 3: table3_lines}
    for table in (2, 1, 3):
        if table in s.tables:
            lines += builders[table](s, stats) + ['']
    path = os.path.join(s.out_dir, TABLES_NAME)
    atomic_write_text(path, '\n'.join(lines))
    return path


def plot_batch(s, stats):
    plt = pyplot()
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(9, 3.4))
    sizes = list(s.batch_sizes)
    for norm, marker in (('BN', 'o-'), ('GN', 's-')):
        cells = [protocol.Cell(norm.lower(), n, num_groups=s.gn_groups if norm == 'GN' else None)
                 for n in sizes]
        have = [(n, stats[c.key]) for n, c in zip(sizes, cells) if c.key in stats]
        if have:
            ours.errorbar([n for n, _ in have], [v[0] for _, v in have],
                          yerr=[0 if math.isnan(v[1]) else v[1] for _, v in have],
                          fmt=marker, capsize=3, label=norm)
        paper.plot(sizes, [protocol.PAPER_TABLE2[norm].get(n, math.nan) for n in sizes], marker,
                   label=norm)
    ours.set(title=f'ours: {s.network}, MNIST-5k', ylabel='val error (%)')
    paper.set(title='paper: ResNet-50, ImageNet', ylabel='val error (%)')
    for ax in (ours, paper):
        ax.set_xscale('log', base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.invert_xaxis()
        ax.set_xlabel('batch size per device')
        ax.grid(alpha=0.3)
        ax.legend()
    path = os.path.join(s.out_dir, BATCH_PLOT)
    save_figure(fig, path, dpi=72)
    return path


def plot_groups(s, stats):
    plt = pyplot()
    fig, (by_g, by_d) = plt.subplots(1, 2, figsize=(9, 3.4))
    b = s.table_batch
    have = [(n, stats[protocol.Cell('gn', b, num_groups=n).key]) for n in s.groups
            if protocol.Cell('gn', b, num_groups=n).key in stats]
    if have:
        by_g.errorbar([n for n, _ in have], [v[0] for _, v in have],
                      yerr=[0 if math.isnan(v[1]) else v[1] for _, v in have],
                      fmt='s-', capsize=3, label='ours (MNIST-5k, left axis)')
    twin = by_g.twinx()
    paper_g = sorted(protocol.PAPER_TABLE3_GROUPS)
    twin.plot(paper_g, [protocol.PAPER_TABLE3_GROUPS[n] for n in paper_g], 'x--', color='gray',
              label='paper (ImageNet, right axis)')
    twin.set_ylabel('paper val error (%)', color='gray')
    by_g.set(xscale='log', title=f'GN groups G (batch {b})', xlabel='groups G',
             ylabel='val error (%)')
    by_g.set_xscale('log', base=2)
    by_g.set_xticks(paper_g)
    by_g.set_xticklabels([str(n) for n in paper_g])
    by_g.legend(loc='lower left', fontsize=8)
    twin.legend(loc='upper right', fontsize=8)
    have = [(n, stats[protocol.Cell('gn', b, group_size=n).key]) for n in s.group_sizes
            if protocol.Cell('gn', b, group_size=n).key in stats]
    if have:
        by_d.errorbar([n for n, _ in have], [v[0] for _, v in have],
                      yerr=[0 if math.isnan(v[1]) else v[1] for _, v in have],
                      fmt='o-', capsize=3)
    by_d.set(title=f'channels per group D (batch {b})', xlabel='channels per group D',
             ylabel='val error (%)')
    by_d.set_xscale('log', base=2)
    by_d.set_xticks(sorted(s.group_sizes))
    by_d.set_xticklabels([str(n) for n in sorted(s.group_sizes)])
    for ax in (by_g, by_d):
        ax.grid(alpha=0.3)
    path = os.path.join(s.out_dir, GROUPS_PLOT)
    save_figure(fig, path, dpi=72)
    return path


def write_report(s, rows):
    """tables.md and the plots of the tables in ``s.tables``; returns the paths written."""
    stats = protocol.aggregate(rows)
    paths = [write_tables(s, stats, rows)]
    if 2 in s.tables:
        paths.append(plot_batch(s, stats))
    if 3 in s.tables:
        paths.append(plot_groups(s, stats))
    return paths
