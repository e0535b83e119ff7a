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
"""Measuring through TVM's RPC tracker: parse the address, check the tracker, make the runner.

A tuning run measures its candidates on remote devices (boards, GPUs, other machines) through
TVM's RPC tracker: every device runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key
KEY``, and MetaSchedule's ``RPCRunner`` asks the tracker for a free server of that key for each
candidate, uploads the artifact, which the server links with ``g++`` and loads, and times it
there. :func:`rpc_runner` makes a runner after checking, within a few seconds, that the tracker
answers and has a server of the key: by default an
:class:`ms_droplet.runner.InterleavedRPCRunner`, which opens one session per server and batch
and times the batch's candidates there in interleaved rounds (as the default local runner),
else (``interleaved=False``) an ``RPCRunner`` with the time limits below.

How ``RPCRunner`` behaves (TVM 0.27; each point seen on a real tracker, most in
``tests/test_rpc.py``; ``docs/rpc.md`` says how the interleaved runner meets the same faults)
-----------------------------------------------------------------------------------------------
* Each candidate is one RPC session: a worker process of the runner asks the tracker for a
  server, which serves that one session and then offers itself again. A server serves one
  session at a time, so ``max_workers`` (parallel sessions) beyond the number of servers only
  queues requests at the tracker, and fewer leaves servers idle. By default :func:`rpc_runner`
  opens as many parallel sessions as the tracker has servers of the key when it is made.
* ``session_timeout_sec`` is enforced by the *server*: it ends a longer session and the
  candidate comes back as an error (``RPCRunner: An exception occurred`` ...
  ``RPCSessionTimeoutError: Your 3.0s session has expired``).
* A server that dies (its process group killed) during a session: the candidate of that
  session comes back at once as an error (``RPCRunner: An exception occurred``), is recorded as
  failed (``run_secs`` 1e10) and is not measured again; nothing is retried. The tracker drops the
  server when its connection closes and later candidates go to the servers left.
* A server that stops answering without closing its connections (a frozen board; seen with
  SIGSTOP) holds its session forever with ``RPCRunner`` as TVM makes it: its worker pool has no
  time limit, and the server that should end the session is the one that froze (the run was
  still waiting 178 s later). Likewise a request for a key that no server has (any more) waits
  at the tracker forever. :func:`rpc_runner` therefore gives the pool a limit,
  ``candidate_timeout_sec`` (default ``session_timeout_sec`` + :data:`CONNECT_MARGIN_SEC`);
  a candidate that exceeds it is recorded as failed with ``RPCRunner: Timeout, killed after
  <session_timeout_sec> seconds`` (the message names the session timeout, not this limit).
* An unreachable tracker: ``RPCRunner`` fails each candidate after ``session_timeout_sec``
  (``Unable to connect to the tracker``); :func:`rpc_runner` refuses to start instead.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONNECT_MARGIN_SEC",
    "DEFAULT_QUERY_TIMEOUT_SEC",
    "DEFAULT_SESSION_TIMEOUT_SEC",
    "RPCTrackerError",
    "TrackerAddress",
    "TrackerStatus",
    "check_tracker",
    "parse_tracker",
    "query_tracker",
    "rpc_runner",
    "tracker_status",
]

# MetaSchedule's LocalRunner allows 30 s a candidate; a session also uploads and links (g++).
DEFAULT_SESSION_TIMEOUT_SEC = 30.0
# How long a tracker query (connect, handshake, answer) may take before the tracker is
# declared unreachable.
DEFAULT_QUERY_TIMEOUT_SEC = 5.0
# Added to the session timeout for the runner's own limit on a candidate: the time to reach the
# tracker, wait for a free server and connect to it, which the server's timeout does not cover.
CONNECT_MARGIN_SEC = 30.0

# From tvm.rpc.base (TVM 0.27): the tracker's handshake and the two message codes used here.
_TRACKER_MAGIC = 0x2F271
_SUCCESS = 0
_SUMMARY = 6
_MAX_MESSAGE_BYTES = 64 << 20

_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d+)$")


class RPCTrackerError(RuntimeError):
    """The RPC tracker cannot be reached, does not answer like a tracker, or has no server of
    the requested key."""


@dataclass(frozen=True)
class TrackerAddress:
    """Where a ``tvm.exec.rpc_tracker`` listens."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class TrackerStatus:
    """What the tracker reports about the servers of one key.

    Attributes
    ----------
    tracker : TrackerAddress
        The tracker asked.
    key : str
        The key asked about.
    connected : int
        Servers of the key connected to the tracker, busy or not.
    free : int
        Of those, the servers waiting for a session.
    pending : int
        Session requests for the key waiting for a free server.
    keys : dict[str, int]
        Every key with connected servers, and how many.
    """

    tracker: TrackerAddress
    key: str
    connected: int
    free: int
    pending: int
    keys: dict[str, int]


def parse_tracker(text: str, option: str = "--rpc-tracker") -> TrackerAddress:
    """Parse ``HOST:PORT`` (``[V6ADDR]:PORT`` for an IPv6 address).

    Parameters
    ----------
    text : str
        The address as given.
    option : str
        The option's name, for the message.

    Returns
    -------
    address : TrackerAddress
        The host and port.

    Raises
    ------
    ValueError
        When ``text`` is not ``HOST:PORT`` with a port from 1 to 65535; the message names the
        option, the rule, the value received and an example.
    """
    match = _HOST_PORT.match(text.strip()) if isinstance(text, str) else None
    port = int(match.group("port")) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ValueError(
            f"{option} must be HOST:PORT, the address of a `python -m tvm.exec.rpc_tracker`, "
            f"with a port from 1 to 65535, got {text!r}; e.g. {option} 127.0.0.1:9190 "
            f"(an IPv6 address in brackets: [::1]:9190)"
        )
    return TrackerAddress(match.group("ipv6") or match.group("host"), port)


def _address(tracker: str | TrackerAddress | tuple[str, int]) -> TrackerAddress:
    if isinstance(tracker, TrackerAddress):
        return tracker
    if isinstance(tracker, tuple) and len(tracker) == 2:
        return parse_tracker(f"{tracker[0]}:{tracker[1]}")
    return parse_tracker(tracker)


def _positive_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_key(key: str, option: str = "--rpc-key (key)") -> str:
    # The server matches a session by the first whitespace-separated word of its header.
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise ValueError(
            f"{option} must be a non-empty key without spaces, the --key given to "
            f"`python -m tvm.exec.rpc_server`, got {key!r}; e.g. {option} rasp4"
        )
    return key


def _recv_exact(sock: socket.socket, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = sock.recv(nbytes - len(data))
        if not chunk:
            raise ConnectionError("the connection closed before the answer was complete")
        data += chunk
    return bytes(data)


def query_tracker(
    tracker: str | TrackerAddress | tuple[str, int],
    *,
    timeout_sec: float = DEFAULT_QUERY_TIMEOUT_SEC,
) -> dict[str, Any]:
    """Ask the tracker for its summary, within ``timeout_sec``.

    This is the answer ``tvm.rpc.connect_tracker(host, port).summary()`` returns, without its
    60 s of connection retries: ``{"queue_info": {key: {"free": n, "pending": n}},
    "server_info": [{"key": "server:KEY", "addr": [host, port]}, ...]}``.

    Parameters
    ----------
    tracker : Union[str, TrackerAddress, Tuple[str, int]]
        ``"HOST:PORT"`` or the parsed address.
    timeout_sec : float
        Limit for connecting and for each answer.

    Returns
    -------
    summary : Dict[str, Any]
        The tracker's summary.

    Raises
    ------
    RPCTrackerError
        When nothing answers at that address in time, or what answers is not a tracker.
    """
    address = _address(tracker)
    advice = (
        f"start one with `python -m tvm.exec.rpc_tracker --host {address.host} --port "
        f"{address.port}`, or check the address; "
        f"`python -m tvm.exec.query_rpc_tracker --host {address.host} --port {address.port}` "
        "shows what a tracker has"
    )
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_sec) as sock:
            sock.settimeout(timeout_sec)
            sock.sendall(struct.pack("<i", _TRACKER_MAGIC))
            (magic,) = struct.unpack("<i", _recv_exact(sock, 4))
            if magic != _TRACKER_MAGIC:
                raise RPCTrackerError(f"{address} answered, but not as a TVM RPC tracker; {advice}")
            message = json.dumps([_SUMMARY]).encode("utf-8")
            sock.sendall(struct.pack("<i", len(message)) + message)
            (size,) = struct.unpack("<i", _recv_exact(sock, 4))
            if not 0 < size <= _MAX_MESSAGE_BYTES:
                raise RPCTrackerError(f"{address} sent a malformed answer; {advice}")
            answer = json.loads(_recv_exact(sock, size).decode("utf-8"))
    except (OSError, ValueError) as err:  # socket.timeout is an OSError
        reason = "no answer" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
        raise RPCTrackerError(
            f"cannot reach the RPC tracker at {address} within {timeout_sec:g} s ({reason}); "
            f"{advice}"
        ) from None
    if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == _SUCCESS):
        raise RPCTrackerError(f"the RPC tracker at {address} refused its summary: {answer!r}")
    return answer[1]


def tracker_status(
    tracker: str | TrackerAddress | tuple[str, int],
    key: str,
    *,
    timeout_sec: float = DEFAULT_QUERY_TIMEOUT_SEC,
) -> TrackerStatus:
    """How many servers of ``key`` the tracker has, connected and free.

    Parameters
    ----------
    tracker : Union[str, TrackerAddress, Tuple[str, int]]
        ``"HOST:PORT"`` or the parsed address.
    key : str
        The servers' ``--key``.
    timeout_sec : float
        Limit for the query.

    Returns
    -------
    status : TrackerStatus
        Counts for the key, and the servers of every key.

    Raises
    ------
    RPCTrackerError
        As :func:`query_tracker`.
    """
    address = _address(tracker)
    summary = query_tracker(address, timeout_sec=timeout_sec)
    keys: dict[str, int] = {}
    for info in summary.get("server_info", []):
        name = str(info.get("key", ""))
        if name.startswith("server:"):
            name = name[len("server:") :]
            keys[name] = keys.get(name, 0) + 1
    queue = summary.get("queue_info", {}).get(key, {})
    return TrackerStatus(
        tracker=address,
        key=key,
        connected=keys.get(key, 0),
        free=int(queue.get("free", 0)),
        pending=int(queue.get("pending", 0)),
        keys=keys,
    )


def check_tracker(
    tracker: str | TrackerAddress | tuple[str, int],
    key: str,
    *,
    min_servers: int = 1,
    timeout_sec: float = DEFAULT_QUERY_TIMEOUT_SEC,
) -> TrackerStatus:
    """Check that the tracker answers and has at least ``min_servers`` servers of ``key``.

    Parameters
    ----------
    tracker, key, timeout_sec
        As in :func:`tracker_status`.
    min_servers : int
        How many servers of the key must be connected.

    Returns
    -------
    status : TrackerStatus
        What the tracker reported.

    Raises
    ------
    RPCTrackerError
        When the tracker cannot be reached, or has fewer servers of the key; the message lists
        the keys it has and how to start a server.
    """
    address = _address(tracker)
    status = tracker_status(address, _check_key(key), timeout_sec=timeout_sec)
    if status.connected < min_servers:
        others = (
            ", ".join(f"{name!r} ({count})" for name, count in sorted(status.keys.items()))
            or "none"
        )
        raise RPCTrackerError(
            f"the RPC tracker at {address} has {status.connected} server(s) of key {key!r}, "
            f"{min_servers} needed (keys it has: {others}); start one on each device with "
            f"`python -m tvm.exec.rpc_server --tracker {address} --key {key}`, or give the "
            "key they were started with"
        )
    return status


def rpc_runner(
    tracker: str | TrackerAddress | tuple[str, int],
    key: str,
    *,
    session_timeout_sec: float = DEFAULT_SESSION_TIMEOUT_SEC,
    max_workers: int | None = None,
    evaluator_config=None,
    candidate_timeout_sec: float | None = None,
    session_priority: int = 1,
    check: bool = True,
    query_timeout_sec: float = DEFAULT_QUERY_TIMEOUT_SEC,
    interleaved: bool = True,
):
    """A runner that measures on the tracker's servers of ``key``.

    By default an :class:`ms_droplet.runner.InterleavedRPCRunner`: each batch is split among one
    session per server and timed in interleaved rounds there, as the default local runner does
    (``docs/benchmarks/fidelity.md``); ``interleaved=False`` gives MetaSchedule's ``RPCRunner``
    (one session per candidate, its timings back to back), with the same time limits.

    Parameters
    ----------
    tracker : Union[str, TrackerAddress, Tuple[str, int]]
        ``"HOST:PORT"`` of the tracker (``--rpc-tracker``), or the parsed address.
    key : str
        The servers' ``--key`` (``--rpc-key``).
    session_timeout_sec : float
        The longest one candidate's session may last on a server (upload, link, load, allocate,
        time), rounded up to whole seconds; the server ends a longer one and the candidate is
        recorded as failed (``--rpc-session-timeout``).
    max_workers : Optional[int]
        Parallel sessions (``--rpc-parallel``). Default: the number of servers of the key
        connected to the tracker now (1 when ``check`` is False).
    evaluator_config : Optional[EvaluatorConfig]
        How each candidate is timed. Default: ``ms_droplet.measure.default_evaluator_config()``,
        as for local measurement.
    candidate_timeout_sec : Optional[float]
        The runner's own limit on one candidate, from its request to the tracker to its result,
        after which the candidate is recorded as failed (``...: Timeout``): what ends the
        session of a server that froze, which cannot end it itself. Must exceed
        ``session_timeout_sec``: the difference is the time allowed to reach a free server.
        Default: ``session_timeout_sec`` + :data:`CONNECT_MARGIN_SEC`.
    session_priority : int
        Priority of this run's requests at the tracker (higher first).
    check : bool
        Query the tracker first and raise at once if it is unreachable or has no server of
        ``key``.
    query_timeout_sec : float
        Limit for that query.
    interleaved : bool
        Time each batch in interleaved rounds on the servers (default), or candidate by
        candidate with MetaSchedule's ``RPCRunner``.

    Returns
    -------
    runner : InterleavedRPCRunner or RPCRunner
        Pass it as ``runner=`` to ``tune_tir``, ``tune_relax``, ``tune_tasks`` or ``tune_model``.

    Raises
    ------
    ValueError
        When an argument is out of range (the message names it).
    RPCTrackerError
        With ``check``: the tracker cannot be reached or has no server of ``key``.
    """
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    from .interrupt import ignore_interrupts
    from .measure import default_evaluator_config
    from .runner import InterleavedRPCRunner, timed_rpc_runner

    # pylint: enable=import-outside-toplevel
    address = _address(tracker)
    _check_key(key)
    if not _positive_seconds(session_timeout_sec):
        raise ValueError(
            f"--rpc-session-timeout (session_timeout_sec) must be a number of seconds > 0, got "
            f"{session_timeout_sec!r}; give e.g. {DEFAULT_SESSION_TIMEOUT_SEC:g}, or leave it out "
            "for that default"
        )
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(
            f"--rpc-parallel (max_workers) must be an integer >= 1, got {max_workers!r}; give the "
            "number of servers to use at once, or leave it out for all the tracker has of the key"
        )
    session_timeout = int(math.ceil(session_timeout_sec))
    if candidate_timeout_sec is None:
        candidate_timeout_sec = session_timeout + CONNECT_MARGIN_SEC
    if not _positive_seconds(candidate_timeout_sec) or candidate_timeout_sec <= session_timeout:
        raise ValueError(
            f"candidate_timeout_sec must be a number of seconds > session_timeout_sec "
            f"({session_timeout}), got {candidate_timeout_sec!r}; leave it out for "
            f"session_timeout_sec + {CONNECT_MARGIN_SEC:g}"
        )
    if check:
        status = check_tracker(address, key, timeout_sec=query_timeout_sec)
        if max_workers is None:
            max_workers = status.connected
    if max_workers is None:
        max_workers = 1
    rpc_config = RPCConfig(
        tracker_host=address.host,
        tracker_port=address.port,
        tracker_key=key,
        session_priority=session_priority,
        # The server's session option is sent as text; a whole number keeps it readable.
        session_timeout_sec=session_timeout,
    )
    evaluator_config = evaluator_config or default_evaluator_config()
    # Ctrl-C reaches the runner's workers too; the tuning process decides when to stop.
    if interleaved:
        return InterleavedRPCRunner(
            rpc_config,
            evaluator_config,
            max_workers=max_workers,
            connect_timeout_sec=candidate_timeout_sec - session_timeout,
            initializer=ignore_interrupts,
        )
    return timed_rpc_runner(
        rpc_config,
        evaluator_config,
        max_workers,
        candidate_timeout_sec,
        initializer=ignore_interrupts,
    )
