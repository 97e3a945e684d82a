"""The ps-lite launcher: node plan, ssh commands, a real dist_sync job on loopback, and clean-up
of every process when a node fails or the time runs out."""
import json
import os
import shlex
import sys

import mxnet as mx
import numpy as np
import pytest

from gn_mxnet.training import launcher

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
    code = ('import os, mxnet, pathlib; kv = mxnet.kv.create("dist_sync"); '
            f'pathlib.Path(r"{marker}" + str(kv.rank)).write_text(str(kv.num_workers))')
    result = subprocess.run([sys.executable, LAUNCH, '-n', '2', '-s', '1', '--timeout', '120',
                             '--', sys.executable, '-c', code], cwd=REPO, timeout=180,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / 'ran0').read_text() == '2' and (tmp_path / 'ran1').read_text() == '2'
    assert 'worker0=0 worker1=0' in result.stdout
