"""Markdown tables of the paper-reproduction study (see gn_mxnet.study.protocol), and the
docs/reproduction.md blocks generated from them: the tables are a function of ``runs.csv``,
``bn_statistics.csv`` and ``settings.json`` only, so a test recomputes every block the page
quotes."""
import math
import os
import re

import numpy as np

from ..utils.files import atomic_write_text
from ..utils.tables import read_csv
from . import bn_statistics, protocol
from .plots import plot_batch, plot_epochs, plot_groups

TABLES_NAME = 'tables.md'
DATA_NAMES = {
    'mnist5k': ('MNIST-5k', 'of the fixed 4000/1000 split', 'val images (of 1000)'),
    'fashion-mnist': ('Fashion-MNIST', 'of the 60,000 training images',
                      'test images (of 10,000)'),
}


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
    labels = protocol.table2_labels(s)
    get = {label: [stats.get(protocol.batch_cell(s, label, n).key) for n in sizes]
           for label in labels}
    paper = protocol.PAPER_TABLE2
    ws = protocol.WS_LABEL in labels
    lines = ['### Table 2: sensitivity to the per-device batch size', '',
             f'Val error (%), mean ± std over seeds; GN has G = {s.gn_groups}; '
             f'lr = {s.base_lr} · B / 256.'
             + (' The paper has no batch 1.' if 1 in sizes else '')
             + (f' {protocol.WS_LABEL}: GN with weight-standardized convs (Qiao et al.\'s '
                '(w − mean) / (std + 1e-5)); the paper has no such row.' if ws else ''), '']
    lines += _header('batch size', sizes)
    for label in labels:
        lines.append(_row(f'{label} (ours)', [_fmt(v) for v in get[label]]))
    for norm in ('BN', 'GN'):
        lines.append(_row(f'{norm} (paper, ImageNet)',
                          [str(paper[norm].get(n, '–')) for n in sizes]))
    for label in labels[1:]:
        lines.append(_row(f'{label} − BN (ours)',
                          [f'{g[0] - b[0]:+.2f}' if g and b else '–'
                           for b, g in zip(get['BN'], get[label])]))
    lines.append(_row('GN − BN (paper)', [f"{paper['GN'][n] - paper['BN'][n]:+.1f}"
                                          if n in paper['BN'] else '–' for n in sizes]))
    if ws:
        lines.append(_row(f'{protocol.WS_LABEL} − GN (ours)',
                          [f'{w[0] - g[0]:+.2f}' if w and g else '–'
                           for g, w in zip(get['GN'], get[protocol.WS_LABEL])]))
    lines += ['', 'Error at each batch minus error at the largest batch (points):', '']
    lines += _header('batch size', sizes[1:])
    for norm in labels:
        if get[norm][0]:
            lines.append(_row(f'{norm} (ours)', [f'{v[0] - get[norm][0][0]:+.2f}' if v else '–'
                                                 for v in get[norm][1:]]))
    for norm in ('BN', 'GN'):
        base = paper[norm].get(sizes[0])
        lines.append(_row(f'{norm} (paper)', [f'{paper[norm][n] - base:+.1f}'
                                              if base is not None and n in paper[norm]
                                              else '–' for n in sizes[1:]]))
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


def bn_statistics_lines(s, rows):
    if not rows:
        return []
    keys = ['moving', 'precise'] + [f'batch{e}' for e in s.bn_diagnostic_eval_batches]
    images = sorted({int(r['images']) for r in rows})
    lines = ['### BN: moving averages vs re-estimated vs per-batch statistics', '',
             f'The study\'s BN nets, val error (%) on a fixed shuffled subset of '
             f'{", ".join(map(str, images))} val images, mean ± std over seeds. moving: '
             'inference with the moving averages (the study\'s number); precise: averages '
             're-estimated on the training set with the final weights; batch b: each val '
             'batch of b images normalized with its own statistics (the normalization BN '
             'trains with at batch b; batch 1: one image\'s own statistics).', '']
    lines += _header('trained at batch', keys)
    for b in sorted({int(r['train_batch']) for r in rows}, reverse=True):
        mine = [r for r in rows if int(r['train_batch']) == b]
        cells = []
        for key in keys:
            v = [float(r[key]) for r in mine if r.get(key, '') != '']
            std = np.std(v, ddof=1) if len(v) > 1 else math.nan
            cells.append(_fmt((float(np.mean(v)), std, len(v))) if v else '–')
        lines.append(_row(str(b), cells))
    return lines


def tables_markdown(s, rows, diagnostic_rows=()):
    """The report's markdown: Tables 2, 1, 3 (those in ``s.tables``) and the BN diagnostic."""
    stats = protocol.aggregate(rows)
    name, split, val = DATA_NAMES[s.dataset]
    seeds = ', '.join(str(x) for x in s.seeds)
    epochs = f'{s.epochs} epoch' + ('s' if s.epochs != 1 else '')
    lines = [f'{s.network}, {epochs} on {s.train_subset or "all"} {name} training '
             f'images {split}, {s.image_size}x{s.image_size} pixels, validated on '
             f'{s.val_subset or "all"} {val}; cosine lr, base lr {s.base_lr} per 256 images, '
             f'wd {s.wd}; seeds {seeds}; {s.threads} OpenMP thread(s) per run; {len(rows)} runs '
             f'in `{protocol.CSV_NAME}` (settings fingerprint {_fingerprints(rows)}). The paper '
             'columns are ResNet-50 on ImageNet (Wu & He, 2018), for comparison only.', '']
    builders = {2: table2_lines, 1: table1_lines, 3: table3_lines}
    for table in (2, 1, 3):
        if table in s.tables:
            lines += builders[table](s, stats) + ['']
    lines += bn_statistics_lines(s, list(diagnostic_rows))
    return '\n'.join(lines).rstrip() + '\n'


def _fingerprints(rows):
    return ', '.join(sorted({r.get('settings') or '?' for r in rows})) or 'none'


def write_report(s, rows, diagnostic_rows=()):
    """tables.md and the plots of the tables in ``s.tables``; returns the paths written."""
    stats = protocol.aggregate(rows)
    name = DATA_NAMES[s.dataset][0]
    path = os.path.join(s.out_dir, TABLES_NAME)
    atomic_write_text(path, f'# GN paper reproduction on {name}\n\n'
                      + tables_markdown(s, rows, diagnostic_rows))
    paths = [path]
    if 2 in s.tables:
        paths.append(plot_batch(s, stats, name))
        paths.append(plot_epochs(s, rows, name))
    if 3 in s.tables:
        paths.append(plot_groups(s, stats, name))
    return paths


# -- study blocks of a documentation page -------------------------------------------------------
# The page that carries the study tables: docs/reproduction.md. A block names its results folder
# relative to the page's own folder, as the page's links do (``../results/fashion_mnist_study``).
DOCS_PAGE = os.path.join('docs', 'reproduction.md')
BLOCK = re.compile(r'(<!-- study tables: (?P<folder>[^ ]+) -->\n)(?P<body>.*?)'
                   r'(<!-- end of study tables -->)', re.S)


def regenerate(out_dir):
    """tables_markdown of the study whose results are in ``out_dir``, from its files alone."""
    with open(os.path.join(out_dir, protocol.SETTINGS_NAME)) as f:
        s = protocol.StudySettings.from_json(f.read(), out_dir=out_dir)
    rows = protocol.rows_of(s, read_csv(os.path.join(out_dir, protocol.CSV_NAME)))
    return tables_markdown(s, rows, bn_statistics.rows_of(s, bn_statistics.read_rows(out_dir)))


def page_blocks(text, root):
    """[(folder, body in the page, body regenerated)] for every study block of ``text``;
    folders are relative to ``root`` (the page's folder)."""
    return [(m['folder'], m['body'], regenerate(os.path.join(root, m['folder'])))
            for m in BLOCK.finditer(text)]


def update_page(path, root=None):
    """Rewrites every study block of the markdown page at ``path`` from its results folder
    (relative to ``root``, by default the page's folder); True if the page changed."""
    if root is None:
        root = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        text = f.read()
    new = BLOCK.sub(lambda m: m.group(1) + regenerate(os.path.join(root, m['folder']))
                    + m.group(4), text)
    if new != text:
        atomic_write_text(path, new)
    return new != text
