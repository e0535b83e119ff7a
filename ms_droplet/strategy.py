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
"""``DropletSearch``: MetaSchedule's evolutionary search explores, coordinate descent exploits.

The adapter between MetaSchedule's ``SearchStrategy`` protocol and the pure descent core
(:mod:`ms_droplet._descent`). It holds no algorithm: phases, budget, replay and
postprocessing, de-duplication, logging, seeding and cloning.
"""

from __future__ import annotations

import inspect
import logging
import re
import time

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.search_strategy import (
    EvolutionarySearch,
    MeasureCandidate,
    PySearchStrategy,
)

from ._driver import DescentDriver, fmt_secs
from ._options import (
    DropletOptions,
    default_exploration_trials,
    options_table,
    with_options,
)
from ._samples import result_run_secs, valid_run_secs
from ._state import Batch, DropletReport, RunHooks, RunState
from ._trace import replay

try:  # ms_droplet's work_dir lock and stop requests; the no-op default where it is absent
    from ._hooks import HOOKS
except ImportError:
    HOOKS = RunHooks()

__all__ = [
    "DropletOptions",
    "DropletReport",
    "DropletSearch",
    "default_exploration_trials",
    "options_table",
]

_LOG_PREFIX = "tvm.s_tir.meta_schedule.logging.task_"
# Evolutionary batches made only of already-measured modules before exploration gives up.
_MAX_EMPTY_EXPLORATION_BATCHES = 3
_EVOLUTIONARY_OPTIONS = tuple(
    name for name in inspect.signature(EvolutionarySearch.__init__).parameters if name != "self"
)


def _task_logger(task_name: str) -> logging.Logger:
    """The per-task logger MetaSchedule made for ``task_name`` (files in work_dir/logs)."""
    pattern = re.compile(re.escape(_LOG_PREFIX) + r"\d+_" + re.escape(task_name[:100]) + r"$")
    for name in list(logging.Logger.manager.loggerDict):
        if pattern.match(name):
            logger = logging.getLogger(name)
            if logger.handlers:
                return logger
    return logging.getLogger("tvm.s_tir.meta_schedule")


@derived_object
@with_options
class DropletSearch(PySearchStrategy):
    """Droplet Search: a bounded evolutionary exploration, then coordinate descent.

    The exploration phase delegates to MetaSchedule's ``EvolutionarySearch`` for
    ``exploration_trials`` trials. The descent phase starts from the best measured record of
    the workload in the database (earlier runs count) and moves one decision at a time
    (tile factors, categorical indices, compute locations) to legal neighbors, accepting a move
    only when the neighbor is faster by at least ``min_gain`` and a one-sided Welch t-test
    gives ``p <= p_value`` on the pooled timings, and only once it and the incumbent were each
    measured at least ``min_measurements`` times (timings of one runner call are correlated and
    understate the spread between calls), unless it is at least ``sure_gain`` faster. A
    neighbor that looks faster but is not yet decided or confirmed is measured again, with the
    incumbent, up to ``max_measurements`` times. The default runner gives one timing per
    measurement, so the test then needs the re-measurement anyway. A descent ends when the whole
    neighborhood (steps ``1..max_step``) is known without an accepted move. With budget left the
    search then *restarts*: one more batch of evolutionary exploration (seeded from the
    database, which now holds the descent's measurements, and guided by the cost model trained
    on all of them), then a new descent from the best measured schedule that no earlier descent
    began or ended on. The task ends when its budget is spent, after ``max_restarts`` restarts,
    or when a restart's exploration finds nothing new to measure (the space looks exhausted, as
    when MetaSchedule's evolutionary search stops early).

    Parameters
    ----------
    {parameters}
    **evolutionary_options
        Passed to ``EvolutionarySearch`` (``population_size``, ``init_measured_ratio``,
        ``init_min_unmeasured``, ``max_fail_count``, ``genetic_num_iters``,
        ``genetic_mutate_prob``, ``genetic_max_fail_count``, ``eps_greedy``).
    """

    def __init__(self, **options) -> None:
        # Every option, its default and its rule live in DropletOptions; the keyword-only
        # signature shown by help() is generated from it (see with_options).
        self.options, self.evolutionary_options = DropletOptions.split(
            options, _EVOLUTIONARY_OPTIONS, "EvolutionarySearch"
        )
        self.config = self.options.descent_config()
        self._context = None
        self._first_inner: EvolutionarySearch | None = None
        self._state: RunState | None = None
        self._driver: DescentDriver | None = None
        self._logger = logging.getLogger("tvm.s_tir.meta_schedule")
        # Shared with every clone: MetaSchedule tunes clones, so this is where a caller finds
        # one DropletReport per task after tuning.
        self.reports: list[DropletReport] = []
        # Also shared with every clone: the strategy that generated the last batch, whose
        # phase the original reports (callbacks hold the original, MetaSchedule runs clones).
        self._last_active: list[DropletSearch | None] = [None]

    # ------------------------------------------------------------------ protocol
    def _initialize_with_tune_context(self, context) -> None:
        self._context = context
        self._logger = _task_logger(str(context.task_name or "main"))
        # The first exploration's strategy forks the context's random state here, where
        # MetaSchedule initializes its own: from the same context it then samples what
        # evolutionary search alone would, instead of a stream forked later. (tune_tir does
        # not reproduce evolutionary samples from a seed anyway; see the README.)
        self._first_inner = self._new_inner()

    def pre_tuning(
        self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None
    ) -> None:
        if self._context is None:
            raise RuntimeError(
                "DropletSearch.pre_tuning: the strategy has no tune context; create it through "
                "TuneContext(search_strategy=...) or call _initialize_with_tune_context first"
            )
        if self._state is not None:
            raise RuntimeError(
                "DropletSearch.pre_tuning called twice; call post_tuning before tuning again"
            )
        # pylint: disable=import-outside-toplevel
        from tvm.s_tir.meta_schedule.cost_model import RandomModel
        from tvm.s_tir.meta_schedule.database import MemoryDatabase

        database = database if database is not None else MemoryDatabase()
        cost_model = cost_model if cost_model is not None else RandomModel()
        # The hooks may refuse the run (a work_dir lock held by another tuning process): refusing
        # here aborts the run before anything is measured.
        token = HOOKS.acquire(database)
        try:
            self._prepare(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        except BaseException:
            HOOKS.release(token)
            raise
        self._state.hook_token = token

    def _prepare(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        """``pre_tuning`` after the checks: read the database, set up exploration."""
        state = RunState(int(max_trials), int(num_trials_per_iter), design_spaces, database)
        if state.max_trials <= 0:
            self._logger.warning(
                "droplet: this task's budget is %d trials: nothing will be measured (give "
                "tune_tir/tune_relax a max_trials_global of at least 1)",
                state.max_trials,
            )
        # The acceptance test's module takes ~0.8 s to import: pay it here, once per process,
        # not inside the first descent step's search time (it was 0.79 of GMM:1 seed 1's
        # 0.83 s in result set 2).
        import scipy.stats  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import

        state.rng = np.random.default_rng(abs(int(self._context.rand_state)))
        state.postprocs = list(self._context.space_generator.postprocs)
        state.replay_seed = int(state.rng.integers(1, 2**31 - 1))
        tic = time.perf_counter()
        try:
            known = self._load_database(state)
        except Exception:  # noqa: BLE001 - tuning goes on without what the database knows
            self._logger.exception("droplet: could not read the database; starting afresh")
            known = 0
        state.search_secs += time.perf_counter() - tic
        explore = (
            default_exploration_trials(state.max_trials, state.num_trials_per_iter)
            if self.exploration_trials is None
            else self.exploration_trials
        )
        if explore > state.max_trials:
            self._logger.warning(
                "droplet: exploration_trials=%d exceeds this task's budget of %d trials; "
                "exploring for %d",
                explore,
                state.max_trials,
                state.max_trials,
            )
            explore = state.max_trials
        if known:
            self._logger.info(
                "droplet: resuming: %d records of this workload and target are in the database "
                "(read in %.2f s) and count toward the %d exploration trials",
                known,
                time.perf_counter() - tic,
                explore,
            )
            explore = max(0, explore - known)
        state.exploration_budget = explore
        state.cost_model = cost_model
        self._logger.info(
            "droplet: budget %d trials, exploration %d (evolutionary search), then descent "
            "(p_value=%s, min_gain=%s, max_step=%d, measurements %d..%d, sure_gain=%s)",
            state.max_trials,
            explore,
            self.config.p_value,
            self.config.min_gain,
            self.config.max_step,
            self.config.min_measurements,
            self.config.max_measurements,
            self.config.sure_gain,
        )
        if explore > 0:
            self._start_exploration(state, explore)
        else:
            state.phase = "descent"
        self._driver = DescentDriver(self._context, self.options, self._logger)
        self._state = state

    def post_tuning(self) -> None:
        state = self._state
        if state is None:
            return
        try:
            self._finish_exploration(state)
            c = state.counts
            self._logger.info(
                "droplet: summary: %d trials (exploration %d, descent %d of which %d "
                "re-measurements), %d accepted moves, %d restarts, %d invalid "
                "neighbors dropped, %d kept with a compute location snapped, %d duplicates "
                "skipped, %d failed measurements, best %s, "
                "%.2f s in descent search (%.2f s ranking neighbors); stop: %s",
                state.trials,
                c.exploration,
                c.descent,
                c.remeasured,
                c.moves,
                c.restarts,
                c.invalid,
                c.snapped,
                c.duplicates,
                c.failures,
                fmt_secs(state.pool.best),
                state.search_secs,
                state.rank_secs,
                state.stop_reason or "budget spent",
            )
            self.reports.append(state.report(str(self._context.task_name)))
        finally:
            self._state = None
            HOOKS.release(state.hook_token)

    def generate_measure_candidates(self) -> list[MeasureCandidate] | None:
        state = self._state
        if state is None:
            self._logger.error("droplet: generate_measure_candidates called before pre_tuning")
            return None
        try:
            remaining = state.max_trials - state.trials
            if HOOKS.should_stop():
                state.stop("stopped on request (SIGINT/SIGTERM)")
                self._logger.warning(
                    "droplet: %s; %d trials measured", state.stop_reason, state.trials
                )
                return None
            if remaining <= 0:
                state.stop_reason = state.stop_reason or "budget spent"
                return None
            candidates = None
            self._last_active[0] = self
            # At most one restart per call: a restart whose exploration and descent both come
            # back empty ends the task instead of looping.
            for attempt in range(2):
                if state.phase == "exploration":
                    candidates = self._explore(state, remaining)
                if candidates is None and state.phase == "descent":
                    tic = time.perf_counter()
                    if not state.descent.started:
                        state.descent.started = True
                        self._driver.start(state)
                    cap = min(remaining, state.num_trials_per_iter, self.descent_batch or remaining)
                    candidates = self._driver.next_batch(state, cap)
                    state.search_secs += time.perf_counter() - tic
                if candidates or attempt:
                    break
                # A local optimum: a restart.
                if not self._restart(state, remaining):
                    break
            if not candidates:
                state.stop()
                return None
            state.trials += len(candidates)
            return candidates
        except Exception:  # noqa: BLE001 - an exception here would abort the whole tuning run
            self._logger.exception("droplet: unexpected error; ending this task's search")
            state.stop("internal error (see the traceback above)")
            return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        state = self._state
        if state is None:
            return
        try:
            if state.phase == "exploration" and state.inner is not None:
                state.inner.notify_runner_results(measure_candidates, results)
            batch, state.batch = state.batch, Batch()
            run = state.descent
            state.failures.new_batch(len(results))
            for i, (candidate, result) in enumerate(zip(measure_candidates, results)):
                samples = result_run_secs(result)
                shash = batch.hashes[i] if i < len(batch.hashes) else None
                if shash is None:
                    shash = _hash_of(candidate.sch)
                state.pool.add(shash, samples, candidate.sch.trace)
                if samples:
                    state.failures.succeeded()
                else:
                    state.counts.failures += 1
                    self._logger.debug("droplet: candidate failed: %s", _brief(result.error_msg))
                    cause = state.failures.observe(result.error_msg)
                    if cause is not None:
                        self._warn_failures(state, cause)
                if run.core is not None and i < len(batch.vectors):
                    for vector in batch.vectors[i]:
                        if run.start_known is not None and vector == run.start_known[0]:
                            # A failed second look at a start that ran before: descend on
                            # its earlier run times rather than end the descent.
                            samples = samples or run.start_known[1]
                            run.start_known = None
                        run.core.observe(vector, samples)
            if run.core is not None and batch.vectors:
                tic = time.perf_counter()
                self._driver.log_move(state, run.core.conclude())
                state.search_secs += time.perf_counter() - tic
        except Exception:  # noqa: BLE001 - an exception here would abort the whole tuning run
            self._logger.exception("droplet: unexpected error while reading runner results")

    def clone(self) -> DropletSearch:
        """A fresh strategy with the same options, sharing ``reports`` with this one."""
        twin = DropletSearch(**self.options.as_dict(), **self.evolutionary_options)
        twin.reports = self.reports
        twin._last_active = self._last_active  # pylint: disable=protected-access
        return twin

    @property
    def phase(self) -> str | None:
        """``"exploration"`` or ``"descent"``: the phase of the batch generated last.

        On a strategy that is not tuning itself, the phase of its clone that generated the last
        batch: ``tune_tir`` tunes clones, while a measure callback holds the object passed in.
        ``None`` when nothing is tuning (before ``pre_tuning``, after ``post_tuning``, and once
        the task has ended). Progress callbacks read it to tell the phases apart.
        """
        if self._state is None:
            active = self._last_active[0]
            return active.phase if active is not None and active is not self else None
        state = self._state
        if state is None or state.phase == "done":
            return None
        return state.phase

    def _warn_failures(self, state: RunState, cause: str) -> None:
        """One warning per cause and task: failures in a row that point at the environment."""
        watch = state.failures
        self._logger.warning(
            "droplet: %d candidates in a row failed with the same cause, %s (%d of %d measured "
            "so far; first error: %s). Fix: %s. (Warned once per cause and task; the summary "
            "counts every failure.)",
            watch.streak,
            cause,
            watch.by_cause[cause],
            state.trials,
            _brief(watch.examples[cause]),
            HOOKS.failure_fix(cause),
        )

    # ------------------------------------------------------------------ phases
    def _explore(self, state: RunState, remaining: int) -> list[MeasureCandidate] | None:
        left = min(state.exploration_budget - state.counts.exploration, remaining)
        for _ in range(_MAX_EMPTY_EXPLORATION_BATCHES):
            if left <= 0 or state.inner is None:
                break
            candidates = state.inner.generate_measure_candidates()
            if not candidates:
                break
            fresh, hashes = [], []
            for candidate in candidates:
                shash = _hash_of(candidate.sch)
                if state.pool.knows(shash) or shash in hashes:
                    state.counts.duplicates += 1
                    continue
                fresh.append(candidate)
                hashes.append(shash)
            if fresh:
                fresh, hashes = fresh[:left], hashes[:left]
                state.counts.exploration += len(fresh)
                state.batch = Batch(hashes=hashes)
                return fresh
        self._finish_exploration(state)
        state.phase = "descent"
        return None

    def _new_inner(self) -> EvolutionarySearch:
        inner = EvolutionarySearch(**self.evolutionary_options)
        inner._initialize_with_tune_context(self._context)  # pylint: disable=protected-access
        return inner

    def _start_exploration(self, state: RunState, trials: int) -> None:
        inner, self._first_inner = self._first_inner or self._new_inner(), None
        inner.pre_tuning(
            trials, state.num_trials_per_iter, state.design_spaces, state.database, state.cost_model
        )
        state.inner = inner

    def _restart(self, state: RunState, remaining: int) -> bool:
        """After a descent ended with budget left: explore one more batch, then descend anew.

        Returns False (and the task ends) when restarts are used up or impossible.
        """
        core = state.descent.core
        if core is None or not core.incumbent_samples:
            return False  # no descent ran (nothing to descend on), or its start failed
        if self.max_restarts is not None and state.counts.restarts >= self.max_restarts:
            return False
        reason = state.stop_reason
        best = float(np.mean(core.incumbent_samples))
        trials = min(remaining, state.num_trials_per_iter)
        state.restart(trials)
        self._logger.info(
            "droplet: restart %d: the descent ended (%s) at %s with %d trials left; exploring "
            "%d more, then descending from the best schedule no descent began or ended on",
            state.counts.restarts,
            reason,
            fmt_secs(best),
            remaining,
            trials,
        )
        self._start_exploration(state, trials)
        return True

    def _finish_exploration(self, state: RunState) -> None:
        if state.inner is not None:
            state.inner.post_tuning()
            state.inner = None

    def _load_database(self, state: RunState) -> int:
        """Learn every record of this workload and target: run times and traces by module hash.

        Returns the number of records that replay on this workload (about 2 ms each); the
        others (a trace from another TVM version, an edited file) are logged and ignored.
        """
        context = self._context
        workload = state.database.commit_workload(context.mod)
        target = str(context.target)
        records = [
            r
            for r in state.database.get_top_k(workload, 1 << 30)
            if r.target is None or str(r.target) == target
        ]
        unusable: list[str] = []
        for record in records:
            replayed = replay(context.mod, record.trace, state.postprocs, state.replay_seed)
            if replayed.shash is None:
                unusable.append(str(replayed.error))
                continue
            run_secs = valid_run_secs(record.run_secs)
            state.pool.add(replayed.shash, run_secs, record.trace if run_secs else None)
        if unusable:
            self._logger.warning(
                "droplet: %d of %d database records of this workload do not replay on it and "
                "are ignored (kept in the database); first error: %s",
                len(unusable),
                len(records),
                unusable[0][:300],
            )
        return len(records) - len(unusable)


def _hash_of(sch) -> int:
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    return int(tvm_ffi.structural_hash(sch.mod))


def _brief(error_msg: str | None) -> str:
    """The first and last lines of an error message (its headline and the exception)."""
    lines = [line.strip() for line in (error_msg or "no valid run time").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1 and lines[-1] != lines[0]:
        return f"{lines[0][:150]} ... {lines[-1][:200]}"
    return lines[0][:300] if lines else "no valid run time"
