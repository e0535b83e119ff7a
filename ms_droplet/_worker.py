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
"""Warm worker processes that run one pickled call at a time, with a timeout kept by the parent.

Used by :class:`ms_droplet.FastBuilder` (``ms_droplet/builder.py``) for its builds; nothing here
knows TVM.

Worker processes
----------------
Workers are ``python -c`` subprocesses (like TVM's ``PopenWorker``) that talk to the tuning
process over a pipe, one candidate at a time. Unlike ``multiprocessing`` with the ``spawn`` or
``forkserver`` context, they never re-import the user's ``__main__`` (a tuning script without an
``if __name__ == "__main__"`` guard would run again in every worker). They receive the parent's
``sys.path``, so build functions are pickled (with ``cloudpickle``) by reference as usual.
``concurrent.futures.ProcessPoolExecutor`` was not used either: it has no per-task timeout, and
one worker that dies breaks the whole pool (every pending future fails). TVM's
``PopenPoolExecutor`` could be kept open, but it arms its timeout *inside* the worker, where the
timer cannot fire while a native call holds the GIL (seen: a 2 s timeout answered after 21 s).
Here the tuning process enforces the timeout. A worker that times out or dies is killed with its
whole process group and replaced; the candidate gets ``BuilderResult(None, error_msg)`` and the
batch goes on. Workers are recycled after ``max_builds_per_worker`` builds or when their resident
memory exceeds ``max_worker_rss_mb``. ``shutdown()``, the end of a ``with`` block, garbage
collection, an exception (``KeyboardInterrupt``) during ``build`` and interpreter exit all stop
them; a worker whose parent died exits on its own (at once if idle, else within a second).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from typing import Any, Literal

import cloudpickle
import psutil


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(fd: int) -> None:
    """Entry point of a worker process: serve ``(fn, args)`` requests until end of input."""
    # Ctrl-C reaches the whole process group: the tuning process decides when to stop, and
    # this worker is ended by it (or by _watch_parent), not mid-candidate.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    parent_pid = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        sys.path[:] = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            func, args = cloudpickle.loads(request)
            reply = ("ok", func(*args))
        except Exception:  # noqa: BLE001 - every failure goes back to the parent as text
            reply = ("error", traceback.format_exc())
        try:
            data = cloudpickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an unpicklable result is the candidate's error
            data = cloudpickle.dumps(("error", traceback.format_exc()))
        try:
            conn.send_bytes(data)
        except OSError:
            return


def worker_env() -> dict[str, str]:
    """This process's environment for a new worker, with this package's root first on
    ``PYTHONPATH`` (the worker imports ``ms_droplet._worker`` before it gets ``sys.path``)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


@dataclass
class _Outcome:
    """What one request to a worker came to."""

    status: Literal["ok", "error", "timeout", "died"]
    value: Any = None


class _Worker:
    """One worker process and its end of the pipe (used by one thread at a time)."""

    def __init__(self, env: dict[str, str]) -> None:
        parent_end, child_end = Pipe(duplex=True)
        fd = child_end.fileno()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from ms_droplet._worker import _worker_main; _worker_main({fd})",
            ],
            pass_fds=(fd,),
            env=env,
            start_new_session=True,  # its own process group: a kill reaches its children too
        )
        child_end.close()
        self.conn: Connection | None = parent_end
        self.ready = False
        self.builds = 0
        parent_end.send_bytes(pickle.dumps(list(sys.path)))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, func: Callable, args: tuple, timeout: float | None) -> _Outcome:
        """Run ``func(*args)`` in the worker; kill the worker if it exceeds ``timeout``."""
        assert self.conn is not None, "the worker was closed"
        data = cloudpickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.conn.send_bytes(data)
            if not self.conn.poll(timeout):
                self.kill()
                return _Outcome("timeout", timeout)
            status, value = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return _Outcome("died", self.kill())
        return _Outcome(status, value)

    def alive(self) -> bool:
        return self.conn is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def kill(self) -> int | None:
        """Kill the worker and everything it started; return its exit code."""
        # Until it is reaped, its pid names its process group (a zombie's pid is not reused):
        # kill the whole group, even if the worker already died, since its children may live on.
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        code = self.proc.wait()
        # Close after the kill, so that a thread waiting on the pipe sees the end of input.
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code

    def close(self, grace_sec: float = 2.0) -> None:
        """Let an idle worker exit by itself (end of input), kill it if it does not."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        try:
            self.proc.wait(grace_sec)
        except subprocess.TimeoutExpired:
            self.kill()
