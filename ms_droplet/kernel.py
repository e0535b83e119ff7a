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
"""Tune one kernel: builder, runner, callbacks and ``tune_tir`` assembled once.

:func:`tune_kernel` is what ``ms-droplet tune`` runs and what benchmark scripts call. It keeps
the CLI's conventions: :class:`ms_droplet.FastBuilder` by default (shut down afterwards), the
work directory checked and locked (:mod:`ms_droplet.workdir`), stop requests honoured after the
batch in flight (:mod:`ms_droplet.interrupt`), and the runner of :mod:`ms_droplet.measure`.
Every measured candidate is recorded in :attr:`KernelTuneResult.curve`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._samples import mean_run_secs, result_run_secs
from ._state import classify_failure

STRATEGY_NAMES = ("droplet", "evolutionary", "replay-trace", "replay-func")
"""Strategy names :func:`tune_kernel` accepts (the others are MetaSchedule's)."""


@dataclass(frozen=True)
class CurvePoint:
    """One measured candidate of a :func:`tune_kernel` run.

    Attributes
    ----------
    trial : int
        1-based index of the candidate among those measured by this run.
    wall_secs : float
        Seconds since the run started when its batch had been measured.
    secs : float or None
        Its mean run time; ``None`` when it failed to build or run.
    best_secs : float or None
        The best valid time of this run so far (this candidate included); ``None`` before the
        first valid one. Records of earlier runs in the same work_dir are not included.
    phase : str or None
        ``"exploration"`` or ``"descent"`` for droplet; ``None`` for other strategies.
    failure : str or None
        Why it failed (a cause of :mod:`ms_droplet.failures`, e.g. ``"builder timeout"``);
        ``None`` when it ran.
    """

    trial: int
    wall_secs: float
    secs: float | None
    best_secs: float | None
    phase: str | None
    failure: str | None = None


@dataclass
class KernelTuneResult:
    """What :func:`tune_kernel` returns.

    Attributes
    ----------
    target : str
        The target tuned for.
    strategy : str
        The strategy's name (a class name for a strategy object).
    best_secs : float
        Mean run time of the best record of the kernel in the database (earlier runs into the
        same work_dir count); NaN when there is none.
    flop : float
        Floating-point operations of one call (``estimate_tir_flops``).
    trials : int
        Candidates measured by this run.
    wall_secs : float
        Seconds spent tuning.
    work_dir : str
        The work directory.
    reports : list
        ``DropletSearch.reports`` (one ``DropletReport`` per task); empty for other strategies.
    curve : list of CurvePoint
        One entry per measured candidate, in measurement order.
    stopped : bool
        Whether a stop request (:func:`ms_droplet.interrupt.request_stop`) ended the run early.
    failures : dict of str to int
        Candidates of this run that failed to build or run, by cause (``"builder timeout"``,
        ``"build error"``, ``"runner timeout"``, ``"run error"``, ``"RPC"``; see
        :mod:`ms_droplet.failures`); empty when none failed.
    """

    target: str
    strategy: str
    best_secs: float
    flop: float
    trials: int
    wall_secs: float
    work_dir: str
    reports: list = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)
    stopped: bool = False
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def all_failed(self) -> bool:
        """Whether every candidate of this run failed (and at least one was measured): nothing
        was tuned, and :attr:`main_failure` says why. ``tune_kernel`` does not raise for it;
        ``ms-droplet tune`` exits with status 3."""
        return self.trials > 0 and sum(self.failures.values()) >= self.trials

    @property
    def main_failure(self) -> str | None:
        """The cause of most of this run's failures; ``None`` when none failed."""
        from .failures import main_cause  # pylint: disable=import-outside-toplevel

        return main_cause(self.failures)

    @property
    def gflops(self) -> float:
        """``flop / best_secs`` in GFLOP/s; NaN without a best time or a FLOP count."""
        return self.flop / self.best_secs / 1e9 if self.best_secs and self.flop else math.nan

    @property
    def database(self) -> str:
        """Path of the JSON tuning records."""
        from .workdir import RECORD_FILE  # pylint: disable=import-outside-toplevel

        return os.path.join(self.work_dir, RECORD_FILE)

    @property
    def trials_per_phase(self) -> dict[str, int] | None:
        """Droplet's exploration and descent trials, summed over tasks; ``None`` without
        droplet reports."""
        return phase_totals(self.reports)


def phase_totals(reports: Sequence) -> dict[str, int] | None:
    """``{"exploration": n, "descent": m}`` summed over ``DropletReport`` objects, or ``None``
    when there are none (a strategy other than droplet)."""
    if not reports:
        return None
    return {
        "exploration": sum(r.exploration for r in reports),
        "descent": sum(r.descent for r in reports),
    }


class TrialMonitor:
    """State of a measure callback: the curve, a progress bar, and stop requests.

    Parameters
    ----------
    total : int
        Budget shown by the progress bar.
    progress : bool
        Show a tqdm bar on stderr.
    strategy_stops : bool
        The search strategy ends its tasks itself on a stop request (``DropletSearch`` does).
        Otherwise :attr:`callback` raises ``KeyboardInterrupt`` after a batch once a stop was
        requested; the callbacks before it have committed the batch to the database by then.
    phase_of : Callable[[int], str or None], optional
        The phase of a task's batch just measured, by task id.
    """

    def __init__(
        self,
        total: int,
        *,
        progress: bool = False,
        strategy_stops: bool = False,
        phase_of: Callable[[int], str | None] | None = None,
    ) -> None:
        # pylint: disable=import-outside-toplevel
        from tqdm import tqdm
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        from .interrupt import stop_requested

        self.trials = 0
        self.best = math.inf
        self.curve: list[CurvePoint] = []
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, unit="trial", disable=not progress, file=sys.stderr)
        phase_of = phase_of or (lambda _task_id: None)
        monitor = self

        @derived_object
        class TrialCallback(PyMeasureCallback):
            """Adds each measured batch to the monitor."""

            def apply(
                self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
            ):
                monitor.add(builder_results, runner_results, phase_of(int(task_id)))
                if stop_requested() and not strategy_stops:
                    raise KeyboardInterrupt("stop requested")

        self.callback = TrialCallback()

    def add(self, builder_results, runner_results, phase: str | None) -> None:
        """Record one measured batch."""
        wall = time.perf_counter() - self.start
        for built, result in zip(builder_results, runner_results):
            # A failed build has no run: MetaSchedule fills in a runner result with an error.
            samples = [] if built.error_msg is not None else result_run_secs(result)
            secs = mean_run_secs(samples) if samples else None
            failure = None
            if secs is not None:
                self.best = min(self.best, secs)
            elif built.error_msg is not None:
                failure = classify_failure(built.error_msg, "build")
            else:
                failure = classify_failure(result.error_msg, "run")
            self.trials += 1
            best = self.best if math.isfinite(self.best) else None
            self.curve.append(CurvePoint(self.trials, wall, secs, best, phase, failure))
        self.bar.update(len(runner_results))
        if math.isfinite(self.best):
            self.bar.set_postfix_str(f"best {self.best * 1e6:.2f} us")

    @property
    def failures(self) -> dict[str, int]:
        """Failed candidates by cause, in the order the causes first appeared (from the curve)."""
        return dict(Counter(point.failure for point in self.curve if point.failure is not None))

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"tune_kernel: {name} must be an integer >= {minimum}, got {value!r}; pass a whole "
            f"number of at least {minimum}"
        )
    return value


def _make_strategy(strategy, exploration_trials: int | None, max_trials: int):
    """The strategy object or name for ``tune_tir``, and its name for the result."""
    from .strategy import DropletSearch  # pylint: disable=import-outside-toplevel

    if isinstance(strategy, str):
        if strategy not in STRATEGY_NAMES:
            raise ValueError(
                f"tune_kernel: strategy must be one of {', '.join(STRATEGY_NAMES)} or a "
                f"SearchStrategy object, got {strategy!r}; e.g. strategy='droplet'"
            )
        if exploration_trials is not None:
            if strategy != "droplet":
                raise ValueError(
                    f"tune_kernel: exploration_trials applies to strategy='droplet' only, got "
                    f"exploration_trials={exploration_trials!r} with strategy={strategy!r}; "
                    "leave exploration_trials None"
                )
            _check_count("exploration_trials", exploration_trials, 0)
            if exploration_trials > max_trials:
                raise ValueError(
                    f"tune_kernel: exploration_trials ({exploration_trials}) must not exceed "
                    f"max_trials ({max_trials}); lower it or raise max_trials"
                )
        if strategy == "droplet":
            return DropletSearch(exploration_trials=exploration_trials), strategy
        return strategy, strategy
    if exploration_trials is not None:
        raise ValueError(
            f"tune_kernel: exploration_trials={exploration_trials!r} is for strategy='droplet'; "
            f"with a strategy object ({type(strategy).__name__}) set it on the object, e.g. "
            "DropletSearch(exploration_trials=...)"
        )
    return strategy, type(strategy).__name__


def tune_kernel(
    mod,
    target=None,
    work_dir: str = "ms_droplet_work",
    *,
    max_trials: int = 64,
    strategy="droplet",
    exploration_trials: int | None = None,
    num_trials_per_iter: int = 16,
    seed: int | None = None,
    builder="fast",
    runner=None,
    cost_model="xgb",
    measure_callbacks: Sequence[object] = (),
    progress: bool = False,
) -> KernelTuneResult:
    """Tune one TIR kernel with MetaSchedule and return the best time and the search curve.

    The work directory is checked (a torn last database line is recovered, another malformed
    line raises) and locked for the run, as the CLI does. Rerunning into the same directory
    resumes: its records count toward droplet's exploration, and
    :attr:`KernelTuneResult.best_secs` is the best record of the kernel, old or new. A stop
    request (:func:`ms_droplet.interrupt.request_stop`, or SIGINT/SIGTERM inside
    :func:`ms_droplet.interrupt.graceful_interrupts`) ends the run after the batch in flight;
    the result then has ``stopped=True``.

    Parameters
    ----------
    mod : tvm.tirx.PrimFunc or tvm.IRModule
        The kernel (e.g. ``te_workload.create_te_workload("GMM", 0)``).
    target : Target, str, dict or None
        ``None``: this machine's CPU (:func:`ms_droplet.target.host_target`).
    work_dir : str
        Where the JSON database and MetaSchedule's logs go.
    max_trials : int
        Candidates measured by this run.
    strategy : str or SearchStrategy
        ``"droplet"`` (default), ``"evolutionary"``, ``"replay-trace"``, ``"replay-func"`` or a
        strategy object (e.g. ``DropletSearch(...)``).
    exploration_trials : Optional[int]
        With ``strategy="droplet"``: trials of evolutionary exploration (default: half of
        ``max_trials``, between 16 and 300, in whole batches).
    num_trials_per_iter : int
        Candidates per measured batch.
    seed : Optional[int]
        Seed of the task's random state.
    builder : "fast", "local" or Builder
        ``"fast"``: a :class:`ms_droplet.FastBuilder`, shut down at the end; ``"local"``:
        MetaSchedule's ``LocalBuilder``; a Builder object is used as is and left running.
    runner : Runner or None
        ``None``: :func:`ms_droplet.measure.default_runner`.
    cost_model : str or CostModel
        As in ``tune_tir``.
    measure_callbacks : Sequence[MeasureCallback]
        Run after MetaSchedule's default callbacks and the curve's.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    KernelTuneResult
        A run whose every candidate failed to build or run returns normally: its
        ``all_failed`` is True, ``failures`` counts the causes, and the caller decides (the CLI
        warns and exits with status 3). DropletSearch also logs one warning per cause and
        task when a whole batch fails alike.

    Raises
    ------
    ValueError
        A bad argument (the message names it); ``ms_droplet.DatabaseFileError`` (a
        ``ValueError``) for a malformed database line.
    ms_droplet.WorkDirBusyError
        Another process tunes into ``work_dir``.
    """
    # pylint: disable=import-outside-toplevel,too-many-locals
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule.tir_integration import _normalize_mod

    from .builder import FastBuilder
    from .interrupt import stop_requested
    from .measure import default_runner, respect_cpu_affinity
    from .strategy import DropletSearch
    from .target import as_target
    from .workdir import check_work_dir, lock_work_dir

    max_trials = _check_count("max_trials", max_trials, 1)
    num_trials_per_iter = _check_count("num_trials_per_iter", num_trials_per_iter, 1)
    if isinstance(builder, str) and builder not in ("fast", "local"):
        raise ValueError(
            f"tune_kernel: builder must be 'fast', 'local' or a Builder object, got {builder!r}; "
            "e.g. builder='fast'"
        )
    strategy, strategy_name = _make_strategy(strategy, exploration_trials, max_trials)
    respect_cpu_affinity()  # before any runner worker or thread pool starts
    target = as_target(target)
    os.makedirs(work_dir, exist_ok=True)
    check_work_dir(work_dir)
    with lock_work_dir(work_dir):
        runner = default_runner() if runner is None else runner

        def phase_of(_task_id: int) -> str | None:
            # DropletSearch reports the phase of its clone that generated the batch just
            # measured (tune_tir tunes clones); other strategies have none.
            return getattr(strategy, "phase", None)

        monitor = TrialMonitor(
            max_trials,
            progress=progress,
            strategy_stops=isinstance(strategy, DropletSearch),
            phase_of=phase_of,
        )
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        callbacks += [monitor.callback, *measure_callbacks]
        # Made here rather than by tune_tir: a stop can end tune_tir with an exception, and the
        # records measured until then are still read from it.
        database = ms.database.Database.create("json", work_dir=work_dir)
        own_builder = builder == "fast"
        builder = FastBuilder() if own_builder else builder
        stopped = False
        monitor.start = start = time.perf_counter()
        try:
            ms.tune_tir(
                mod,
                target,
                work_dir,
                max_trials_global=max_trials,
                num_trials_per_iter=num_trials_per_iter,
                seed=seed,
                strategy=strategy,
                cost_model=cost_model,
                database=database,
                measure_callbacks=callbacks,
                builder=builder,
                runner=runner,
            )
        except BaseException:  # the callback's KeyboardInterrupt may come back wrapped by TVM
            if not stop_requested():
                raise
            stopped = True
        finally:
            monitor.close()
            if own_builder:
                builder.shutdown()
        wall = time.perf_counter() - start
    stopped = stopped or stop_requested()
    normalized = _normalize_mod(mod)
    record = database.query_tuning_record(normalized, target, workload_name="main")
    return KernelTuneResult(
        target=str(target),
        strategy=strategy_name,
        best_secs=mean_run_secs(record.run_secs) if record is not None else math.nan,
        flop=float(estimate_tir_flops(normalized)),
        trials=monitor.trials,
        wall_secs=wall,
        work_dir=work_dir,
        reports=list(getattr(strategy, "reports", [])),
        curve=monitor.curve,
        stopped=stopped,
        failures=dict(monitor.failures),
    )
