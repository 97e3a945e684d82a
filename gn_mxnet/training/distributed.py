"""Training on several machines: gradients summed over MXNet's ps-lite kvstore. (Starting the
machines' processes is gn_mxnet.training.launcher, which needs no MXNet.)

A worker that fails must also *exit*: at interpreter shutdown MXNet frees the dist kvstore, whose
ps::Finalize waits in a barrier for every other worker, and they wait for this one's gradients,
so a worker that raised would never end and the launcher would never learn of it. In a ps-lite
worker process (DMLC_ROLE=worker) importing this module therefore makes an uncaught exception,
and a non-zero sys.exit (argparse's usage errors), end the process at once.
"""
import os
import sys
import threading
import traceback

import mxnet as mx
from mxnet import gluon


def connect(kv_store):
    """(kvstore, rank, num_workers). A dist kvstore joins its job here (every worker needs its
    rank before it loads its part of the data); any other stays a name for gluon.Trainer."""
    if 'dist' in kv_store:
        kv = mx.kv.create(kv_store)
        return kv, kv.rank, kv.num_workers
    return kv_store, 0, 1


def make_trainer(params, optimizer, optimizer_params, kv):
    """(trainer, sync): a Trainer whose optimizer states stay in this process, so checkpoints
    can save them (with a dist kvstore Gluon would update on its servers, and MXNet refuses to
    save states held there), and for a dist kvstore the DistributedGradients to call between
    backward and step (None otherwise). The classifier and the detector both train this way.
    """
    if isinstance(kv, mx.kvstore.KVStore) and 'dist' in kv.type:
        trainer = gluon.Trainer(params, optimizer, optimizer_params, kvstore=None,
                                update_on_kvstore=False)
        return trainer, DistributedGradients(kv, params)
    return gluon.Trainer(params, optimizer, optimizer_params, kvstore=kv,
                         update_on_kvstore=False), None


def _end_now(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # no interpreter shutdown, so no kvstore barrier


def guard_worker_exit():
    """Make failures end this process at once (see the module docstring)."""
    normal_exit = sys.exit

    def excepthook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        _end_now(1)

    def failing_exit(code=None):
        if code not in (None, 0) and threading.current_thread() is threading.main_thread():
            if not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
            _end_now(code)
        normal_exit(code)

    sys.excepthook, sys.exit = excepthook, failing_exit


if os.environ.get('DMLC_ROLE') == 'worker':
    guard_worker_exit()


class DistributedGradients:
    """Gradient all-reduce over a dist kvstore, with the weight updates kept on the workers.

    Gluon's Trainer can do this itself (update_on_kvstore=False), but it broadcasts the initial
    weights lazily inside the first step(), after a forward pass; on MKLDNN CPUs that pull was
    seen to race with the weights' re-layout, and two workers started from different weights.
    Here rank 0's weights are broadcast up front, before any forward pass, and the Trainer
    (created without a kvstore) only applies the summed gradients, so its optimizer states stay
    local and go into checkpoints.
    """

    def __init__(self, kv, params):
        self.kv = kv
        self.params = [p for p in params.values() if p.grad_req != 'null']

    def broadcast_parameters(self):
        for key, param in enumerate(self.params):
            self.kv.init(key, param.list_data()[0])
        mx.nd.waitall()
        self.kv._barrier()   # every worker has seen rank 0's values stored before pulling
        for key, param in enumerate(self.params):
            self.kv.pull(key, out=param.list_data(), priority=-key)
        mx.nd.waitall()

    def allreduce(self):
        """Sum every gradient over devices and workers, in place."""
        for key, param in enumerate(self.params):
            self.kv.pushpull(key, param.list_grad(), out=param.list_grad(), priority=-key)
