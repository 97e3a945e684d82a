"""Start a distributed MXNet job on MXNet's own ps-lite kvstore: one scheduler, S servers and W
workers, told their role and the scheduler's address by the DMLC_* environment variables.

It replaces the wheel's `dmlc_tracker`, which fails on Python >= 3.9 (`Thread.isAlive`).
Every role runs the same command: importing mxnet with DMLC_ROLE=server or scheduler turns the
process into that node (mxnet.kvstore_server), so the training script needs no special case.
Processes run locally, or on hosts over ssh. Whatever happens — a worker fails, the timeout
passes, Ctrl-C — every process this launcher started is ended before it returns, remote ones
included: killing a local ssh client does not end its remote command (without a terminal nothing
tells the command that the connection is gone), so each remote node runs in a session of its own
whose id a small wrapper writes to a pid file, and stopping it signals that process group over a
second ssh connection. Every wait is bounded, so a failed job ends in bounded time.
"""
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional

from ..utils.threads import WORKERS_ON_HOST

ROLES = ('scheduler', 'server', 'worker')
SSH = ('ssh', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes')
# Seconds an ssh call that signals remote processes may take to connect, and to finish.
SSH_CONNECT_SECONDS, SSH_CALL_SECONDS = 10, 20
# The remote side of a node, run by `setsid -w` (a new session and process group holding the
# command and all it starts): it records the group id, runs the command, removes the record.
_REMOTE_WRAPPER = 'echo $$ > {pid_file}; "$@"; status=$?; rm -f {pid_file}; exit $status'


class LaunchError(RuntimeError):
    pass


@dataclass
class Node:
    role: str
    index: int
    host: str                      # 'localhost' runs without ssh
    env: dict
    process: Optional[subprocess.Popen] = None
    log_path: Optional[str] = None
    returncode: Optional[int] = None
    pid_file: Optional[str] = None   # remote nodes: where their process group id is kept

    @property
    def name(self):
        return self.role if self.role == 'scheduler' else f'{self.role}{self.index}'


@dataclass
class Job:
    nodes: List[Node] = field(default_factory=list)

    def workers(self):
        return [n for n in self.nodes if n.role == 'worker']


def free_port(host='127.0.0.1'):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve(host):
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise LaunchError(f"cannot resolve host {host!r} to an IP address") from None


def read_hostfile(path):
    """One host per line ('#' starts a comment)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"host file not found: {path}")
    with open(path) as f:
        hosts = [line.split('#')[0].strip() for line in f]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise ValueError(f"host file {path} lists no hosts")
    return hosts


def plan(num_workers, num_servers, hosts=None, root_uri=None, port=None, extra_env=None):
    """The nodes of a job: the scheduler on the first host, servers and workers spread
    round-robin over the hosts (all on 127.0.0.1 when no hosts are given)."""
    if num_workers < 1 or num_servers < 1:
        raise ValueError(f"need at least one worker and one server, got {num_workers} "
                         f"worker(s) and {num_servers} server(s)")
    local = not hosts
    hosts = ['127.0.0.1'] if local else list(hosts)
    # ps-lite binds and connects by IP address: resolve host names here.
    root_uri = resolve(root_uri or hosts[0])
    port = port or free_port('127.0.0.1' if local else '')
    common = {'DMLC_PS_ROOT_URI': root_uri, 'DMLC_PS_ROOT_PORT': str(port),
              'DMLC_NUM_SERVER': str(num_servers), 'DMLC_NUM_WORKER': str(num_workers)}
    common.update(extra_env or {})
    nodes = [Node('scheduler', 0, hosts[0], dict(common, DMLC_ROLE='scheduler'))]
    for role, count in (('server', num_servers), ('worker', num_workers)):
        for i in range(count):
            host = hosts[i % len(hosts)]
            nodes.append(Node(role, i, host, dict(common, DMLC_ROLE=role)))
    job_id = uuid.uuid4().hex[:12]
    for node in nodes:
        # ps-lite binds to DMLC_NODE_HOST: the node's own address, loopback when local.
        node.env['DMLC_NODE_HOST'] = resolve(node.host)
    workers_at = Counter(n.env['DMLC_NODE_HOST'] for n in nodes if n.role == 'worker')
    for node in nodes:
        # Each process takes its host's cores divided by the workers there (utils.threads).
        node.env[WORKERS_ON_HOST] = str(max(1, workers_at[node.env['DMLC_NODE_HOST']]))
        node.host = 'localhost' if local else node.host
        if node.host != 'localhost':
            node.pid_file = f'/tmp/gn_mxnet_launch.{job_id}.{node.name}.pid'
    return Job(nodes)


def ssh_argv(host, command, env, cwd, ssh_options=(), pid_file=None):
    """The ssh command that runs `command` on `host` in `cwd` with `env` exported; with a
    `pid_file`, in a process group of its own whose id that file holds while it runs."""
    exports = ' '.join(f'{k}={shlex.quote(v)}' for k, v in sorted(env.items()))
    run = f"env {exports} {' '.join(map(shlex.quote, command))}"
    if pid_file:
        wrapper = _REMOTE_WRAPPER.format(pid_file=shlex.quote(pid_file))
        run = f"exec setsid -w sh -c {shlex.quote(wrapper)} sh {run}"
    return [*SSH, *ssh_options, host, f"cd {shlex.quote(cwd)} && {run}"]


def remote_signal_argv(host, pid_file, sig, ssh_options=()):
    """The ssh command that sends `sig` ('TERM' or 'KILL') to the process group recorded in
    `pid_file` on `host`; after KILL it also removes the file."""
    group = shlex.quote(pid_file)
    script = f'p=$(cat {group} 2>/dev/null) && kill -{sig} -"$p" 2>/dev/null'
    if sig == 'KILL':
        script += f'; rm -f {group}'
    return [*SSH, '-o', f'ConnectTimeout={SSH_CONNECT_SECONDS}', *ssh_options, host,
            f'sh -c {shlex.quote(script + "; exit 0")}']


def _start(node, command, cwd, log_dir):
    if node.host == 'localhost':
        argv, env = list(command), dict(os.environ, **node.env)
    else:
        argv = ssh_argv(node.host, command, node.env, cwd, pid_file=node.pid_file)
        env = dict(os.environ)
    out = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        node.log_path = os.path.join(log_dir, f'{node.name}.log')
        out = open(node.log_path, 'wb')
    try:
        # A new session per node, so that stopping it also stops anything it started.
        node.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out,
                                        stderr=subprocess.STDOUT if out else None,
                                        start_new_session=True)
    finally:
        if out:
            out.close()


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_remote(node, sig):
    """Starts the ssh call that signals `node`'s remote process group (None for local nodes)."""
    if not node.pid_file:
        return None
    return subprocess.Popen(remote_signal_argv(node.host, node.pid_file, sig),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _finish_calls(calls, deadline):
    for call in calls:
        try:
            call.wait(timeout=max(deadline - time.time(), 0.01))
        except subprocess.TimeoutExpired:
            _signal_group(call, signal.SIGKILL)
            call.wait()


def stop(job, grace_seconds=5.0):
    """SIGTERM every running node's process group, then SIGKILL what is left.

    A remote node is signalled over a second ssh connection, unless its command is known to
    have ended well (its ssh exited 0); its local ssh client exits once the remote group is
    gone. The local SIGKILL of an ssh client alone would leave the remote command running.
    """
    remote = [n for n in job.nodes if n.pid_file and n.process and n.process.poll() != 0]
    calls = [_signal_remote(n, 'TERM') for n in remote]
    running = [n.process for n in job.nodes if n.process and n.process.poll() is None]
    for node in job.nodes:
        if node.process in running and not node.pid_file:
            _signal_group(node.process, signal.SIGTERM)
    deadline = time.time() + grace_seconds
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.time(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    calls += [_signal_remote(n, 'KILL') for n in remote]  # stragglers; removes the pid file
    for node in job.nodes:
        if node.process:
            _signal_group(node.process, signal.SIGKILL)  # stragglers left in the group
            node.process.wait()
            node.returncode = node.process.returncode
    _finish_calls(calls, time.time() + SSH_CALL_SECONDS)


def run(command, num_workers, num_servers=1, hosts=None, root_uri=None, port=None,
        extra_env=None, cwd=None, log_dir=None, timeout=None, poll_seconds=0.2,
        server_grace_seconds=30.0):
    """Run `command` (an argv list) as a ps-lite job and wait for its workers.

    Returns the Job (every node's returncode set). Raises LaunchError when a node fails or
    `timeout` seconds pass; in every case all started processes are ended first.
    """
    if isinstance(command, str):
        command = shlex.split(command)
    if not command:
        raise ValueError("no command to launch")
    cwd = os.path.abspath(cwd or os.getcwd())
    job = plan(num_workers, num_servers, hosts, root_uri, port, extra_env)
    start = time.time()
    try:
        for node in job.nodes:
            _start(node, command, cwd, log_dir)
        _wait_workers(job, start, timeout, poll_seconds)
        # Servers and the scheduler exit once every worker has finalised its kvstore.
        _wait_all(job, time.time() + server_grace_seconds, poll_seconds)
    finally:
        stop(job)
    return job


def _failure(node):
    where = f" (log: {node.log_path})" if node.log_path else ''
    code = node.process.returncode
    if node.pid_file and code == 255:
        where += ' (255: ssh could not reach the host, or lost it)'
    return LaunchError(f"{node.name} on {node.host} exited with code {code}{where}")


def _wait_workers(job, start, timeout, poll_seconds):
    while True:
        for node in job.nodes:
            code = node.process.poll()
            if code not in (None, 0):
                raise _failure(node)
        if all(n.process.poll() == 0 for n in job.workers()):
            return
        if timeout is not None and time.time() - start > timeout:
            raise LaunchError(f"the job did not finish within {timeout} s")
        time.sleep(poll_seconds)


def _wait_all(job, deadline, poll_seconds):
    while time.time() < deadline:
        if all(n.process.poll() is not None for n in job.nodes):
            return
        time.sleep(poll_seconds)


def python_command(script, args):
    """argv running `script` with this interpreter (the same venv on every local node)."""
    return [sys.executable, script, *args]
