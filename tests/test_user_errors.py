"""Every user mistake found at run time ends in one line, `error: ...`, exit 1 (exit 2 where it is
caught with the arguments), and no traceback; GN_MXNET_DEBUG=1 shows the traceback instead.

Each case calls a script's main(argv) in this process through cli.run, the same call as the
script's `if __name__ == '__main__'`; one subprocess per script proves the real entry point.
(Bad option values refused by argparse are tests/test_cli.py.)"""
import importlib.util
import os
import shutil
import subprocess
import sys

import mxnet as mx
import pytest

from gn_mxnet.models import get_model
from gn_mxnet.training import checkpoint
from gn_mxnet.utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--epochs', '1', '--train-subset', '32', '--val-subset', '16', '--batch-size', '16',
        '--no-progress']


def script(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def scripts():
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))   # the benchmarks import each other
    try:
        return {name: script(path) for name, path in (
            ('imagenet', 'train/train_imagenet.py'), ('coco', 'train/train_coco.py'),
            ('comparison', 'train/coco_comparison.py'), ('paper', 'train/reproduce_paper.py'),
            ('bench_train', 'benchmarks/bench_train.py'))}
    finally:
        sys.path.remove(os.path.join(REPO, 'benchmarks'))


def ends_in_one_line(main, argv, capsys, code=1):
    """Runs main(argv) as its script does; returns the one error line after checking the form."""
    try:
        status = cli.run(main, argv)
    except SystemExit as stop:   # argparse's usage errors
        status = stop.code
    err = capsys.readouterr().err
    assert status == code, err[-3000:]
    assert err.startswith('error: ') and err.count('\n') == 1, err[-3000:]
    assert 'Traceback' not in err
    return err


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, scripts):
    """A finished one-epoch MNIST-5k run (seconds), copied by the tests that change it."""
    out = str(tmp_path_factory.mktemp('run') / 'run')
    scripts['imagenet'].main(TINY + ['--out-dir', out])
    return out


# --- train/train_imagenet.py -------------------------------------------------------------------
def test_an_out_dir_holding_a_run(scripts, finished_run, capsys):
    err = ends_in_one_line(scripts['imagenet'].main, TINY + ['--out-dir', finished_run], capsys)
    assert '--resume' in err and '--overwrite' in err


def test_resume_without_a_checkpoint(scripts, tmp_path, capsys):
    err = ends_in_one_line(scripts['imagenet'].main,
                           TINY + ['--resume', '--out-dir', str(tmp_path)], capsys)
    assert str(tmp_path) in err


def test_resume_with_a_changed_setting(scripts, finished_run, tmp_path, capsys):
    out = shutil.copytree(finished_run, str(tmp_path / 'run'))
    argv = TINY[:1] + ['2'] + TINY[2:] + ['--resume', '--out-dir', out]
    err = ends_in_one_line(scripts['imagenet'].main, argv, capsys)
    assert 'epochs' in err


def test_resume_with_overwrite(scripts, tmp_path, capsys):
    err = ends_in_one_line(scripts['imagenet'].main,
                           TINY + ['--resume', '--overwrite', '--out-dir', str(tmp_path)], capsys)
    assert '--resume' in err and '--overwrite' in err


def test_a_truncated_checkpoint(scripts, finished_run, tmp_path, capsys):
    out = shutil.copytree(finished_run, str(tmp_path / 'run'))
    with open(os.path.join(out, checkpoint.CHECKPOINT_NAME), 'r+b') as f:
        f.truncate(100)
    err = ends_in_one_line(scripts['imagenet'].main, TINY + ['--resume', '--out-dir', out],
                           capsys)
    assert checkpoint.CHECKPOINT_NAME in err


@pytest.mark.parametrize('argv, words', [
    (['--network', 'resnet7_wide'], '--network'),
    (['--gpus', 'abc'], '--gpus'),
    (['--num-groups', '32'], '--num-groups 32'),   # MNIST-5k's resnet8_small is 16 wide
    (['--num-layers', '20'], '--symbolic'),         # ignored without it: refused instead
])
def test_options_refused_before_the_run(scripts, argv, words, tmp_path, capsys):
    out = tmp_path / 'out'
    err = ends_in_one_line(scripts['imagenet'].main, TINY + argv + ['--out-dir', str(out)],
                           capsys, code=2)
    assert words in err
    assert not out.exists()


def test_a_gpu_this_machine_lacks(scripts, tmp_path, capsys):
    if mx.context.num_gpus():
        pytest.skip('this machine has a GPU')
    err = ends_in_one_line(scripts['imagenet'].main,
                           TINY + ['--gpus', '0', '--out-dir', str(tmp_path)], capsys)
    assert '--gpus' in err


def test_fashion_mnist_files_missing(scripts, tmp_path, capsys):
    argv = TINY + ['--dataset', 'fashion-mnist', '--data-dir', str(tmp_path),
                   '--out-dir', str(tmp_path / 'out')]
    err = ends_in_one_line(scripts['imagenet'].main, argv, capsys)
    assert 'train-images-idx3-ubyte' in err


def test_rec_files_with_the_default_groups_on_a_16_wide_net(scripts, tmp_path, capsys):
    rec = tmp_path / 'data.rec'
    rec.write_text('not read: the groups are refused first')
    argv = ['--rec-train', str(rec), '--rec-val', str(rec), '--network', 'resnet8_small',
            '--data-shape', '1,28,28', '--out-dir', str(tmp_path / 'out')]
    err = ends_in_one_line(scripts['imagenet'].main, argv, capsys, code=2)
    assert '--num-groups 32' in err
    # MNIST-5k's --train-subset would be ignored here: refused instead.
    argv += ['--num-groups', '8', '--train-subset', '100']
    err = ends_in_one_line(scripts['imagenet'].main, argv, capsys, code=2)
    assert '--train-subset' in err


def test_a_text_file_as_rec_train(scripts, tmp_path, capsys):
    rec = tmp_path / 'notes.rec'
    rec.write_text('a text file\n')
    argv = ['--rec-train', str(rec), '--rec-val', str(rec), '--network', 'resnet8_small',
            '--num-groups', '8', '--data-shape', '1,28,28', '--num-classes', '10', '-j', '1',
            '--out-dir', str(tmp_path / 'out')]
    err = ends_in_one_line(scripts['imagenet'].main, argv, capsys, code=2)
    assert 'notes.rec is not a RecordIO file' in err


# --- train/train_coco.py -----------------------------------------------------------------------
def test_coco_root_missing_or_empty(scripts, tmp_path, capsys):
    for root in (tmp_path / 'nowhere', tmp_path):
        err = ends_in_one_line(scripts['coco'].main, ['--coco-root', str(root), '--out-dir',
                                                      str(tmp_path / 'out')], capsys)
        assert '--coco-root' in err


def test_pretrained_backbone_missing(scripts, tmp_path, capsys):
    err = ends_in_one_line(scripts['coco'].main, ['--pretrained-backbone', 'R-50-GN.pkl'],
                           capsys, code=2)
    assert '--pretrained-backbone' in err and 'R-50-GN.pkl' in err


@pytest.fixture
def coco_argv(tmp_path):
    """A one-image-per-split embedded run: the backbone is read before anything trains."""
    return ['--num-train', '2', '--num-val', '1', '--epochs', '1', '--no-progress',
            '--cache-dir', str(tmp_path / 'cache'), '--out-dir', str(tmp_path / 'out')]


def test_pretrained_backbone_unreadable_or_of_another_net(scripts, tmp_path, coco_argv, capsys):
    (tmp_path / 'text.pkl').write_text('weights\n')
    (tmp_path / 'empty.params').write_bytes(b'')
    small = get_model('resnet8_small', num_classes=10, num_groups=8, backend='ops')
    small.initialize()
    small(mx.nd.zeros((1, 1, 28, 28)))
    from gn_mxnet.convert import save_weights
    save_weights(small, str(tmp_path / 'small.params'))
    for name, words in (('text.pkl', 'not a readable'), ('empty.params', 'is empty'),
                        ('small.params', 'missing')):
        err = ends_in_one_line(scripts['coco'].main, coco_argv + [
            '--pretrained-backbone', str(tmp_path / name)], capsys)
        assert name in err and words in err


# --- train/coco_comparison.py, train/reproduce_paper.py, benchmarks/bench_train.py ------------
def test_comparison_refuses_negative_seeds_and_a_file_as_out_dir(scripts, tmp_path, capsys):
    (tmp_path / 'afile').write_text('mine\n')
    for argv, words in ((['--seeds=-1'], '--seeds'),
                        (['--out-dir', str(tmp_path / 'afile')], 'is a file')):
        err = ends_in_one_line(scripts['comparison'].main, argv, capsys, code=2)
        assert words in err
    assert (tmp_path / 'afile').read_text() == 'mine\n'


def test_paper_refuses_a_file_as_out_dir_and_bad_settings(scripts, tmp_path, capsys):
    (tmp_path / 'afile').write_text('mine\n')
    err = ends_in_one_line(scripts['paper'].main, ['--out-dir', str(tmp_path / 'afile')],
                           capsys, code=2)
    assert '--out-dir' in err
    err = ends_in_one_line(scripts['paper'].main, ['--quick', '--tables', '1', '--image-size',
                                                   '100', '--out-dir', str(tmp_path / 'o')],
                           capsys)
    assert 'image size' in err


def test_paper_options_given_win_over_quick(scripts):
    parse = scripts['paper'].parse_args
    args = parse(['--quick', '--groups', '4,2', '--seeds', '5', '--epochs', '3',
                  '--train-subset', '0', '--batch-sizes', '8', '--group-sizes', '2'])
    assert (args.groups, args.seeds, args.epochs) == ((4, 2), (5,), 3)
    assert (args.train_subset, args.batch_sizes, args.group_sizes) == (0, (8,), (2,))
    quick = parse(['--quick'])
    assert (quick.groups, quick.seeds, quick.epochs, quick.train_subset) == ((8, 1), (0,), 1, 256)
    full = parse([])
    assert (full.groups, full.seeds, full.epochs) == ((16, 8, 4, 2, 1), (0, 1, 2), None)


def test_bench_train_refuses_bad_gpus_and_groups(scripts, capsys):
    tiny = ['--steps', '1', '--rounds', '1', '--warmup', '0']
    err = ends_in_one_line(scripts['bench_train'].main, tiny + ['--gpus', 'abc'], capsys, code=2)
    assert '--gpus' in err
    err = ends_in_one_line(scripts['bench_train'].main, tiny + ['--num-groups', '3'], capsys)
    assert 'num_groups=3' in err


# --- python -m gn_mxnet.convert ----------------------------------------------------------------
@pytest.mark.parametrize('name, content', [
    ('text.params', b'weights\n'), ('empty.params', b''), ('text.safetensors', b'weights\n'),
    ('cut.safetensors', b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": '), ('empty.pkl', b''),
    ('text.pkl', b'weights\n'), ('cut.pkl', b'\x80\x02}q\x00(X\x05\x00\x00\x00blobs'),
])
def test_convert_refuses_unreadable_weight_files(name, content, tmp_path, capsys):
    from gn_mxnet import convert
    (tmp_path / name).write_bytes(content)
    out = tmp_path / 'out.params'
    err = ends_in_one_line(convert.main, [str(tmp_path / name), str(out)], capsys)
    assert name in err
    assert not out.exists()


# --- the mechanism ----------------------------------------------------------------------------
def test_interrupt_is_one_line_saying_how_to_resume(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    assert cli.run(interrupted, [], interrupted='interrupted; rerun with --resume') == 130
    assert capsys.readouterr().err == 'error: interrupted; rerun with --resume\n'


def test_messages_are_folded_and_bugs_named(capsys):
    def failing(error):
        def main(argv):
            raise error
        return main
    assert cli.run(failing(FileExistsError('first\n  second')), []) == 1
    assert capsys.readouterr().err == 'error: first second\n'
    assert cli.run(failing(KeyError('x')), []) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: KeyError: x (a bug') and 'GN_MXNET_DEBUG=1' in err
    assert cli.run(lambda argv: 3, []) == 3 and cli.run(lambda argv: {}, []) == 0


def test_debug_lets_the_exception_through(monkeypatch):
    monkeypatch.setenv('GN_MXNET_DEBUG', '1')
    with pytest.raises(FileExistsError):
        cli.run(lambda argv: (_ for _ in ()).throw(FileExistsError('x')), [])


# --- the real entry points (one subprocess each, all started at once) -------------------------
ENTRY_POINTS = [
    (['train/train_imagenet.py', '--resume', '--out-dir', 'empty'], 1),
    (['train/train_coco.py', '--coco-root', 'nowhere'], 1),
    (['train/coco_comparison.py', '--out-dir', 'afile'], 2),
    (['train/reproduce_paper.py', '--quick', '--tables', '1', '--image-size', '100',
      '--out-dir', 'o'], 1),
    (['benchmarks/bench_train.py', '--network', 'resnet7_wide', '--steps', '1', '--rounds', '1',
      '--warmup', '0'], 1),
    (['-m', 'gn_mxnet.convert', 'afile.pkl', 'out.params'], 1),
]


def test_entry_points_print_one_line_and_debug_shows_the_traceback(tmp_path):
    """Each script as a user starts it, in its own process; the processes run side by side
    (each mostly imports MXNet), which keeps this test's time near the slowest one's."""
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'afile').write_text('a.invalid\n')
    (tmp_path / 'afile.pkl').write_text('weights\n')
    debug = dict(os.environ, GN_MXNET_DEBUG='1')
    jobs = [(args, code, None) for args, code in ENTRY_POINTS]
    jobs.append((['-m', 'gn_mxnet.convert', 'afile.pkl', 'out.params'], 1, debug))
    started = []
    for args, code, env in jobs:
        if not args[0].startswith('-'):
            args = [os.path.join(REPO, args[0]), *args[1:]]
        started.append((args, code, env, subprocess.Popen(
            [sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)))
    for args, code, env, process in started:
        _, err = process.communicate(timeout=300)
        assert process.returncode == code, (args, err[-3000:])
        if env is debug:
            assert 'Traceback' in err and 'WeightFileError' in err, err[-3000:]
        else:
            last = err.splitlines()[-1]
            assert last.startswith('error: ') and 'Traceback' not in err, (args, err[-3000:])
