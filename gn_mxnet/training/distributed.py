"""Training in several processes, on one machine or many, over Horovod (`--kv-store horovod`).

horovodrun (or mpirun, with an MPI build of Horovod) starts one process per device; each is a
rank of one job. The classifier and the detector both train this way:

- every rank starts from rank 0's weights: `broadcast_parameters` after the network is built,
  and at resume after rank 0's checkpoint is restored on every rank (`share_state`);
- each rank reads its own part of the data, and Horovod's DistributedTrainer averages the
  gradients over the ranks before every update, so `trainer.step(batch of this rank)` makes
  the update of one process stepping over the global batch (the lr follows the global batch:
  the caller scales it by `size`);
- rank 0 alone writes (`Job.writes`): checkpoint, logs, curves and run record go to the
  out-dir as in a one-process run; the other ranks write nothing;
- BatchNorm statistics stay per rank (nothing synchronises them; GroupNorm has none).

A rank that raises ends its process; Horovod shuts down on the others (their next collective
raises) and horovodrun ends every process of the job and exits non-zero.
"""
import glob
import io
import os
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from . import checkpoint as ckpt
from .runtime import make_contexts, parse_gpus

HOROVOD = 'horovod'
INSTALL_COMMAND = 'bash tools/install_horovod.sh'
# What horovodrun (Gloo), Open MPI's mpirun and PMI launchers (MPICH, Slurm) set in the
# processes they start: without one, horovod.init() would quietly make a job of one process.
LAUNCHER_VARIABLES = ('HOROVOD_RANK', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK')


class DistributedError(ValueError):
    """--kv-store horovod cannot run here (a usage error: the scripts exit 2 with it)."""


@dataclass
class Job:
    """This process's place in its job; one process alone is rank 0 of size 1."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    hvd: Any = None           # horovod.mxnet, once initialised; None: one process

    @property
    def writes(self):
        """Whether this process writes the run's files (rank 0 only)."""
        return self.rank == 0

    def contexts(self, gpus):
        """The devices of this process: all of --gpus alone, or under Horovod one per rank,
        the local_rank-th of --gpus (the GPUs of each host), or the CPU."""
        if self.hvd is None:
            return make_contexts(gpus)
        ids = parse_gpus(gpus)
        if not ids:
            return [mx.cpu()]
        if len(ids) < self.local_size:
            raise DistributedError(f"--gpus {gpus} lists {len(ids)} GPU(s) for the "
                                   f"{self.local_size} ranks on this host; list one per rank")
        return make_contexts(str(ids[self.local_rank]))


def horovod_missing():
    """Why Horovod for MXNet is not installed here, or None. Looked up in its files, as
    horovod's own check_extension does, not imported: importing horovod.mxnet loads libmxnet.so
    into the global symbol scope of the whole process."""
    spec = find_spec('horovod')
    if spec is None or not spec.submodule_search_locations:
        return 'no horovod package'
    folder = os.path.join(list(spec.submodule_search_locations)[0], 'mxnet')
    if not glob.glob(os.path.join(folder, 'mpi_lib*.so')):
        return 'horovod was built without MXNet'
    return None


def require_horovod():
    """Raises DistributedError unless Horovod is installed with its MXNet part."""
    missing = horovod_missing()
    if missing:
        raise DistributedError(f"--kv-store horovod: Horovod for MXNet is not installed "
                               f"({missing}); install it with `{INSTALL_COMMAND}`")


def check_horovod(kv_store):
    """Raises DistributedError unless `kv_store` is not Horovod's, or Horovod is installed
    with its MXNet part and this process was started by horovodrun or mpirun."""
    if kv_store != HOROVOD:
        return
    require_horovod()
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        raise DistributedError("--kv-store horovod: start this script with horovodrun, e.g. "
                               "`horovodrun -np 2 -H localhost:2 python SCRIPT --kv-store "
                               "horovod ...`, or with mpirun (docs/multi_machine.md)")


def connect(kv_store):
    """The Job of this process: Horovod's ranks for 'horovod', else one process."""
    if kv_store != HOROVOD:
        return Job()
    check_horovod(kv_store)
    import horovod.mxnet as hvd
    hvd.init()
    return Job(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
               local_size=hvd.local_size(), hvd=hvd)


def local_first(job, make):
    """make() on the host's local rank 0 first and then on its other ranks: for what the first
    call writes into a cache that the others then read (the embedded COCO set)."""
    if job.local_rank == 0:
        made = make()
    _barrier(job)
    if job.local_rank != 0:
        made = make()
    return made


def _barrier(job):
    if job.size > 1:
        job.hvd.allreduce(mx.nd.zeros((1,)), name='barrier').wait_to_read()


def make_trainer(params, optimizer, optimizer_params, kv_store, job):
    """A Trainer whose optimizer states stay in this process (checkpoints save them); step it
    with the batch of this process. Under Horovod it averages the gradients over the ranks
    first, so every rank applies the same update."""
    if job.hvd is not None:
        return job.hvd.DistributedTrainer(params, optimizer, optimizer_params)
    return gluon.Trainer(params, optimizer, optimizer_params, kvstore=kv_store,
                         update_on_kvstore=False)


def broadcast_parameters(job, params):
    """Rank 0's values of `params` (a ParameterDict) on every rank, before any forward pass."""
    if job.size > 1:
        job.hvd.broadcast_parameters(params, root_rank=0)
        mx.nd.waitall()


def _broadcast_bytes(job, data):
    """Rank 0's `data` (bytes; ignored elsewhere) on every rank."""
    length = mx.nd.array([len(data) if job.rank == 0 else 0], dtype='int64')
    length = int(job.hvd.broadcast(length, root_rank=0, name='state_length').asscalar())
    if length == 0:
        return b''
    buffer = mx.nd.zeros((length,), dtype='uint8')
    if job.rank == 0:
        buffer[:] = np.frombuffer(data, dtype=np.uint8)
    return job.hvd.broadcast(buffer, root_rank=0, name='state_bytes').asnumpy().tobytes()


def share_state(job, state):
    """Rank 0's checkpoint state (or None: a new run) on every rank, as data (the checkpoint's
    own .npz encoding, never a pickle): only rank 0 reads the out-dir, which the other hosts
    need not see."""
    if job.size == 1:
        return state
    data = b''
    if job.rank == 0 and state is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **ckpt.encode(state))
        data = buffer.getvalue()
    data = _broadcast_bytes(job, data)
    if not data:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return ckpt.decode({key: loaded[key] for key in loaded.files})
