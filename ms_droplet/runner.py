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
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    LocalRunner,
    PyRunner,
    RunnerFuture,
    RunnerInput,
)
from tvm.s_tir.meta_schedule.runner.local_runner import (
    LocalRunnerFuture,
    default_alloc_argument,
    default_cleanup,
)
from tvm.s_tir.meta_schedule.utils import get_global_func_with_default_on_worker

from ._worker import _Worker, worker_env

__all__ = ["InterleavedRunner", "time_in_rounds"]

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
    timers = {}
    try:
        for i, item in enumerate(inputs):
            try:
                rt_mod, device, args = _load(alloc, item)
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
                timers[i] = (rt_mod, timer, device, args)
            except Exception:  # noqa: BLE001 - the candidate's error, as LocalRunner reports it
                errors[i] = f"{EXCEPTION}\nloading {item[0]}:\n{traceback.format_exc()}"
        samples: dict[int, list[float]] = {i: [] for i in timers}
        spent = dict.fromkeys(timers, 0.0)
        for _ in range(evaluator_config.repeat):
            for i in list(timers):
                _, timer, device, args = timers[i]
                start = time.perf_counter()
                try:
                    device.sync()
                    samples[i].append(float(timer(*args).mean))
                except Exception:  # noqa: BLE001 - this candidate fails, the others go on
                    errors[i] = f"{EXCEPTION}\ntiming {inputs[i][0]}:\n{traceback.format_exc()}"
                    del timers[i]
                    continue
                spent[i] += time.perf_counter() - start
                if timeout_sec is not None and spent[i] > timeout_sec:
                    errors[i] = (
                        f"{TIMEOUT}: its timings took {spent[i]:.1f} s, past timeout_sec="
                        f"{timeout_sec:g}, after {len(samples[i])} of "
                        f"{evaluator_config.repeat} rounds\n{inputs[i][0]}"
                    )
                    del timers[i]
    finally:
        cleanup()
    return [(None, errors[i]) if i in errors else (samples[i], None) for i in range(len(inputs))]


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
        self.worker: _Worker | None = None  # started at the first batch, again after a failure
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

    def _call(self, func: Callable, args: tuple, timeout: float):
        """``func(*args)`` in the worker (started first if need be), killed past ``timeout``;
        a worker that timed out or died is dropped, to be started again at the next call."""
        if self.worker is None or not self.worker.alive():
            self.worker = _Worker(worker_env())
            if self.initializer is not None:
                started = self.worker.call(self.initializer, (), self.timeout_sec)
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

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        """Time ``runner_inputs`` in interleaved rounds; return one finished future each."""
        inputs = batch_inputs(runner_inputs)
        results: list[tuple[list[float] | None, str | None] | None] = [None] * len(inputs)
        for i, item in enumerate(inputs):
            first = self._call(
                call_once, (self.f_alloc_argument, self.f_cleanup, item), self.timeout_sec
            )
            if first.status == "timeout":
                results[i] = (
                    None,
                    f"{TIMEOUT}, killed after {self.timeout_sec:g} seconds "
                    f"in its first call\n{item[0]}",
                )
            elif first.status == "died":
                results[i] = (
                    None,
                    f"{EXCEPTION}\nits worker died (exit code {first.value}) "
                    f"in its first call\n{item[0]}",
                )
            elif first.status == "error":
                results[i] = (None, f"{EXCEPTION}\nloading or calling {item[0]}:\n{first.value}")
            elif first.value + timings_need(first.value, self.evaluator_config) > self.timeout_sec:
                results[i] = (
                    None,
                    f"{TIMEOUT}: its first call took {first.value:.3g} s, so its "
                    f"timings would run past timeout_sec={self.timeout_sec:g}\n{item[0]}",
                )
        todo = [i for i, result in enumerate(results) if result is None]
        futures: dict[int, RunnerFuture] = {}
        if todo:
            timed = self._call(
                time_in_rounds,
                (
                    self.f_alloc_argument,
                    self.f_cleanup,
                    self.evaluator_config,
                    [inputs[i] for i in todo],
                    self.timeout_sec,
                ),
                self.timeout_sec * len(todo),
            )
            if timed.status == "ok":
                for i, result in zip(todo, timed.value):
                    results[i] = result
            else:
                # A crash or a hang of the whole batch: one by one, so that the candidate
                # responsible fails alone.
                again = self.fallback().run([runner_inputs[i] for i in todo])
                futures = dict(zip(todo, again))
        done = batch_futures([r for r in results if r is not None])
        finished = iter(done)
        return [futures[i] if i in futures else next(finished) for i in range(len(inputs))]


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


def batch_futures(results: list[tuple[list[float] | None, str | None]]) -> list[LocalRunnerFuture]:
    """:func:`time_in_rounds`' results as finished runner futures (errors named
    ``"InterleavedRunner: ..."``)."""
    return [
        LocalRunnerFuture(res=times, error_message=None)
        if error is None
        else LocalRunnerFuture(res=None, error_message="InterleavedRunner: " + error)
        for times, error in results
    ]
