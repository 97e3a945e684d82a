"""--kv-store horovod: real jobs of 2 ranks on this machine (`horovodrun --gloo -np 2
-H localhost:2`), the classifier's and the detector's.

Skipped where Horovod is not installed (tools/install_horovod.sh), except under CI (CI=true),
where its absence fails: the README's test command installs it.
"""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gn_mxnet.training import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(REPO, 'tests', 'horovod_job.py')
IMAGENET = os.path.join(REPO, 'train', 'train_imagenet.py')
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
# How long a failed job may take to end, all its processes gone.
FAILURE_SECONDS = 60
# Horovod's Gloo rendezvous fails when a rank reaches hvd.init() over 30 s (its default) after
# another: measured with a rank that sleeps 40 s first. On a loaded machine importing gluoncv
# can take that long, so the jobs here wait longer; a rank that fails still ends the job at once.
GLOO_TIMEOUT = ['--gloo-timeout-seconds', '300']


# Looked up without importing horovod.mxnet (see horovod_missing).
MISSING = distributed.horovod_missing() or (
    None if os.path.isfile(HOROVODRUN) else f'{HOROVODRUN} is missing')
# The README's test command installs Horovod: under CI its absence fails these tests.
needs_horovod = pytest.mark.skipif(bool(MISSING) and not os.environ.get('CI'),
                                   reason=f'Horovod not installed ({MISSING}); '
                                          f'bash tools/install_horovod.sh')


def _environment():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    env.pop('GN_MXNET_DEBUG', None)
    return env


def _start_job(command, ranks=2):
    if MISSING:   # only under CI: elsewhere the tests that start jobs are skipped
        pytest.fail(f"Horovod is not installed ({MISSING}); the README's test command "
                    f"installs it with tools/install_horovod.sh")
    argv = [HOROVODRUN, '--gloo', *GLOO_TIMEOUT, '-np', str(ranks), '-H', f'localhost:{ranks}',
            sys.executable, *command]
    return subprocess.Popen(argv, cwd=REPO, env=_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish_job(process, start, timeout):
    """(CompletedProcess, seconds since `start`); a job still running at `timeout` is killed,
    and fails the test."""
    try:
        output, _ = process.communicate(timeout=max(1.0, start + timeout - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        pytest.fail(f"the job did not end within {timeout} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output), \
        time.time() - start


def run_job(command, ranks=2, timeout=300):
    """`command` (after `python`) as a job of `ranks` processes on this machine."""
    start = time.time()
    return _finish_job(_start_job(command, ranks), start, timeout)


def run_alone(command, timeout=300):
    return subprocess.run([sys.executable, *command], cwd=REPO, env=_environment(),
                          capture_output=True, text=True, timeout=timeout)


def survivors(marker, wait=5.0):
    """Processes (other than this one) whose command line holds `marker`, after up to `wait`
    seconds for them to go."""
    import psutil
    deadline = time.time() + wait
    while True:
        found = []
        for process in psutil.process_iter(['pid', 'cmdline', 'status']):
            try:
                line = ' '.join(process.info['cmdline'] or [])
            except psutil.Error:
                continue
            if (marker in line and process.pid != os.getpid()
                    and process.info['status'] != psutil.STATUS_ZOMBIE):
                found.append(f"{process.pid}: {line}")
        if not found or time.time() > deadline:
            return found
        time.sleep(0.2)


def weights(path):
    import mxnet as mx
    return {name: array.asnumpy() for name, array in mx.nd.load(str(path)).items()}


def test_horovod_is_refused_outside_a_job_with_one_line(tmp_path, monkeypatch):
    """Not installed, or not started by horovodrun/mpirun: a usage error naming the fix."""
    monkeypatch.setattr(distributed, 'find_spec', lambda name: None)   # no horovod package
    with pytest.raises(distributed.DistributedError,
                       match=r'not installed \(no horovod package\); install it with '
                             r'`bash tools/install_horovod.sh`'):
        distributed.check_horovod('horovod')
    monkeypatch.undo()
    distributed.check_horovod('device')   # other kvstores need nothing
    if MISSING:
        return
    env = {k: v for k, v in _environment().items()
           if k not in distributed.LAUNCHER_VARIABLES}
    done = subprocess.run([sys.executable, IMAGENET, '--kv-store', 'horovod',
                           '--out-dir', str(tmp_path / 'run')], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if 'error:' in line]
    assert len(errors) == 1 and 'start this script with horovodrun' in errors[0], done.stderr
    assert not (tmp_path / 'run').exists()


def test_each_rank_takes_its_hosts_gpu_by_local_rank():
    """--gpus lists a host's GPUs; rank k of the host takes the k-th (this machine has none,
    so the error names the GPU it took); without --gpus every rank runs on the CPU."""
    import mxnet as mx
    job = distributed.Job(rank=3, size=4, local_rank=1, local_size=2, hvd=object())
    assert job.contexts('') == [mx.cpu()]
    with pytest.raises(ValueError, match=r'GPU\(s\) 5,'):
        job.contexts('3,5')
    with pytest.raises(distributed.DistributedError, match='lists 1 GPU.* for the 2 ranks'):
        job.contexts('0')
    assert not job.writes and distributed.Job().writes


def classifier_job(tmp, name, kv_store='horovod', batch='4', mode=()):
    return [JOB, 'classifier', str(tmp / name), str(tmp / f'{name}_weights'), kv_store, batch,
            *mode]


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    """The uninterrupted 2-rank run of tests/horovod_job.py's classifier."""
    tmp = tmp_path_factory.mktemp('two_ranks')
    job, _ = run_job(classifier_job(tmp, 'whole'))
    assert job.returncode == 0, job.stdout[-3000:]
    return tmp


@needs_horovod
def test_two_ranks_train_as_one_process_with_the_global_batch(two_ranks, tmp_path):
    """Rank 0 and rank 1 end with identical weights, equal (float tolerance) to one process
    stepping over the same global batch of 8: each rank takes 4 rows of it, Horovod averages
    the two gradients, and the lr (base-lr x 8/256) is the same. GroupNorm's statistics are
    per sample, so splitting the batch changes no forward value (BatchNorm's would)."""
    alone = run_alone(classifier_job(tmp_path, 'one', 'device', '8'))
    assert alone.returncode == 0, alone.stderr[-3000:]
    reference = weights(tmp_path / 'one_weights' / 'rank0.params')
    ranks = [weights(two_ranks / 'whole_weights' / f'rank{r}.params') for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # The same lr schedule, from the global batch; rank 0 alone wrote the out-dir, as the one
    # process did (no worker folders).
    logs = [list(csv.DictReader(open(folder / 'log.csv')))
            for folder in (tmp_path / 'one', two_ranks / 'whole')]
    assert [r['lr'] for r in logs[0]] == [r['lr'] for r in logs[1]]
    assert sorted(os.listdir(two_ranks / 'whole')) == sorted(os.listdir(tmp_path / 'one'))
    summary = json.loads((two_ranks / 'whole' / 'summary.json').read_text())
    assert (summary['rank'], summary['num_workers'], summary['epochs_done']) == (0, 2, 2)


@needs_horovod
def test_a_resumed_two_rank_run_continues_exactly(two_ranks, tmp_path):
    """Stopped after epoch 1 and resumed (rank 0 reads the checkpoint, every rank restores
    it), the job ends with the uninterrupted job's weights, on both ranks."""
    for mode in ('stop', 'resume'):
        job, _ = run_job(classifier_job(tmp_path, 'parts', mode=[mode]))
        assert job.returncode == 0, job.stdout[-3000:]
    assert sorted(os.listdir(tmp_path / 'parts')) == sorted(os.listdir(two_ranks / 'whole'))
    for rank in (0, 1):
        expected = weights(two_ranks / 'whole_weights' / f'rank{rank}.params')
        got = weights(tmp_path / 'parts_weights' / f'rank{rank}.params')
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f'rank {rank}: {name}')
    rows = [list(csv.DictReader(open(folder / 'log.csv')))
            for folder in (two_ranks / 'whole', tmp_path / 'parts')]
    assert rows[0] == rows[1] or [r['train_loss'] for r in rows[0]] == \
        [r['train_loss'] for r in rows[1]]


@needs_horovod
def test_a_failing_rank_or_a_usage_error_ends_the_job_without_orphans(tmp_path):
    """Rank 1 raising in its second step, and train_imagenet.py's usage error (on every rank):
    each job ends non-zero within FAILURE_SECONDS, and none of its processes is left. The two
    jobs run side by side."""
    out = tmp_path / 'usage'
    start = time.time()
    raising = _start_job(classifier_job(tmp_path, 'raising', mode=['raise']))
    usage = _start_job([IMAGENET, '--kv-store', 'horovod', '--epochs', '2',
                        '--warmup-epochs', '3', '--out-dir', str(out)])
    for process, says in ((raising, 'rank 1 fails on purpose'),
                          (usage, 'warmup-epochs must lie in [0, epochs=2]')):
        job, seconds = _finish_job(process, start, 2 * FAILURE_SECONDS)
        assert job.returncode != 0 and says in job.stdout, job.stdout[-3000:]
        assert seconds < FAILURE_SECONDS, seconds
    assert survivors(str(tmp_path)) == []
    assert not (tmp_path / 'raising_weights').exists() and not out.exists()


@needs_horovod
def test_the_detector_trains_in_step_on_two_ranks(tmp_path):
    """Mask R-CNN, 2 iterations of 1 image per rank on the embedded set: both ranks end with
    identical weights; rank 0 wrote the run, with lr 0.00125 x 2 images (the global batch)."""
    job, _ = run_job([JOB, 'detector', str(tmp_path / 'out'), str(tmp_path / 'w'),
                      str(tmp_path / 'cache')], timeout=600)
    assert job.returncode == 0, job.stdout[-3000:]
    ranks = [weights(tmp_path / 'w' / f'rank{r}.params') for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert (summary['rank'], summary['num_workers']) == (0, 2)
    assert summary['lr0'] == pytest.approx(0.0025)
    assert summary['final_epoch'] == 1
