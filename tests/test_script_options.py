"""One vocabulary across the scripts, read from each one's --help in this process: every script
under train/ and benchmarks/ and ``python -m gn_mxnet.convert``/``migrate`` prints its help;
a script that writes files names its folder ``--out-dir``; nothing defines ``--out``,
``--backend`` or ``--log-dir``; gluoncv's spellings (``--num-epochs``, ``--lr-decay-epoch``,
``--num-data-workers``) are aliases listed after the canonical name; ``-j`` means data-loading
workers wherever it exists; every default shows, an option filled from a data set's preset
listing each preset's value from the preset table itself; and every command written out in the
README, docs/ and results/ (READMEs, run.sh) gives only options its script has."""
import glob
import importlib.util
import os
import re
import sys

import pytest

from gn_mxnet.operator.validation import BACKENDS
from gn_mxnet.study.protocol import DATASET_DEFAULTS
from gn_mxnet.training.config import PRESETS
from gn_mxnet.utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.relpath(path, REPO)
                 for folder in ('train', 'benchmarks')
                 for path in glob.glob(os.path.join(REPO, folder, '*.py'))
                 if "__name__ == '__main__'" in open(path).read()
                 or '__name__ == "__main__"' in open(path).read())
MODULES = ['gn_mxnet.convert', 'gn_mxnet.migrate']
# The scripts that write files, and so take --out-dir (convert writes the file it is given).
WRITERS = {'train/train_imagenet.py', 'train/train_coco.py', 'train/coco_comparison.py',
           'train/reproduce_paper.py', 'benchmarks/gpu_check.py'}
# Names of an output folder, the GN backend or the decay epochs that no script may use.
RETIRED = {'--out', '--output', '--log-dir', '--backend', '--out-file'}
# gluoncv's spellings, accepted after the canonical name: alias -> canonical.
ALIASES = {'--num-epochs': '--epochs', '--lr-decay-epoch': '--lr-decay-epochs',
           '--num-data-workers': '--data-threads'}
J_MEANING = 'data-loading workers'


def squash(text):
    """Text without whitespace: argparse wraps help lines (also inside hyphenated words)."""
    return ''.join(text.split())


def entry(name, monkeypatch):
    """The function that parses the arguments of script or module `name`."""
    if name in MODULES:
        return importlib.import_module(name).main
    path = os.path.join(REPO, name)
    monkeypatch.syspath_prepend(os.path.dirname(path))   # the benchmarks import each other
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, 'parse_args', None) or module.main


@pytest.fixture(scope='module')
def parsers():
    """{name: (its parser, its --help text)}, each from calling the script with --help."""
    found = {}
    original = cli.ArgumentParser.parse_known_args
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = []
        monkeypatch.setattr(cli.ArgumentParser, 'parse_known_args',
                            lambda self, *a, **k: (seen.append(self), original(self, *a, **k))[1])
        for name in SCRIPTS + MODULES:
            seen.clear()
            shown = []
            monkeypatch.setattr(cli.ArgumentParser, 'print_help',
                                lambda self, file=None: shown.append(self.format_help()))
            with pytest.raises(SystemExit) as ended:
                entry(name, monkeypatch)(['--help'])
            assert ended.value.code == 0 and seen and shown, name
            found[name] = (seen[0], shown[0])
    return found


def options(parser):
    return [action for action in parser._actions if action.option_strings]


def action_help(parser, action):
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return formatter.format_help()


def test_every_script_is_covered(parsers):
    assert {'train/train_imagenet.py', 'train/reproduce_paper.py', 'benchmarks/bench_ops.py',
            'benchmarks/gpu_check.py'} <= set(parsers)
    assert WRITERS <= set(parsers)


@pytest.mark.parametrize('name', SCRIPTS + MODULES)
def test_help_shows_every_default(name, parsers):
    parser, text = parsers[name]
    assert text.startswith('usage:') and len(text.splitlines()) > 3
    for action in options(parser):
        if cli.HelpFormatter._default_text(action) is None:
            continue
        shown = action_help(parser, action)
        assert 'default' in shown, f"{name} {action.option_strings[0]}: {shown}"
        if 'default' not in (action.help or '') and not hasattr(action, 'preset'):
            assert squash(cli.format_default(action.default)) in squash(shown), shown


@pytest.mark.parametrize('name', sorted(WRITERS))
def test_scripts_that_write_files_take_out_dir(name, parsers):
    parser, text = parsers[name]
    assert '--out-dir' in text
    assert any(a.option_strings == ['--out-dir'] for a in options(parser)), name


@pytest.mark.parametrize('name', SCRIPTS + MODULES)
def test_one_vocabulary(name, parsers):
    parser, _ = parsers[name]
    for action in options(parser):
        flags = action.option_strings
        assert not RETIRED & set(flags), f"{name} defines {flags}"
        longs = [f for f in flags if f.startswith('--')]
        assert longs[0] not in ALIASES, f"{name}: {longs} shows gluoncv's alias first"
        for alias in ALIASES.keys() & set(flags):
            assert longs.index(ALIASES[alias]) < longs.index(alias), f"{name}: {longs}"
        if action.choices is not None and set(action.choices) == set(BACKENDS):
            assert flags == ['--gn-backend'], f"{name}: the GN backend option is {flags}"
        if any('decay-epoch' in f for f in flags):
            assert longs[0] == '--lr-decay-epochs', f"{name}: {longs}"
        if '-j' in flags:
            assert action.help.startswith(J_MEANING), f"{name}: -j is {action.help!r}"
        else:
            assert J_MEANING not in (action.help or ''), f"{name} {flags}: give it -j"


def test_j_means_data_loading_workers_where_it_exists(parsers):
    having = sorted(name for name, (parser, _) in parsers.items()
                    if any('-j' in a.option_strings for a in options(parser)))
    assert having == ['train/train_coco.py', 'train/train_imagenet.py']
    paper, _ = parsers['train/reproduce_paper.py']
    assert [a.option_strings for a in options(paper) if a.dest == 'jobs'] == [['--jobs']]


@pytest.mark.parametrize('name, table', [('train/train_imagenet.py', PRESETS),
                                         ('train/reproduce_paper.py', DATASET_DEFAULTS)])
def test_preset_defaults_come_from_the_preset_table(name, table, parsers):
    """Every option a preset fills lists each data set's value, read from the table (so the
    help cannot say 0.1 where the preset uses 0.8)."""
    parser, _ = parsers[name]
    fields = set().union(*table.values())
    filled = [a for a in options(parser) if a.dest in fields]
    assert len(filled) >= 4
    for action in filled:
        assert hasattr(action, 'preset') and action.preset.field == action.dest, action.dest
        shown = squash(action_help(parser, action))
        values = {dataset: squash(cli.format_default(preset[action.dest]))
                  for dataset, preset in table.items()}
        for dataset, value in values.items():
            assert value in shown, f"{action.dest}: {shown}"
            if len(set(values.values())) > 1:   # else one value, said once
                assert f'({dataset}' in shown or f',{dataset}' in shown, shown
    base_lr = next(a for a in filled if a.dest == 'base_lr') if table is PRESETS else None
    if base_lr is not None:
        assert squash('0.8 (mnist5k, fashion-mnist)') in squash(action_help(parser, base_lr))


def test_per_preset_text():
    table = {'a': dict(lr=0.8, shape=(1, 28, 28), steps=''), 'b': dict(lr=0.8, shape=(3, 4, 4),
                                                                      steps='30,60')}
    assert cli.per_preset(table, 'lr') == '0.8'
    assert cli.per_preset(table, 'shape') == '1,28,28 (a), 3,4,4 (b)'
    assert cli.per_preset(table, 'steps') == 'none (a), 30,60 (b)'


def test_gluoncv_spellings_still_parse(monkeypatch):
    train = entry('train/train_imagenet.py', monkeypatch)
    args = train(['--num-epochs', '3', '--lr-mode', 'step', '--lr-decay-epoch', '1,2',
                  '--num-data-workers', '2', '--out-dir', 'unused'])
    assert (args.epochs, args.lr_decay_epochs, args.data_threads) == (3, '1,2', 2)
    coco = entry('train/train_coco.py', monkeypatch)
    args = coco(['--lr-decay-epoch', '1', '--gn-backend', 'ops', '-j', '2'])
    assert (args.lr_decay_epochs, args.gn_backend, args.loader_processes) == ('1', 'ops', 2)


# Commands written out for users and for reproduction: every option they give must exist.
# (results/archive/ and docs/history.md keep superseded commands as they were run.)
COMMAND_FILES = sorted(
    {'README.md', *glob.glob('docs/*.md', root_dir=REPO),
     *glob.glob('results/**/README.md', root_dir=REPO, recursive=True),
     *glob.glob('results/**/*.sh', root_dir=REPO, recursive=True)}
    - {'docs/history.md'} - set(glob.glob('results/archive/**', root_dir=REPO, recursive=True)))


def written_commands(text):
    """(script, options) of each `python train/x.py ...` or `python benchmarks/x.py ...` in
    `text`, continuation lines joined; what starts it (horovodrun, mpirun) is not read."""
    text = re.sub(r'\\\n', ' ', text)
    for line in text.splitlines():
        line = line.split(' #')[0]
        found = re.search(r'python3? ((?:train|benchmarks)/\w+\.py)((?:\s+[^\s`|;&)]+)*)', line)
        if found:
            flags = [t.split('=')[0] for t in found.group(2).split()
                     if re.fullmatch(r'--?[a-zA-Z][\w-]*(=.*)?', t)]
            yield found.group(1), flags


@pytest.mark.parametrize('path', COMMAND_FILES)
def test_written_commands_use_existing_options(path, parsers):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    for script, flags in written_commands(text):
        if script not in parsers:
            continue
        known = {s for a in parsers[script][0]._actions for s in a.option_strings}
        unknown = [flag for flag in flags if flag not in known]
        assert not unknown, f"{path}: {script} has no {unknown}"


def test_written_commands_are_read_whole():
    text = ('    horovodrun -np 2 -H localhost:2 \\\n'
            '        python train/train_imagenet.py --num-epochs=3 -j 4  # --not-an-option\n'
            'see `python benchmarks/bench_ops.py --repeat 9` and train/train_coco.py --no\n')
    assert list(written_commands(text)) == [
        ('train/train_imagenet.py', ['--num-epochs', '-j']),
        ('benchmarks/bench_ops.py', ['--repeat'])]
