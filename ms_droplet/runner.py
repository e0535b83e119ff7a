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
"""A local runner that times each batch in interleaved rounds.

MetaSchedule's ``LocalRunner`` times the candidates of a batch one after the other: all of a
candidate's ``repeat`` timings are taken back to back, within some 60 ms. On the CPUs measured
in ``docs/benchmarks/fidelity.md`` the machine's speed changes in episodes of about a second
(everything run then is 1.4-1.9x slower), so a candidate timed during one gets all of its
timings slow, and its record misleads the search. :class:`InterleavedRunner` loads the whole
batch in its worker and takes the same timings in rounds, A B C ... A B C ...: each candidate's
timings are spread over the batch's time, and an episode touches a share of each instead of
all of a few. Same timings; the records hold the same ``repeat`` samples.

Time limits are ``LocalRunner``'s: a candidate whose measurement would take longer than
``timeout_sec`` fails with a timeout, and costs about ``timeout_sec`` at most. Each candidate is
first loaded and called once on its own, under that limit (a call that hangs is killed there,
alone); one whose single call shows that its timings would run past the limit fails then,
without being timed. The others are timed together in rounds, each stopped once its own timings
have taken ``timeout_sec``.

The batch's worker is a process of its own, its time limits kept by the tuning process (a timer
inside the worker could not fire while a kernel holds the GIL). If it fails as a whole during
the rounds (a candidate crashed it, or the rounds ran past ``timeout_sec`` per candidate), the
batch is measured again candidate by candidate by a ``LocalRunner`` with the same settings, so
that one bad candidate fails alone. An error of one candidate inside the worker (a module that
does not load, a kernel that raises) fails that candidate only.

Through an RPC tracker, :class:`InterleavedRPCRunner` does the same on the servers: it splits a
batch among one session per server, uploads and calls each candidate once in its session (a
candidate that hangs the server fails alone, the others go on in a new session), then times the
rest in rounds there; a session that fails as a whole is measured again one candidate per
session by MetaSchedule's ``RPCRunner``.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    LocalRunner,
    PyRunner,
    RPCConfig,
    RPCRunner,
    RunnerFuture,
    RunnerInput,
)
from tvm.s_tir.meta_schedule.runner.local_runner import (
    LocalRunnerFuture,
    default_alloc_argument,
    default_cleanup,
)
from tvm.s_tir.meta_schedule.runner.rpc_runner import (
    default_alloc_argument as rpc_alloc_argument,
)
from tvm.s_tir.meta_schedule.utils import get_global_func_with_default_on_worker
from tvm.support.popen_pool import PopenPoolExecutor

from ._worker import _Outcome, _Worker, worker_env

__all__ = ["InterleavedRPCRunner", "InterleavedRunner", "time_in_rounds", "timed_rpc_runner"]

# Error headlines. A runner's error message names the runner first; "Timeout" on the headline
# is how ms_droplet (and a reader) tells a timeout from a failure (ms_droplet._state).
EXCEPTION = "An exception occurred"
TIMEOUT = "Timeout"


def call_once(
    f_alloc_argument: str | Callable | None,
    f_cleanup: str | Callable | None,
    item: tuple[str, str, tuple],
) -> float:
    """Load one candidate and call it once; return the call's seconds (a first, cold call).

    Parameters
    ----------
    f_alloc_argument, f_cleanup : str or callable or None
        As in ``LocalRunner`` (``None``: its defaults).
    item : tuple
        ``(artifact path, device type, args_info as JSON)``.

    Returns
    -------
    float
    """
    alloc = get_global_func_with_default_on_worker(f_alloc_argument, default_alloc_argument)
    cleanup = get_global_func_with_default_on_worker(f_cleanup, default_cleanup)
    try:
        rt_mod, device, args = _load(alloc, item)
        func = rt_mod[rt_mod.entry_name]
        device.sync()
        start = time.perf_counter()
        func(*args)
        device.sync()
        return time.perf_counter() - start
    finally:
        cleanup()


def _load(alloc: Callable, item: tuple[str, str, tuple]) -> tuple:
    """``(module, device, arguments)`` of one candidate ``(artifact path, device type,
    args_info as JSON)``, its arguments allocated once by ``alloc``."""
    artifact_path, device_type, args_info = item
    rt_mod = tvm.runtime.load_module(artifact_path)
    device = tvm.runtime.device(device_type, 0)
    (args,) = alloc(device, args_info, 1)
    return rt_mod, device, args


def timings_need(call_secs: float, evaluator_config: EvaluatorConfig) -> float:
    """About how long ``evaluator_config``'s timings of a kernel take, from one call's seconds.

    ``repeat`` timings of a warm-up call and ``number`` calls each, ``number`` grown until a
    timing lasts ``min_repeat_ms`` (what ``time_evaluator`` does).

    Parameters
    ----------
    call_secs : float
    evaluator_config : EvaluatorConfig

    Returns
    -------
    float
        Seconds.
    """
    timing = max(evaluator_config.number * call_secs, evaluator_config.min_repeat_ms / 1e3)
    return evaluator_config.repeat * (call_secs + timing)


def time_in_rounds(
    f_alloc_argument: str | Callable | None,
    f_cleanup: str | Callable | None,
    evaluator_config: EvaluatorConfig,
    inputs: list[tuple[str, str, tuple]],
    timeout_sec: float | None = None,
) -> list[tuple[list[float] | None, str | None]]:
    """Load every candidate, then time them in ``evaluator_config.repeat`` rounds.

    What :class:`InterleavedRunner`'s worker runs for a batch; callable in any process.

    Parameters
    ----------
    f_alloc_argument, f_cleanup : str or callable or None
        As in ``LocalRunner`` (``None``: its defaults).
    evaluator_config : EvaluatorConfig
    inputs : list of tuple
        ``(artifact path, device type, args_info as JSON)`` per candidate.
    timeout_sec : float, optional
        A candidate whose timings have taken longer than this in all (checked after each)
        fails with a timeout; None: no limit.

    Returns
    -------
    list of tuple
        Per input, ``(timings in seconds, None)`` or ``(None, error message)``; a message's
        first line is ``"An exception occurred"`` or begins with ``"Timeout"``.
    """
    alloc = get_global_func_with_default_on_worker(f_alloc_argument, default_alloc_argument)
    cleanup = get_global_func_with_default_on_worker(f_cleanup, default_cleanup)
    errors: dict[int, str] = {}
    loaded = {}
    try:
        for i, item in enumerate(inputs):
            try:
                loaded[i] = _load(alloc, item)
            except Exception:  # noqa: BLE001 - the candidate's error, as LocalRunner reports it
                errors[i] = f"{EXCEPTION}\nloading {item[0]}:\n{traceback.format_exc()}"
        return _in_rounds(
            loaded, errors, [item[0] for item in inputs], evaluator_config, timeout_sec
        )
    finally:
        cleanup()


def _in_rounds(
    loaded: dict[int, tuple],
    errors: dict[int, str],
    paths: list[str],
    evaluator_config: EvaluatorConfig,
    timeout_sec: float | None,
) -> list[tuple[list[float] | None, str | None]]:
    """Time the ``loaded`` candidates (index -> ``(module, device, arguments)``, local or
    remote) in rounds; a candidate in ``errors`` (index -> message) has failed already."""
    timers = {}
    for i, (rt_mod, device, args) in loaded.items():
        try:
            timer = rt_mod.time_evaluator(
                func_name=rt_mod.entry_name,
                dev=device,
                number=evaluator_config.number,
                repeat=1,
                min_repeat_ms=evaluator_config.min_repeat_ms,
                f_preproc="cache_flush_cpu_non_first_arg"
                if evaluator_config.enable_cpu_cache_flush
                else "",
            )
            timers[i] = (timer, device, args)
        except Exception:  # noqa: BLE001 - the candidate's error, as LocalRunner reports it
            errors[i] = f"{EXCEPTION}\nloading {paths[i]}:\n{traceback.format_exc()}"
    samples: dict[int, list[float]] = {i: [] for i in timers}
    spent = dict.fromkeys(timers, 0.0)
    for _ in range(evaluator_config.repeat):
        for i in list(timers):
            timer, device, args = timers[i]
            start = time.perf_counter()
            try:
                device.sync()
                samples[i].append(float(timer(*args).mean))
            except Exception:  # noqa: BLE001 - this candidate fails, the others go on
                errors[i] = f"{EXCEPTION}\ntiming {paths[i]}:\n{traceback.format_exc()}"
                del timers[i]
                continue
            spent[i] += time.perf_counter() - start
            if timeout_sec is not None and spent[i] > timeout_sec:
                errors[i] = (
                    f"{TIMEOUT}: its timings took {spent[i]:.1f} s, past timeout_sec="
                    f"{timeout_sec:g}, after {len(samples[i])} of "
                    f"{evaluator_config.repeat} rounds\n{paths[i]}"
                )
                del timers[i]
    return [(None, errors[i]) if i in errors else (samples[i], None) for i in range(len(paths))]


# ------------------------------------------------------------------ on an RPC server
# In an InterleavedRPCRunner's worker process: its session with a server, and the candidates
# uploaded in that session (artifact path -> (remote module, remote device, arguments)).
_REMOTE: dict[str, Any] = {}


def _remote_load(rpc_config: RPCConfig, f_alloc_argument, item: tuple[str, str, tuple]) -> tuple:
    """Upload one candidate to this worker's session (opened first if need be), load it there
    and allocate its arguments there; kept for the session's later calls."""
    if "session" not in _REMOTE:
        _REMOTE.update(session=rpc_config.connect_server(), loaded={})
    session, loaded = _REMOTE["session"], _REMOTE["loaded"]
    artifact_path, device_type, args_info = item
    if artifact_path not in loaded:
        # Artifacts of one batch may share a file name (each in its own folder): number them.
        remote_path = f"{len(loaded)}_{os.path.basename(artifact_path)}"
        session.upload(artifact_path, remote_path)
        rt_mod = session.load_module(remote_path)
        device = session.device(device_type, 0)
        alloc = get_global_func_with_default_on_worker(f_alloc_argument, rpc_alloc_argument)
        (args,) = alloc(session, device, args_info, 1)
        loaded[artifact_path] = (rt_mod, device, args)
    return loaded[artifact_path]


def _remote_alive(device_type: str) -> bool:
    """Whether this worker's session still answers (a round trip to its server)."""
    try:
        # An RPC device's sync is a call on the server (``exist`` is answered locally).
        _REMOTE["session"].device(device_type, 0).sync()
    except Exception:  # noqa: BLE001 - any failure means the session is gone
        return False
    return True


def remote_call_once(
    rpc_config: RPCConfig, f_alloc_argument: str | Callable | None, item: tuple[str, str, tuple]
) -> float:
    """:func:`call_once` on the server of this worker's session: upload, load and time one call
    (the server's own timer, after a warm-up call)."""
    try:
        rt_mod, device, args = _remote_load(rpc_config, f_alloc_argument, item)
        timer = rt_mod.time_evaluator(rt_mod.entry_name, device, number=1, repeat=1)
        return float(timer(*args).mean)
    except Exception:
        # A module that does not load leaves the session usable; a server that died does
        # not: then the next call opens a new one.
        if "session" in _REMOTE and not _remote_alive(item[1]):
            _REMOTE.clear()
        raise


def remote_time_in_rounds(
    rpc_config: RPCConfig,
    f_alloc_argument: str | Callable | None,
    evaluator_config: EvaluatorConfig,
    inputs: list[tuple[str, str, tuple]],
    timeout_sec: float | None = None,
) -> list[tuple[list[float] | None, str | None]]:
    """:func:`time_in_rounds` on the server of this worker's session (a candidate loaded there
    by :func:`remote_call_once` is not uploaded again), then end the session (the server deletes
    its files).

    Raises
    ------
    RuntimeError
        When the session ended during the rounds (its server died): its candidates' errors
        would be the server's, not theirs.
    """
    errors: dict[int, str] = {}
    loaded = {}
    try:
        for i, item in enumerate(inputs):
            try:
                loaded[i] = _remote_load(rpc_config, f_alloc_argument, item)
            except Exception:  # noqa: BLE001 - the candidate's error
                errors[i] = f"{EXCEPTION}\nloading {item[0]}:\n{traceback.format_exc()}"
        paths = [item[0] for item in inputs]
        results = _in_rounds(loaded, errors, paths, evaluator_config, timeout_sec)
        if errors and not ("session" in _REMOTE and _remote_alive(inputs[0][1])):
            raise RuntimeError(
                "the RPC session ended during the rounds; first error:\n"
                + next(iter(errors.values()))
            )
        return results
    finally:
        loaded.clear()
        _REMOTE.clear()


# ------------------------------------------------------------------ the runners
class _Lane:
    """A worker process that measures candidates one call at a time, its time limits kept by
    the tuning process; started when first needed, and again after it was killed."""

    def __init__(self, initializer: Callable[[], None] | None, start_timeout: float) -> None:
        self.initializer = initializer
        self.start_timeout = start_timeout
        self.worker: _Worker | None = None

    def call(self, func: Callable, args: tuple, timeout: float) -> _Outcome:
        """``func(*args)`` in the worker, killed past ``timeout``; a worker that timed out or
        died is dropped, to be started again at the next call."""
        if self.worker is None or not self.worker.alive():
            self.worker = _Worker(worker_env())
            if self.initializer is not None:
                started = self.worker.call(self.initializer, (), self.start_timeout)
                if started.status != "ok":
                    self.worker.kill()
                    self.worker = None
                    return started
        try:
            outcome = self.worker.call(func, args, timeout)
        except BaseException:  # Ctrl-C while it runs: its reply would answer the next call
            self.worker.kill()
            self.worker = None
            raise
        if outcome.status in ("timeout", "died"):
            self.worker = None  # killed by call()
        return outcome

    def close(self) -> None:
        """Stop the worker, if one runs (a later call starts a new one)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None


Result = tuple[list[float] | None, str | None]


def _measure(
    lane: _Lane,
    inputs: list[tuple[str, str, tuple]],
    first: Callable[[tuple], tuple[Callable, tuple]],
    rounds: Callable[[list[tuple]], tuple[Callable, tuple]],
    evaluator_config: EvaluatorConfig,
    timeout_sec: float,
    first_limit: float,
    rounds_limit: Callable[[int], float],
) -> tuple[list[Result | None], list[int]]:
    """Measure ``inputs`` in ``lane``: each candidate's first call alone (``first(item)``: the
    function and arguments, killed past ``first_limit``), then the rest in rounds
    (``rounds(items)``, killed past ``rounds_limit(len(items))``). Returns the results, with
    None for the candidates whose rounds failed as a whole, and those candidates' indices."""
    results: list[Result | None] = [None] * len(inputs)
    for i, item in enumerate(inputs):
        outcome = lane.call(*first(item), first_limit)
        if outcome.status == "timeout":
            results[i] = (
                None,
                f"{TIMEOUT}, killed after {first_limit:g} seconds in its first call\n{item[0]}",
            )
        elif outcome.status == "died":
            results[i] = (
                None,
                f"{EXCEPTION}\nits worker died (exit code {outcome.value}) "
                f"in its first call\n{item[0]}",
            )
        elif outcome.status == "error":
            results[i] = (None, f"{EXCEPTION}\nloading or calling {item[0]}:\n{outcome.value}")
        elif outcome.value + timings_need(outcome.value, evaluator_config) > timeout_sec:
            results[i] = (
                None,
                f"{TIMEOUT}: its first call took {outcome.value:.3g} s, so its "
                f"timings would run past timeout_sec={timeout_sec:g}\n{item[0]}",
            )
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        timed = lane.call(*rounds([inputs[i] for i in todo]), rounds_limit(len(todo)))
        if timed.status != "ok":
            return results, todo
        for i, result in zip(todo, timed.value):
            results[i] = result
    return results, []


def _futures(
    name: str,
    results: list[Result | None],
    again: dict[int, RunnerFuture],
) -> list[RunnerFuture]:
    """One finished future per candidate: its result (errors named ``"<name>: ..."``), or the
    future of its measurement ``again`` one by one."""
    done = iter(batch_futures([r for r in results if r is not None], name))
    return [again[i] if i in again else next(done) for i in range(len(results))]


@derived_object
class InterleavedRunner(PyRunner):
    """A ``LocalRunner`` that times each batch in interleaved rounds (see the module docstring).

    Parameters
    ----------
    timeout_sec : float
        Time limit per candidate, as ``LocalRunner``'s: for its first call alone, and for its
        timings (a candidate whose first call shows they would take longer fails untimed).
    evaluator_config : EvaluatorConfig, optional
        ``repeat`` rounds of one timing each (``number`` calls, grown until a timing lasts
        ``min_repeat_ms``); ``enable_cpu_cache_flush`` as in ``LocalRunner``. Default:
        MetaSchedule's ``EvaluatorConfig()``.
    f_alloc_argument, f_cleanup : str or callable, optional
        As in ``LocalRunner`` (the allocation is asked for one argument set per candidate).
    initializer : callable, optional
        Run once in every worker process at start-up.
    """

    def __init__(
        self,
        timeout_sec: float = 30,
        evaluator_config: EvaluatorConfig | None = None,
        f_alloc_argument: str | Callable | None = None,
        f_cleanup: str | Callable | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        if not timeout_sec > 0:
            raise ValueError(
                f"InterleavedRunner: timeout_sec must be > 0 seconds, got {timeout_sec!r}"
            )
        self.timeout_sec = float(timeout_sec)
        self.evaluator_config = EvaluatorConfig._normalized(evaluator_config)
        self.f_alloc_argument = f_alloc_argument
        self.f_cleanup = f_cleanup
        self.initializer = initializer
        self.lane = _Lane(initializer, self.timeout_sec)
        self._fallback: LocalRunner | None = None

    def fallback(self) -> LocalRunner:
        """The ``LocalRunner`` (same settings) that measures a batch whose worker failed as a
        whole, candidate by candidate; started the first time it is needed."""
        if self._fallback is None:
            self._fallback = LocalRunner(
                timeout_sec=self.timeout_sec,
                evaluator_config=self.evaluator_config,
                f_alloc_argument=self.f_alloc_argument,
                f_cleanup=self.f_cleanup,
                initializer=self.initializer,
            )
        return self._fallback

    def shutdown(self) -> None:
        """Stop the worker process and the fallback's pool; a later batch starts them again."""
        self.lane.close()
        if self._fallback is not None:
            self._fallback.pool.shutdown()
            self._fallback = None

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        """Time ``runner_inputs`` in interleaved rounds; return one finished future each."""
        inputs = batch_inputs(runner_inputs)
        results, again = _measure(
            self.lane,
            inputs,
            lambda item: (call_once, (self.f_alloc_argument, self.f_cleanup, item)),
            lambda items: (
                time_in_rounds,
                (
                    self.f_alloc_argument,
                    self.f_cleanup,
                    self.evaluator_config,
                    items,
                    self.timeout_sec,
                ),
            ),
            self.evaluator_config,
            self.timeout_sec,
            first_limit=self.timeout_sec,
            rounds_limit=lambda n: self.timeout_sec * n,
        )
        # A crash or a hang of the whole batch: one by one, so that the candidate responsible
        # fails alone.
        measured = self.fallback().run([runner_inputs[i] for i in again]) if again else []
        return _futures("InterleavedRunner", results, dict(zip(again, measured)))


@derived_object
class InterleavedRPCRunner(PyRunner):
    """MetaSchedule's ``RPCRunner``, timing each batch in interleaved rounds on the servers.

    ``RPCRunner`` opens one session per candidate and takes its timings back to back there.
    This runner splits a batch among ``max_workers`` sessions (one per server, each server its
    own share) and, in each, does what :class:`InterleavedRunner` does locally: every candidate
    is uploaded, loaded and called once on its own, under ``session_timeout_sec`` plus the time
    to reach a server (a hang there fails that candidate alone, and the rest go on in a new
    session), and the ones left are timed together in rounds on the server. A session that
    fails as a whole during the rounds (its server died or froze) has its candidates measured
    again one by one by an ``RPCRunner`` with the same settings, on the servers left.

    Parameters
    ----------
    rpc_config : RPCConfig
        Tracker, key, priority; its ``session_timeout_sec`` is the time limit per candidate,
        as ``RPCRunner``'s (the server's limit on a whole session is that times twice the
        session's candidates).
    evaluator_config : EvaluatorConfig, optional
        As in :class:`InterleavedRunner`. Default: MetaSchedule's ``EvaluatorConfig()``.
    max_workers : int
        Sessions at once (servers used for one batch).
    connect_timeout_sec : float
        Added to a call's limit for reaching the tracker and waiting for a free server.
    f_alloc_argument : str or callable, optional
        As in ``RPCRunner`` (``(session, device, args_info, alloc_repeat)``).
    initializer : callable, optional
        Run once in every worker process at start-up.
    """

    def __init__(
        self,
        rpc_config: RPCConfig,
        evaluator_config: EvaluatorConfig | None = None,
        max_workers: int = 1,
        connect_timeout_sec: float = 30.0,
        f_alloc_argument: str | Callable | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(
                f"InterleavedRPCRunner: max_workers must be an integer >= 1, got {max_workers!r}"
            )
        if not rpc_config.session_timeout_sec > 0 or not connect_timeout_sec > 0:
            raise ValueError(
                "InterleavedRPCRunner: rpc_config.session_timeout_sec and connect_timeout_sec "
                f"must be > 0 seconds, got {rpc_config.session_timeout_sec!r} and "
                f"{connect_timeout_sec!r}"
            )
        self.rpc_config = rpc_config
        self.timeout_sec = float(rpc_config.session_timeout_sec)
        self.evaluator_config = EvaluatorConfig._normalized(evaluator_config)
        self.max_workers = max_workers
        self.connect_timeout_sec = float(connect_timeout_sec)
        self.f_alloc_argument = f_alloc_argument
        self.initializer = initializer
        self.lanes = [_Lane(initializer, self.timeout_sec) for _ in range(max_workers)]
        self._fallback = None

    def fallback(self):
        """The ``RPCRunner`` (same settings, each candidate limited to ``session_timeout_sec``
        + ``connect_timeout_sec``) that measures a failed session's candidates one by one."""
        if self._fallback is None:
            self._fallback = timed_rpc_runner(
                self.rpc_config,
                self.evaluator_config,
                self.max_workers,
                self.timeout_sec + self.connect_timeout_sec,
                f_alloc_argument=self.f_alloc_argument,
                initializer=self.initializer,
            )
        return self._fallback

    def shutdown(self) -> None:
        """Stop the worker processes (their sessions end) and the fallback's pool; a later
        batch starts them again."""
        for lane in self.lanes:
            lane.close()
        if self._fallback is not None:
            self._fallback.pool.shutdown()
            self._fallback = None

    def _share(self, lane: _Lane, inputs: list[tuple[str, str, tuple]]):
        # The server ends a session past this: a backstop, the limits below come first.
        config = self.rpc_config._replace(
            session_timeout_sec=int(math.ceil(2 * len(inputs) * self.timeout_sec))
        )
        return _measure(
            lane,
            inputs,
            lambda item: (remote_call_once, (config, self.f_alloc_argument, item)),
            lambda items: (
                remote_time_in_rounds,
                (config, self.f_alloc_argument, self.evaluator_config, items, self.timeout_sec),
            ),
            self.evaluator_config,
            self.timeout_sec,
            first_limit=self.timeout_sec + self.connect_timeout_sec,
            rounds_limit=lambda n: self.timeout_sec * n + self.connect_timeout_sec,
        )

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        """Time ``runner_inputs`` in interleaved rounds on the servers; one finished future
        each."""
        inputs = batch_inputs(runner_inputs)
        shares = [
            list(range(k, len(inputs), self.max_workers))
            for k in range(min(self.max_workers, len(inputs)))
        ]
        with ThreadPoolExecutor(max_workers=max(1, len(shares))) as pool:
            done = list(
                pool.map(
                    lambda k: self._share(self.lanes[k], [inputs[i] for i in shares[k]]),
                    range(len(shares)),
                )
            )
        results: list[Result | None] = [None] * len(inputs)
        again: list[int] = []
        for share, (share_results, share_again) in zip(shares, done):
            for i, result in zip(share, share_results):
                results[i] = result
            again += [share[j] for j in share_again]
        again.sort()
        measured = self.fallback().run([runner_inputs[i] for i in again]) if again else []
        return _futures("InterleavedRPCRunner", results, dict(zip(again, measured)))


def timed_rpc_runner(
    rpc_config: RPCConfig,
    evaluator_config: EvaluatorConfig,
    max_workers: int,
    candidate_timeout_sec: float,
    f_alloc_argument: str | Callable | None = None,
    initializer: Callable[[], None] | None = None,
) -> RPCRunner:
    """MetaSchedule's ``RPCRunner`` whose worker pool ends a candidate after
    ``candidate_timeout_sec`` (as made, its pool has no limit: a frozen server or a key with no
    server left would hold a candidate forever)."""
    runner = RPCRunner(
        rpc_config=rpc_config,
        evaluator_config=evaluator_config,
        max_workers=max_workers,
        f_alloc_argument=f_alloc_argument,
        initializer=initializer,
    )
    # Same pool otherwise (its first one only ran a sanity check).
    runner.pool.shutdown(wait=False)
    runner.pool = PopenPoolExecutor(
        max_workers=max_workers, timeout=candidate_timeout_sec, initializer=initializer
    )
    return runner


def batch_inputs(runner_inputs: list[RunnerInput]) -> list[tuple[str, str, tuple]]:
    """``RunnerInput``s as :func:`time_in_rounds` takes them (picklable)."""
    return [
        (
            str(runner_input.artifact_path),
            str(runner_input.device_type),
            tuple(arg_info.as_json() for arg_info in runner_input.args_info),
        )
        for runner_input in runner_inputs
    ]


def batch_futures(
    results: list[Result], name: str = "InterleavedRunner"
) -> list[LocalRunnerFuture]:
    """:func:`time_in_rounds`' results as finished runner futures (errors named
    ``"<name>: ..."``)."""
    return [
        LocalRunnerFuture(res=times, error_message=None)
        if error is None
        else LocalRunnerFuture(res=None, error_message=f"{name}: {error}")
        for times, error in results
    ]
