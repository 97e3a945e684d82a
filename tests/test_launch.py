"""The ps-lite launcher: node plan, ssh commands, a real dist_sync job on loopback, and clean-up
of every process when a node fails or the time runs out."""
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.training import launcher
from gn_mxnet.utils.threads import WORKERS_ON_HOST, physical_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'train', 'launch.py')
TRAIN = os.path.join(REPO, 'train', 'train_imagenet.py')


def all_ended(job):
    return all(node.process is not None and node.process.poll() is not None
               for node in job.nodes)


def test_plan_sets_the_dmlc_variables():
    job = launcher.plan(num_workers=2, num_servers=1, port=9123)
    roles = [(n.role, n.index) for n in job.nodes]
    assert roles == [('scheduler', 0), ('server', 0), ('worker', 0), ('worker', 1)]
    for node in job.nodes:
        assert node.host == 'localhost'
        assert node.env['DMLC_ROLE'] == node.role
        assert node.env['DMLC_PS_ROOT_URI'] == '127.0.0.1'
        assert node.env['DMLC_PS_ROOT_PORT'] == '9123'
        assert node.env['DMLC_NUM_SERVER'] == '1'
        assert node.env['DMLC_NUM_WORKER'] == '2'
        assert node.env['DMLC_NODE_HOST'] == '127.0.0.1'
        assert node.env[WORKERS_ON_HOST] == '2'    # the two workers share this host's cores
    with pytest.raises(ValueError, match='at least one worker'):
        launcher.plan(num_workers=0, num_servers=1)


def test_plan_spreads_nodes_over_hosts_and_builds_ssh_commands(tmp_path):
    hostfile = tmp_path / 'hosts'
    hostfile.write_text('127.0.0.1  # first\n\nlocalhost\n')
    hosts = launcher.read_hostfile(str(hostfile))
    assert hosts == ['127.0.0.1', 'localhost']
    job = launcher.plan(num_workers=3, num_servers=2, hosts=hosts, port=9000)
    assert [n.host for n in job.nodes if n.role == 'worker'] == hosts + hosts[:1]
    assert job.nodes[0].env['DMLC_PS_ROOT_URI'] == '127.0.0.1'
    argv = launcher.ssh_argv('node7', ['python', 'train.py', '--out-dir', 'a b'],
                             {'DMLC_ROLE': 'worker'}, '/srv/gn mxnet')
    assert argv[0] == 'ssh' and argv[-2] == 'node7'
    remote = shlex.split(argv[-1])
    assert remote[:2] == ['cd', '/srv/gn mxnet']
    assert 'DMLC_ROLE=worker' in remote and remote[-2:] == ['--out-dir', 'a b']
    # 'localhost' is 127.0.0.1 too: the three workers share one machine.
    assert {n.env[WORKERS_ON_HOST] for n in job.nodes} == {'3'}
    two_hosts = launcher.plan(num_workers=3, num_servers=1, hosts=['127.0.0.1', '127.0.0.2'])
    assert [(n.role, n.env['DMLC_NODE_HOST'], n.env[WORKERS_ON_HOST]) for n in two_hosts.nodes] == [
        ('scheduler', '127.0.0.1', '2'), ('server', '127.0.0.1', '2'),
        ('worker', '127.0.0.1', '2'), ('worker', '127.0.0.2', '1'), ('worker', '127.0.0.1', '2')]
    (tmp_path / 'empty').write_text('# nothing\n')
    with pytest.raises(ValueError, match='lists no hosts'):
        launcher.read_hostfile(str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError):
        launcher.read_hostfile(str(tmp_path / 'absent'))


def test_dist_sync_two_workers_end_with_identical_weights(tmp_path):
    out, logs = tmp_path / 'out', tmp_path / 'logs'
    command = [sys.executable, TRAIN, '--kv-store', 'dist_sync', '--epochs', '2',
               '--train-subset', '512', '--val-subset', '100', '--no-progress',
               '--out-dir', str(out)]
    job = launcher.run(command, num_workers=2, num_servers=1, cwd=REPO, log_dir=str(logs),
                       timeout=300)
    assert all_ended(job)
    assert [n.returncode for n in job.nodes] == [0, 0, 0, 0]
    params = [{k: v.asnumpy() for k, v in mx.nd.load(str(out / f'worker{r}' / 'last.params'))
               .items()} for r in (0, 1)]
    assert sorted(params[0]) == sorted(params[1])
    for name in params[0]:
        np.testing.assert_array_equal(params[0][name], params[1][name], err_msg=name)
    summaries = [json.loads((out / f'worker{r}' / 'summary.json').read_text()) for r in (0, 1)]
    assert [s['rank'] for s in summaries] == [0, 1]
    assert all(s['num_workers'] == 2 and s['finished'] for s in summaries)
    # Each worker trained on its own half of the data, yet they stayed in step.
    assert summaries[0]['final']['train_loss'] != summaries[1]['final']['train_loss']
    assert '256 train samples per epoch on this worker' in summaries[0]['data']
    # Weights moved away from the initialisation both started from: updates were applied.
    initial = initial_parameters(seed=0)
    assert sorted(initial) == sorted(params[0])
    moved = [name for name in initial if not np.allclose(initial[name], params[0][name])]
    assert len(moved) > len(initial) // 2


def test_dist_sync_on_rec_records_of_uneven_sizes_ends_with_identical_weights(tmp_path):
    # Parts of equal bytes would give worker 0 about 66 of these 200 records and worker 1 134:
    # worker 0 would end its epoch early and worker 1 wait for it in dist_sync forever.
    from test_data import digit_subset, write_digit_rec
    (x_train, y_train), (x_val, y_val) = digit_subset(200, 40)
    train_rec = write_digit_rec(str(tmp_path), 'train', x_train, y_train, uneven=True)
    val_rec = write_digit_rec(str(tmp_path), 'val', x_val, y_val)
    out = tmp_path / 'out'
    command = [sys.executable, TRAIN, '--kv-store', 'dist_sync', '--rec-train', train_rec,
               '--rec-val', val_rec, '--num-classes', '10', '--data-shape', '1,28,28',
               '--network', 'resnet8_small', '--num-groups', '8', '--batch-size', '16',
               '--epochs', '1', '--warmup-epochs', '0', '-j', '1', '--no-progress',
               '--out-dir', str(out)]
    job = launcher.run(command, num_workers=2, num_servers=1, cwd=REPO,
                       log_dir=str(tmp_path / 'logs'), timeout=240)
    assert [n.returncode for n in job.nodes] == [0, 0, 0, 0]
    params = [mx.nd.load(str(out / f'worker{r}' / 'last.params')) for r in (0, 1)]
    assert sorted(params[0]) == sorted(params[1])
    for name in params[0]:
        np.testing.assert_array_equal(params[0][name].asnumpy(), params[1][name].asnumpy(),
                                      err_msg=name)
    summaries = [json.loads((out / f'worker{r}' / 'summary.json').read_text()) for r in (0, 1)]
    assert all(s['finished'] for s in summaries)
    assert all('96 train samples per epoch on this worker' in s['data'] for s in summaries)


def initial_parameters(seed):
    """The weights train() starts from for the default MNIST-5k config and `seed`."""
    from gn_mxnet import models
    from gn_mxnet.training import checkpoint
    from gn_mxnet.training.config import TrainConfig
    from gn_mxnet.training.network import prepare_network
    from gn_mxnet.training.runtime import seed_everything
    cfg = TrainConfig(seed=seed).resolved()
    seed_everything(cfg.seed)
    net = models.get_model(cfg.network, num_classes=10, norm=cfg.norm,
                           num_groups=cfg.num_groups, backend=cfg.gn_backend,
                           last_gamma=cfg.last_gamma)
    prepare_network(cfg, net, cfg.data_shape, [mx.cpu()])
    return checkpoint.parameter_arrays(net)


@pytest.fixture
def started_nodes(monkeypatch):
    """Every node the launcher starts, to check afterwards that its process has ended."""
    nodes = []
    original = launcher._start

    def remember(node, *args):
        original(node, *args)
        nodes.append(node)
    monkeypatch.setattr(launcher, '_start', remember)
    return nodes


def test_failing_workers_end_the_whole_job(tmp_path, started_nodes):
    # Scheduler and server block inside `import mxnet` waiting for workers that die at once.
    command = [sys.executable, '-c', 'import os, sys, mxnet\n'
               'sys.exit(3 if os.environ["DMLC_ROLE"] == "worker" else 0)']
    with pytest.raises(launcher.LaunchError, match='worker. on .* exited with code 3'):
        launcher.run(command, num_workers=2, num_servers=1, log_dir=str(tmp_path),
                     timeout=120)
    assert len(started_nodes) == 4
    assert all(node.process.poll() is not None for node in started_nodes)
    assert sorted(os.listdir(tmp_path)) == ['scheduler.log', 'server0.log', 'worker0.log',
                                            'worker1.log']


def test_timeout_stops_every_process(started_nodes):
    with pytest.raises(launcher.LaunchError, match='within 2'):
        launcher.run([sys.executable, '-c', 'import time; time.sleep(120)'],
                     num_workers=1, num_servers=1, timeout=2)
    assert len(started_nodes) == 3
    assert all(node.process.poll() is not None for node in started_nodes)


def test_launch_script_runs_a_job(tmp_path):
    import subprocess
    marker = tmp_path / 'ran'
    # What a training script does first (use_every_core), then its kvstore: each worker records
    # the number of workers and its OpenMP threads, its share of this host's cores.
    code = ('import os, pathlib; from gn_mxnet.utils.threads import use_every_core; '
            'threads = use_every_core(); import mxnet; kv = mxnet.kv.create("dist_sync"); '
            f'pathlib.Path(r"{marker}" + str(kv.rank))'
            '.write_text(f"{kv.num_workers} {threads}")')
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    result = subprocess.run([sys.executable, LAUNCH, '-n', '2', '-s', '1', '--timeout', '120',
                             '--', sys.executable, '-c', code], cwd=REPO, timeout=180,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    share = max(1, physical_cores() // 2)
    for rank in (0, 1):
        assert (tmp_path / f'ran{rank}').read_text() == f'2 {share}'
    assert 'worker0=0 worker1=0' in result.stdout


# --- remote nodes: a stand-in for ssh runs the "remote" command here -------------------------
FAKE_SSH = '''#!{python}
"""ssh, as far as the launcher can tell: runs the remote command with `sh -c` in a session of
its own and a fresh environment, so that, as on a real remote host, killing this client does not
end the command. Logs each call (host, command) to $FAKE_SSH_LOG."""
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith('-'):
    if args.pop(0) in ('-o', '-p', '-i', '-l'):
        args.pop(0)
host, command = args[0], ' '.join(args[1:])
with open(os.environ['FAKE_SSH_LOG'], 'a') as log:
    log.write(repr((host, command)) + '\\n')
remote = subprocess.Popen(['sh', '-c', command], start_new_session=True,
                          stdin=subprocess.DEVNULL,
                          env={{'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/')}})
code = remote.wait()
sys.exit(code if code >= 0 else 255)
'''


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    """PATH with the stand-in ssh first; yields the file its calls are logged to."""
    folder = tmp_path / 'fake_bin'
    folder.mkdir()
    script = folder / 'ssh'
    script.write_text(FAKE_SSH.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / 'ssh_calls.log'
    log.write_text('')
    monkeypatch.setenv('PATH', f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv('FAKE_SSH_LOG', str(log))
    return log


def alive(pid):
    """True while `pid` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f'not within {seconds} s: {what}')
        time.sleep(0.2)


def node_pids(logs, names):
    """{node name: pid} that each node's command printed first in its log."""
    def read():
        found = {}
        for name in names:
            path = logs / f'{name}.log'
            words = path.read_text().split() if path.exists() else []
            if words and words[0].isdigit():
                found[name] = int(words[0])
        return found
    wait_for(lambda: len(read()) == len(names), 120, f'every node printed its pid in {logs}')
    return read()


NAMES = ['scheduler', 'server0', 'worker0', 'worker1']
# Every node prints its pid first (before `import mxnet`, in which servers stay).
SLEEPER = 'import os, time; print(os.getpid(), flush=True); time.sleep(300)'
PUSHPULL = ('import os; print(os.getpid(), flush=True)\n'
            'import mxnet as mx\n'
            'kv = mx.kv.create("dist_sync"); a = mx.nd.ones(4); kv.init(0, a)\n'
            'while True:\n    kv.pushpull(0, a, out=a); a.wait_to_read()\n')


def test_remote_nodes_run_in_a_process_group_a_second_ssh_call_can_signal():
    local = launcher.plan(num_workers=1, num_servers=1)
    assert all(node.pid_file is None for node in local.nodes)
    job = launcher.plan(num_workers=2, num_servers=1, hosts=['127.0.0.1', '127.0.0.2'])
    pid_files = [node.pid_file for node in job.nodes]
    assert len(set(pid_files)) == 4 and all(f.startswith('/tmp/') for f in pid_files)
    argv = launcher.ssh_argv('node7', ['python', 'train.py', '--out-dir', 'a b'],
                             {'DMLC_ROLE': 'worker'}, '/srv/gn mxnet', pid_file='/tmp/n.pid')
    remote = shlex.split(argv[-1])
    assert remote[:9] == ['cd', '/srv/gn mxnet', '&&', 'exec', 'setsid', '-w', 'sh', '-c',
                          'echo $$ > /tmp/n.pid; "$@"; status=$?; rm -f /tmp/n.pid; '
                          'exit $status']
    assert remote[9:] == ['sh', 'env', 'DMLC_ROLE=worker', 'python', 'train.py',
                          '--out-dir', 'a b']
    kill = launcher.remote_signal_argv('node7', '/tmp/n.pid', 'TERM')
    assert kill[0] == 'ssh' and kill[-2] == 'node7' and 'ConnectTimeout=10' in kill
    assert shlex.split(kill[-1]) == [
        'sh', '-c', 'p=$(cat /tmp/n.pid 2>/dev/null) && kill -TERM -"$p" 2>/dev/null; exit 0']


def start_remote_job(tmp_path, code):
    """train/launch.py running `python -c code` as 2 workers + 1 server on two "remote" hosts."""
    hostfile = tmp_path / 'hosts'
    hostfile.write_text('127.0.0.1\n127.0.0.2\n')
    logs = tmp_path / 'logs'
    launch = subprocess.Popen([sys.executable, LAUNCH, '-n', '2', '-s', '1', '-H', str(hostfile),
                               '--out-dir', str(logs), '--timeout', '300', '--',
                               sys.executable, '-c', code],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return launch, node_pids(logs, NAMES)


@pytest.mark.parametrize('code', [SLEEPER, PUSHPULL], ids=['sleeping', 'dist_sync'])
def test_a_killed_remote_worker_ends_every_remote_process(tmp_path, fake_ssh, code):
    before = set(glob.glob('/tmp/gn_mxnet_launch.*'))
    launch, pids = start_remote_job(tmp_path, code)
    try:
        os.kill(pids['worker1'], signal.SIGKILL)
        killed = time.time()
        _, err = launch.communicate(timeout=60)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 1
    assert 'worker1 on 127.0.0.2 exited with code 137' in err and 'Traceback' not in err
    # The other nodes ran detached from their (stand-in) ssh clients: only the ssh calls that
    # signal their process groups can have ended them.
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), 10,
             'every remote process ended')
    assert time.time() - killed < 60
    calls = fake_ssh.read_text()
    assert calls.count('kill -TERM') >= 3 and calls.count('kill -KILL') >= 3
    assert set(glob.glob('/tmp/gn_mxnet_launch.*')) <= before   # pid files removed


def test_sigterm_to_the_launcher_ends_the_job(tmp_path, fake_ssh):
    launch, pids = start_remote_job(tmp_path, SLEEPER)
    try:
        launch.send_signal(signal.SIGTERM)
        _, err = launch.communicate(timeout=60)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 128 + signal.SIGTERM and 'Traceback' not in err
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), 10,
             'every remote process ended')


@pytest.mark.parametrize('failure, code', [
    ('raise RuntimeError("this worker failed")', 1),
    ('import argparse; argparse.ArgumentParser().error("bad input")', 2)],
    ids=['exception', 'usage-error'])
def test_a_worker_that_fails_in_a_dist_sync_job_exits_and_ends_it(tmp_path, failure, code):
    # ps-lite's exit barrier would keep a failed worker alive while the other waits in pushpull.
    script = ('import mxnet as mx, gn_mxnet.training.distributed\n'
              'kv = mx.kv.create("dist_sync"); a = mx.nd.ones(4); kv.init(0, a)\n'
              'kv._barrier()\n'
              f'if kv.rank == 1:\n    {failure}\n'
              'while True:\n    kv.pushpull(0, a, out=a); a.wait_to_read()\n')
    start = time.time()
    with pytest.raises(launcher.LaunchError, match=f'worker. on localhost exited with code {code}'):
        launcher.run([sys.executable, '-c', script], num_workers=2, num_servers=1,
                     log_dir=str(tmp_path), timeout=90)
    assert time.time() - start < 60
