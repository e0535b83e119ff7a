# Licensed to the Apache Software Foundation (ASF) under one
# or more contributor license agreements.  See the NOTICE file
# distributed with this work for additional information
# regarding copyright ownership.  The ASF licenses this file
# to you under the Apache License, Version 2.0 (the
# "License"); you may not use this file except in compliance
# with the License.  You may obtain a copy of the License at
#
#   http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing,
# software distributed under the License is distributed on an
# "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY
# KIND, either express or implied.  See the License for the
# specific language governing permissions and limitations
# under the License.
"""Helpers shared by the tests and the benchmarks (not needed for tuning)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator


def random_schedules(mod, target, count: int, seed: int = 0) -> list:
    """``count`` distinct postprocessed random schedules of ``mod``, as ReplayTrace samples them.

    Parameters
    ----------
    mod : IRModule
        The workload (one function named ``main``).
    target : Target
        The target whose design space and postprocessors are used.
    count : int
        How many distinct modules to return.
    seed : int
        Seed of the sampling.

    Returns
    -------
    mods : List[IRModule]
        The scheduled modules.
    """
    # pylint: disable=import-outside-toplevel
    import tvm
    from tvm.s_tir import Trace
    from tvm.s_tir import meta_schedule as ms

    context = ms.TuneContext(
        mod=mod,
        target=target,
        space_generator="post-order-apply",
        task_name="sample",
        rand_state=seed + 1,
    )
    spaces = context.generate_design_space()
    postprocs = context.space_generator.postprocs
    mods, seen = [], set()
    attempt = 0
    while len(mods) < count and attempt < 50 * count:
        attempt += 1
        space = spaces[attempt % len(spaces)]
        sch = tvm.s_tir.Schedule(mod, seed=seed * 100003 + attempt, debug_mask=0)
        Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()
        if not all(proc.apply(sch) for proc in postprocs):
            continue
        key = tvm.ir.save_json(sch.mod)
        if key not in seen:
            seen.add(key)
            mods.append(sch.mod)
    if len(mods) < count:
        raise RuntimeError(
            f"random_schedules: only {len(mods)} distinct schedules after {attempt} attempts"
        )
    return mods


# ----------------------------------------------------------------------------- fault injection
# Deterministic faults for the reliability tests: a candidate is chosen by the structural hash of
# its module (builds) or by the number of the call in the runner's worker process (runs).
# Module-level functions, so that ``functools.partial`` of them pickles by reference into the
# builder's and the runner's worker processes.
_run_calls = 0


def faulty_build(mod, target, params, *, fail_every: int = 0, hang_every: int = 0, hang_sec=60.0):
    """A build function that fails or hangs for some modules, else builds like FastBuilder.

    A module whose structural hash is divisible by ``fail_every`` raises; one whose hash leaves
    remainder 1 modulo ``hang_every`` sleeps ``hang_sec`` first (a build time-out).
    """
    # pylint: disable=import-outside-toplevel
    import time

    import tvm_ffi

    from .builder import default_build

    shash = int(tvm_ffi.structural_hash(mod))
    if fail_every and shash % fail_every == 0:
        raise RuntimeError(f"injected build failure (module hash {shash})")
    if hang_every and shash % hang_every == 1:
        time.sleep(hang_sec)
    return default_build(mod, target, params)


def faulty_run_evaluator(
    rt_mod,
    device,
    evaluator_config,
    repeated_args,
    *,
    fail_call: int = 0,
    hang_call: int = 0,
    period: int = 0,
    hang_sec: float = 60.0,
):
    """A run evaluator that raises on call ``fail_call`` and hangs on call ``hang_call``.

    Calls are counted per runner worker process, modulo ``period``; a time-out kills the worker,
    and its successor counts from zero again. Other calls evaluate like MetaSchedule's default.
    """
    # pylint: disable=import-outside-toplevel,global-statement
    import time

    from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator

    global _run_calls
    _run_calls += 1
    call = _run_calls % period if period else _run_calls
    if fail_call and call == fail_call:
        raise RuntimeError(f"injected run-time failure (call {_run_calls})")
    if hang_call and call == hang_call:
        time.sleep(hang_sec)
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)


# ------------------------------------------------------------------------- RPC tracker, servers
# A real TVM RPC tracker and servers on this machine, for tests and benchmarks. Each process runs
# in its own process group: TVM's server keeps its listening loop in a child process and serves
# every session in a grandchild, so stopping only the process we started would orphan them.
_RPC_START_POLL_SEC = 0.1
_SERVER_PORT_RANGE = 64


def _free_port(host: str) -> int:
    """A TCP port that is free on ``host`` now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _running(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has not exited, without reaping it (its pid keeps naming its group)."""
    if proc.returncode is not None:
        return False
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    import psutil  # pylint: disable=import-outside-toplevel

    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _stop_group(proc: subprocess.Popen, grace_sec: float) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``grace_sec``, then reap ``proc``.

    ``proc`` leads its group (``start_new_session=True``) and is reaped only at the end, so its
    pid cannot be reused meanwhile and every signal reaches that group only.
    """
    if proc.returncode is not None:  # already reaped: its pid may name someone else now
        return
    if grace_sec > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_sec
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _start_in_own_group(args: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


class RPCServerProcess:
    """One ``tvm.exec.rpc_server`` of a :class:`LocalRPCCluster`, leader of its process group.

    Attributes
    ----------
    index : int
        Its position in ``LocalRPCCluster.servers``.
    proc : subprocess.Popen
        The server's main process.
    log_path : str
        Where its output goes (one ``load_module`` and one ``finish serving`` line a session).
    """

    def __init__(self, index: int, proc: subprocess.Popen, log_path: str) -> None:
        self.index = index
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """Process id of the server, also the id of its process group."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the server's main process still runs."""
        return _running(self.proc)

    def group_alive(self) -> bool:
        """Whether any process of the server's process group still runs (zombies aside)."""
        return _group_alive(self.pid)

    def kill(self) -> None:
        """Kill the server's whole process group at once (SIGKILL), as a crash would."""
        _stop_group(self.proc, grace_sec=0.0)

    def stop(self, grace_sec: float = 5.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``grace_sec``."""
        _stop_group(self.proc, grace_sec)


class LocalRPCCluster:
    """A running tracker and its servers; see :func:`local_rpc_cluster`.

    Attributes
    ----------
    host : str
        The address everything listens on.
    port : int
        The tracker's port.
    key : str
        The key the servers registered.
    tracker_proc : subprocess.Popen
        The tracker's main process, leader of its process group.
    servers : List[RPCServerProcess]
        The servers, in start order.
    log_dir : str
        Where the processes' output goes (``tracker.log``, ``server-<i>.log``).
    """

    def __init__(
        self, host: str, port: int, key: str, tracker_proc: subprocess.Popen, log_dir: str
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.tracker_proc = tracker_proc
        self.servers: list[RPCServerProcess] = []
        self.log_dir = log_dir

    @property
    def tracker(self) -> str:
        """``"HOST:PORT"`` of the tracker, as ``--rpc-tracker`` takes it."""
        return f"{self.host}:{self.port}"

    def status(self):
        """The tracker's :class:`ms_droplet.rpc.TrackerStatus` for this cluster's key."""
        from .rpc import tracker_status  # pylint: disable=import-outside-toplevel

        return tracker_status(self.tracker, self.key)

    def start_server(self, env: dict[str, str] | None = None) -> RPCServerProcess:
        """Start one more server of the key (not waiting for it to register).

        Parameters
        ----------
        env : Optional[Dict[str, str]]
            Its environment (default: this process's).

        Returns
        -------
        server : RPCServerProcess
            Its handle, also appended to ``servers``.
        """
        index = len(self.servers)
        log_path = os.path.join(self.log_dir, f"server-{index}.log")
        # The server takes the first free port of its range: one taken meanwhile is skipped.
        port = _free_port(self.host)
        args = ["tvm.exec.rpc_server", "--host", self.host, "--port", str(port)]
        args += ["--port-end", str(min(port + _SERVER_PORT_RANGE, 65536))]
        args += ["--tracker", self.tracker, "--key", self.key]
        proc = _start_in_own_group(args, log_path, dict(os.environ if env is None else env))
        server = RPCServerProcess(index, proc, log_path)
        self.servers.append(server)
        return server

    def wait_for_servers(self, count: int, timeout_sec: float = 60.0):
        """Wait until the tracker has ``count`` connected and free servers of the key.

        Returns
        -------
        status : TrackerStatus
            The tracker's status once it has them.

        Raises
        ------
        RuntimeError
            After ``timeout_sec``, or at once when the tracker or a server process exited; the
            message ends with the tails of the logs.
        """
        from .rpc import RPCTrackerError, tracker_status  # pylint: disable=import-outside-toplevel

        deadline = time.monotonic() + timeout_sec
        status, last_error = None, ""
        while time.monotonic() < deadline:
            if not _running(self.tracker_proc) or not all(s.alive() for s in self.servers):
                break
            try:
                status = tracker_status(self.tracker, self.key, timeout_sec=2.0)
                if status.connected == count and status.free == count:
                    return status
            except RPCTrackerError as err:
                last_error = str(err)
            time.sleep(_RPC_START_POLL_SEC)
        raise RuntimeError(
            f"the RPC tracker at {self.tracker} did not report {count} free server(s) of key "
            f"{self.key!r} within {timeout_sec:g} s (last status: {status}, {last_error}); "
            f"logs:\n{self.log_tails()}"
        )

    def log_tails(self, lines: int = 15) -> str:
        """The last ``lines`` lines of every process's log."""
        parts = []
        for name in sorted(os.listdir(self.log_dir)):
            with open(os.path.join(self.log_dir, name), encoding="utf-8", errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, grace_sec: float = 5.0) -> None:
        """Stop every server's process group, then the tracker's (SIGTERM, then SIGKILL)."""
        for server in self.servers:
            server.stop(grace_sec)
        _stop_group(self.tracker_proc, grace_sec)


def _start_tracker(
    host: str, log_path: str, env: dict[str, str], timeout_sec: float, attempts: int = 5
) -> tuple[subprocess.Popen, int]:
    """Start a tracker on a free port of ``host`` and wait until it answers; retry on another
    port if the process exits (the port was taken meanwhile)."""
    from .rpc import RPCTrackerError, query_tracker  # pylint: disable=import-outside-toplevel

    for _ in range(attempts):
        port = _free_port(host)
        args = ["tvm.exec.rpc_tracker", "--host", host, "--port", str(port)]
        proc = _start_in_own_group([*args, "--port-end", str(port + 1)], log_path, env)
        deadline = time.monotonic() + timeout_sec
        while time.monotonic() < deadline and _running(proc):
            try:
                query_tracker((host, port), timeout_sec=2.0)
                return proc, port
            except RPCTrackerError:
                time.sleep(_RPC_START_POLL_SEC)
        running = _running(proc)
        _stop_group(proc, grace_sec=0.0)
        if running:
            raise RuntimeError(
                f"the RPC tracker on {host}:{port} did not answer within {timeout_sec:g} s; "
                f"see {log_path}"
            )
    raise RuntimeError(f"the RPC tracker did not start after {attempts} attempts; see {log_path}")


@contextlib.contextmanager
def local_rpc_cluster(
    num_servers: int = 2,
    *,
    key: str = "ms-droplet-test",
    host: str = "127.0.0.1",
    start_timeout_sec: float = 60.0,
    grace_sec: float = 5.0,
    env: dict[str, str] | None = None,
    log_dir: str | None = None,
) -> Iterator[LocalRPCCluster]:
    """Start a real TVM RPC tracker and ``num_servers`` servers on ``host``, on free ports.

    A context manager: it starts ``python -m tvm.exec.rpc_tracker`` and ``python -m
    tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` each in its own process group
    (``start_new_session=True``), waits until the tracker reports every server free, and yields
    a :class:`LocalRPCCluster`. On exit, normal or by an exception, every process group is
    stopped (SIGTERM, SIGKILL after ``grace_sec``); nothing is stopped by name. (A process
    killed with SIGKILL runs no exit code: its tracker and servers would outlive it.)

    Parameters
    ----------
    num_servers : int
        How many servers to start (0 for a tracker alone).
    key : str
        The servers' key.
    host : str
        The address everything listens on.
    start_timeout_sec : float
        How long to wait for the tracker to answer, and then for the servers to register.
    grace_sec : float
        Between SIGTERM and SIGKILL when stopping.
    env : Optional[Dict[str, str]]
        Environment of the processes (default: this process's).
    log_dir : Optional[str]
        Where the processes' output goes; default a temporary directory, removed on exit.

    Yields
    ------
    cluster : LocalRPCCluster
        Addresses, key and a handle per server (``cluster.servers[i].kill()``).
    """
    own_log_dir = log_dir is None
    logs = tempfile.mkdtemp(prefix="ms_droplet_rpc_") if own_log_dir else log_dir
    os.makedirs(logs, exist_ok=True)
    environ = dict(os.environ if env is None else env)
    cluster = None
    try:
        tracker_proc, port = _start_tracker(
            host, os.path.join(logs, "tracker.log"), environ, start_timeout_sec
        )
        cluster = LocalRPCCluster(host, port, key, tracker_proc, logs)
        for _ in range(num_servers):
            cluster.start_server(environ)
        cluster.wait_for_servers(num_servers, start_timeout_sec)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop(grace_sec)
        if own_log_dir:
            shutil.rmtree(logs, ignore_errors=True)
