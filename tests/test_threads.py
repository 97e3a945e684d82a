"""gn_mxnet.utils.threads: the training scripts' OpenMP thread count."""
import os
import subprocess
import sys

import pytest

from gn_mxnet.utils import threads

PROBE = ("import os, sys; from gn_mxnet.utils.threads import use_every_core; "
         "print(use_every_core(), os.environ.get('OMP_NUM_THREADS'))")


def _probe(env_threads=None, import_mxnet_first=False, workers_on_host=None,
           variable=threads.LOCAL_SIZE_VARIABLES[0]):
    env = {k: v for k, v in os.environ.items()
           if k not in ('OMP_NUM_THREADS', *threads.LOCAL_SIZE_VARIABLES)}
    if env_threads is not None:
        env['OMP_NUM_THREADS'] = env_threads
    if workers_on_host is not None:
        env[variable] = workers_on_host
    code = ('import mxnet; ' if import_mxnet_first else '') + PROBE
    return subprocess.run([sys.executable, '-c', code], env=env, check=True,
                          capture_output=True, text=True).stdout.split()


def test_every_physical_core_unless_the_user_chose():
    cores = threads.physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert _probe() == [str(cores), str(cores)]
    assert _probe('3') == ['3', '3']                 # the user's value is kept
    # After MXNet started nothing changes (it has read its count already).
    assert _probe(import_mxnet_first=True) == ['None', 'None']


def test_the_training_scripts_set_it_before_mxnet_starts():
    """Importing each script (what `python train/<script>` runs before main) leaves
    OMP_NUM_THREADS set: use_every_core() ran before anything imported MXNet."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    for script in ('train_imagenet.py', 'train_coco.py', 'coco_comparison.py'):
        code = ("import importlib.util, os; spec = importlib.util.spec_from_file_location("
                "'script', %r); spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
                "print(os.environ.get('OMP_NUM_THREADS'))" % os.path.join(repo, 'train', script))
        out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        assert out[-1:] == [str(threads.physical_cores())], script


def test_ranks_on_one_host_share_its_cores(monkeypatch):
    """horovodrun's HOROVOD_LOCAL_SIZE (tests/test_horovod.py sees it set in a real job) or
    Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE."""
    cores = threads.physical_cores()
    share = str(max(1, cores // 2))
    for variable in threads.LOCAL_SIZE_VARIABLES:
        assert _probe(workers_on_host='2', variable=variable) == [share, share]
    assert _probe(workers_on_host=str(cores + 5)) == ['1', '1']    # never below one
    assert _probe('3', workers_on_host='2') == ['3', '3']          # the user's value is kept
    for variable in threads.LOCAL_SIZE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for bad in ('0', 'two', '-1'):
        monkeypatch.setenv('HOROVOD_LOCAL_SIZE', bad)
        with pytest.raises(ValueError, match=f"HOROVOD_LOCAL_SIZE must be a positive "
                                             f"integer, got '{bad}'"):
            threads.cores_per_worker()
