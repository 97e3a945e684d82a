"""Every command line refuses bad input with one line, `error: ...`, and exit code 2, never a
traceback: counts and sizes positive, lr > 0, momentum in [0, 1), choices from the module that
owns them, and the library's own validation turned into usage errors. (Mistakes found at run
time, exit 1, are tests/test_user_errors.py.)"""
import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from gn_mxnet.utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [os.path.join(REPO, 'train', 'train_imagenet.py')]
COCO = [os.path.join(REPO, 'train', 'train_coco.py')]
PAPER = [os.path.join(REPO, 'train', 'reproduce_paper.py')]
CONVERT = ['-m', 'gn_mxnet.convert']
BENCH = {name: [os.path.join(REPO, 'benchmarks', f'bench_{name}.py')]
         for name in ('ops', 'kernels', 'torch', 'train')}

# (command, arguments, what the message must name). Most fail before MXNet is imported; a few
# per script go through MXNet-importing paths (choices, the library's own validation).
CASES = [
    (TRAIN, ['--lr', '-1'], '--lr'),
    (TRAIN, ['--momentum', '1.5'], '--momentum'),
    (TRAIN, ['--gn-backend', 'nope'], '--gn-backend'),
    (TRAIN, ['--norm', 'batch'], '--norm'),
    (TRAIN, ['--lr-mode', 'linear'], '--lr-mode'),
    (TRAIN, ['--batch-size', '0'], '--batch-size'),
    (TRAIN, ['--epochs', '0'], '--epochs'),
    (TRAIN, ['--num-classes', '0'], '--num-classes'),
    (TRAIN, ['--train-subset', '-5'], '--train-subset'),
    (TRAIN, ['--label-smoothing', '1'], '--label-smoothing'),
    (TRAIN, ['--base-lr', 'nan'], '--base-lr'),
    (TRAIN, ['--rec-train', 'missing.rec', '--rec-val', 'missing.rec'], '--rec-train'),
    (TRAIN, ['--warmup-epochs', '30'], 'warmup-epochs'),      # TrainConfig's own rule
    (COCO, ['--batch-size', '0'], '--batch-size'),
    (COCO, ['--lr-decay-epochs', '16,8'], 'lr-decay-epochs'),
    (PAPER, ['--tables', '4'], '--tables'),
    (PAPER, ['--batch-sizes', '8,0'], '--batch-sizes'),
    (PAPER, ['--base-lr', '0'], '--base-lr'),
    (PAPER, ['--jobs', '0'], '--jobs'),
    (PAPER, ['--seeds', '-1'], '--seeds'),
    (CONVERT, ['missing.pkl', 'out.params'], 'source'),
    (BENCH['ops'], ['--repeat', '2'], '--repeat'),
    (BENCH['kernels'], ['--groups', '0'], '--groups'),
    (BENCH['kernels'], ['--groups', '5'], '--groups'),   # must divide every shape's channels
    (BENCH['torch'], ['--repeat', '3'], '--repeat'),
    (BENCH['train'], ['--batch-size', '0'], '--batch-size'),
    (BENCH['train'], ['--gn-backend', 'nope'], '--gn-backend'),
    (BENCH['train'], ['--data-shape', '1,28'], 'data-shape'),
]
# More rules of the MXNet-importing scripts, checked in this process (MXNet imported once).
IN_PROCESS = [
    (TRAIN, ['--optimizer', 'adam'], '--optimizer'),
    (TRAIN, ['--kv-store', 'dist'], '--kv-store'),
    # Not started by horovodrun (or, where it is absent, Horovod not installed).
    (TRAIN, ['--kv-store', 'horovod'], '--kv-store horovod'),
    (COCO, ['--kv-store', 'horovod'], '--kv-store horovod'),
    (TRAIN, ['--dtype', 'int8'], '--dtype'),
    (TRAIN, ['--data-shape', '3,224'], 'data-shape'),
    (COCO, ['--lr', '-1'], '--lr'),
    (COCO, ['--momentum', '1.5'], '--momentum'),
    (COCO, ['--kv-store', 'nope'], '--kv-store'),
    (COCO, ['--norm', 'ln'], '--norm'),
    (CONVERT, ['missing.pkl', 'out.params'], 'source'),
    (CONVERT, ['in.pkl', 'out.params', '--num-classes', '0'], '--num-classes'),
    (CONVERT, ['in.pkl', 'out.params', '--norm', 'batch'], '--norm'),
    (BENCH['ops'], ['--dtype', 'int8'], '--dtype'),
    (BENCH['ops'], ['--shapes', '2x0x4x4'], '--shapes'),
    (BENCH['ops'], ['--shapes', '2x64x4x4', '--groups', '5'], '--groups'),
]


def case_id(case):
    command, args, _ = case
    name = command[-1].rsplit('/', 1)[-1].replace('.py', '')
    return f"{name}:{' '.join(args)}"


def run(command, args, cwd):
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize('command, args, option', CASES, ids=[case_id(c) for c in CASES])
def test_bad_arguments_end_in_a_usage_error(command, args, option, tmp_path):
    result = run(command, args, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert_usage_error(result.stderr, option)


def assert_usage_error(err, option):
    """One line, 'error: message', naming `option` (cli.ArgumentParser's form of argparse's)."""
    assert err.count('\n') == 1 and err.startswith('error: '), err[-3000:]
    assert option in err, err[-3000:]


def entry_point(command, monkeypatch):
    """The function that parses a command's arguments, called in this process."""
    if command == CONVERT:
        from gn_mxnet import convert
        return convert.main
    path = command[0]
    monkeypatch.syspath_prepend(os.path.dirname(path))   # the benchmarks import each other
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if 'benchmarks' in path:
        def main(args):
            monkeypatch.setattr(sys, 'argv', [path, *args])
            return module.main()
        return main
    return module.parse_args


@pytest.mark.parametrize('command, args, option', IN_PROCESS,
                         ids=[case_id(c) for c in IN_PROCESS])
def test_bad_arguments_are_refused_by_the_parser(command, args, option, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'in.pkl').write_bytes(b'')
    with pytest.raises(SystemExit) as ended:
        entry_point(command, monkeypatch)(args)
    err = capsys.readouterr().err
    assert ended.value.code == 2, err
    assert_usage_error(err, option)


def test_labels_beyond_num_classes_end_the_script_with_a_usage_error(tmp_path):
    from test_data import digit_subset, write_digit_rec
    (x_train, y_train), (x_val, y_val) = digit_subset(32, 16)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    result = run(TRAIN, ['--rec-train', train_rec, '--rec-val', val_rec, '--num-classes', '5',
                         '--data-shape', '1,28,28', '--network', 'resnet8_small',
                         '--num-groups', '8', '--batch-size', '16', '--epochs', '1',
                         '--warmup-epochs', '0', '-j', '1', '--no-progress',
                         '--out-dir', str(tmp_path / 'out')], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert_usage_error(result.stderr[result.stderr.index('error: '):], '--num-classes 5')


@pytest.mark.parametrize('convert, good, bad', [
    (cli.positive_int, ['1', '64'], ['0', '-3', '1.5', 'x']),
    (cli.non_negative_int, ['0', '7'], ['-1', 'one']),
    (cli.positive_float, ['1e-3', '2'], ['0', '-0.1', 'nan', 'inf']),
    (cli.non_negative_float, ['0', '0.5'], ['-1e-9', 'nan']),
    (cli.fraction, ['0', '0.9', '0.999'], ['1', '1.5', '-0.1']),
    (cli.int_range(5, 9), ['5', '9'], ['4', '10']),
])
def test_number_checks(convert, good, bad):
    for text in good:
        assert convert(text) == type(convert(text))(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)


def test_int_lists_and_lazy_choices(tmp_path, monkeypatch):
    assert cli.int_list()('32, 16,8') == (32, 16, 8)
    with pytest.raises(argparse.ArgumentTypeError, match='at least one'):
        cli.int_list()(',')
    with pytest.raises(argparse.ArgumentTypeError, match='4 not among 1, 2, 3'):
        cli.int_list(choices=(1, 2, 3))('1,4')
    (tmp_path / 'choices_home.py').write_text('IMPORTED = True\nNAMES = ("a", "b")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    choices = cli.Choices('choices_home', 'NAMES')
    assert 'choices_home' not in sys.modules   # nothing imported until argparse asks
    assert 'a' in choices and 'c' not in choices and list(choices) == ['a', 'b']
    assert sys.modules['choices_home'].IMPORTED
    parser = argparse.ArgumentParser()
    parser.add_argument('--name', choices=choices)
    assert parser.parse_args(['--name', 'b']).name == 'b'
