"""How many OpenMP threads MXNet's CPU operators get: fixed once, when MXNet starts.

Unless OMP_NUM_THREADS is set, MXNet 1.9 gives its operators (oneDNN's convolutions among them)
half of omp_get_num_procs() on x86 (src/engine/openmp.cc), assuming two hyperthreads per core.
On a machine whose cores run one thread each that leaves half of them idle: on this project's
2-core machines a Mask R-CNN training step and a ResNet-50 classifier epoch ran 1.3x faster
with 2 threads than with MXNet's 1 (results/threads/). The training scripts call
use_every_core() before they import MXNet; a value the user set is kept. Processes that share a
machine share its cores: horovodrun (and mpirun) tell each process it starts how many of the
job's processes run on its host, and each takes its part, so two ranks on two cores run one
thread each instead of two threads each, whose teams would wait on each other.
"""
import os
import sys


def physical_cores():
    """The cores this process may run on, hyperthread siblings counted once."""
    cpus = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            with open('/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list' % cpu) as f:
                cores.add(f.read().strip())
        except OSError:   # no sysfs topology: each CPU its own core
            cores.add(str(cpu))
    return max(1, len(cores))


# The number of the job's processes on this host, as horovodrun (Gloo) and Open MPI's mpirun
# set it in every process they start; the first one set counts.
LOCAL_SIZE_VARIABLES = ('HOROVOD_LOCAL_SIZE', 'OMPI_COMM_WORLD_LOCAL_SIZE')


def workers_on_host():
    for name in LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            return int(value)
    return 1


def cores_per_worker():
    """This process's share of the physical cores (at least one)."""
    return max(1, physical_cores() // workers_on_host())


def use_every_core():
    """Sets OMP_NUM_THREADS to cores_per_worker() unless it is set already; returns the count
    in force, or None (nothing changed) when MXNet is imported already: MXNet reads it once."""
    if os.environ.get('OMP_NUM_THREADS'):
        return os.environ['OMP_NUM_THREADS']
    if 'mxnet' in sys.modules:   # too late (a script imported by a test, say): keep MXNet's
        return None
    os.environ['OMP_NUM_THREADS'] = str(cores_per_worker())
    return os.environ['OMP_NUM_THREADS']
