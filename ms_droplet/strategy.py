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
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.search_strategy import (
    EvolutionarySearch,
    MeasureCandidate,
    PySearchStrategy,
)

from ._descent import DescentConfig, DescentCore, Move, Vector
from ._samples import result_run_secs, valid_run_secs
from ._trace import TraceSpace, replay
from .interrupt import stop_requested
from .workdir import acquire_work_dir, release_work_dir

_LOG_PREFIX = "tvm.s_tir.meta_schedule.logging.task_"
# Evolutionary batches made only of already-measured modules before exploration gives up.
_MAX_EMPTY_EXPLORATION_BATCHES = 3
_EVOLUTIONARY_OPTIONS = tuple(
    name for name in inspect.signature(EvolutionarySearch.__init__).parameters if name != "self"
)


def default_exploration_trials(max_trials: int, trials_per_iter: int | None = None) -> int:
    """The exploration budget used when ``exploration_trials`` is not given.

    Half of the task's budget (rounded up), at least 16 trials and at most 300 (the paper
    explored 300 samples of a 10,000 budget), rounded up to whole batches of ``trials_per_iter``
    when it is given, never more than ``max_trials``.

    Why half: at 128 trials (16 a batch) exploring 64 before descending gave 1.030x faster
    kernels than exploring 48 (30 %), faster in 12 of 19 paired runs of the CPU benchmark (not
    significant) at 1.09x the tuning time, and droplet's gap to evolutionary search at 4x the
    budget shrank as its exploration grew (``docs/benchmarks/budget-128.md``); at 64 trials,
    descending from 32 beat 32 more evolutionary trials (``descent-ab.md``).

    Why whole batches: each evolutionary batch is a whole generation, and a trailing partial
    one (3 trials at a budget of 64 and 16 a batch, with 30 %) spends a generation on a few
    candidates; in 14 evolutionary runs of the CPU benchmark the best after 32 trials was 1.20x
    faster (geometric mean) than after 19, the second batch being the first that the cost model
    guides.
    """
    explore = max(16, min(300, (max_trials + 1) // 2))
    if trials_per_iter:
        explore = -(-explore // trials_per_iter) * trials_per_iter
    return max(0, min(max_trials, explore))


def _task_logger(task_name: str) -> logging.Logger:
    """The per-task logger MetaSchedule made for ``task_name`` (files in work_dir/logs)."""
    pattern = re.compile(re.escape(_LOG_PREFIX) + r"\d+_" + re.escape(task_name[:100]) + r"$")
    for name in list(logging.Logger.manager.loggerDict):
        if pattern.match(name):
            logger = logging.getLogger(name)
            if logger.handlers:
                return logger
    return logging.getLogger("tvm.s_tir.meta_schedule")


@dataclass
class _Counters:
    exploration: int = 0
    descent: int = 0
    remeasured: int = 0
    invalid: int = 0
    duplicates: int = 0
    failures: int = 0
    moves: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class DropletReport:
    """What one task's droplet search did, appended to ``DropletSearch.reports`` at its end."""

    task_name: str
    trials: int
    exploration: int
    descent: int
    remeasured: int
    moves: int
    invalid: int
    duplicates: int
    failures: int
    best_secs: float
    stop_reason: str
    descent_search_secs: float
    descent_start_secs: float
    restarts: int = 0
    rank_secs: float = 0.0


@dataclass
class _Batch:
    """What was sent in the last batch: per candidate, the vectors it stands for and its hash."""

    vectors: list[list[Vector]] = field(default_factory=list)
    hashes: list[int | None] = field(default_factory=list)


class _RunState:
    """Everything that lives from ``pre_tuning`` to ``post_tuning``."""

    def __init__(self, max_trials, num_trials_per_iter, design_spaces, database):
        self.max_trials = max_trials
        self.num_trials_per_iter = num_trials_per_iter
        self.design_spaces = list(design_spaces)
        self.database = database
        self.trials = 0
        self.phase = "exploration"
        self.counts = _Counters()
        self.measured: dict[int, list[float]] = {}  # structural hash -> pooled run times
        self.traces: dict[int, object] = {}  # structural hash -> a trace that builds it
        self.postprocs: list = []
        self.replay_seed = 1
        self.rng = np.random.default_rng(0)  # reseeded from the tune context in pre_tuning
        self.failed: set[int] = set()
        self.inner: EvolutionarySearch | None = None
        self.space: TraceSpace | None = None
        self.core: DescentCore | None = None
        self.hash_of: dict[Vector, int] = {}  # vector -> structural hash of its module
        self.batch = _Batch()
        self.stop_reason: str | None = None
        self.best = math.inf
        self.exploration_budget = 0
        self.descent_started = False
        self.search_secs = 0.0  # time spent in this strategy's own descent code
        self.lock: str | None = None  # the work directory lock held until post_tuning
        self.descent_start = math.nan  # mean run time of the descent's starting schedule
        # A known start to measure again, with its earlier run times, until the result is in.
        self.start_known: tuple[Vector, list[float]] | None = None
        self.cost_model = None  # handed to each evolutionary exploration round
        self.visited: set[int] = set()  # hashes of schedules a descent began or ended on
        self.explored_before_restart: int | None = None  # exploration count at the last restart
        self.replays: dict[Vector, object] = {}  # schedules built to rank the neighborhood
        self.rank_secs = 0.0  # of search_secs: building and scoring neighbors to rank them


@derived_object
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
    exploration_trials : Optional[int]
        Trials given to evolutionary search, counted in the task's budget. ``None``: see
        :func:`default_exploration_trials` (half the budget, between 16 and 300, rounded up
        to whole batches: 64 of 128 at 16 a batch). ``0``
        starts the descent from the database's best record, or from the design space.
    p_value : float
        Significance level of the acceptance test, in (0, 1).
    min_gain : float
        Smallest relative speed-up worth testing, in [0, 1).
    max_step : int
        Largest step of the neighborhood (steps beyond 1 are the paper's speculation).
    min_measurements : int
        Measurements (runner calls) of both sides before a move can be accepted (>= 1).
    max_measurements : int
        How many times one schedule may be measured to decide a contested move
        (>= ``min_measurements``).
    sure_gain : float
        A relative gain, in [0, 1], so far above the noise between runner calls (3-9 % on the
        2-core CPUs this was tuned on) that one call on each side is enough when its timings
        pass the test (1.0: never). Once three schedules were measured in two calls, the bound
        becomes three times the measured between-call noise (90th percentile) when that is
        lower, but never below ``min_gain``: on a GPU, where calls agree within ~0.5 %, a 2 %
        gain then moves after one call.
    descent_batch : Optional[int]
        Most candidates in one descent batch (``None``: the tuner's ``num_trials_per_iter``).
        The descent decides a move once per batch, so at most one move per batch: at a budget
        of 64 trials and 16 a batch it had three batches, and made two moves in 45 trials on a
        GPU matmul while 26 of those trials were faster than where it started. Smaller batches
        make more moves per trial; builds of a batch run in parallel, so very small ones leave
        build workers idle.
    max_restarts : Optional[int]
        How many times a finished descent may restart with more exploration while budget is
        left (``None``: until the budget is spent; ``0``: never, leaving the rest unused).
    rank_neighbors : bool
        Measure the step-1 neighbors in the order the tuner's cost model predicts best first
        (the model the exploration trained, updated after every batch) instead of a random
        order. It decides only which neighbors are measured first; moves are still accepted
        on measurements alone. Off by default: in two A/Bs of 21 runs on CPU it made no
        measurable difference (0.955x) and costs a replay of every step-1 neighbor per move
        (``docs/benchmarks/ab-rank.md``).
    remeasure_start : bool
        Measure the descent's starting schedule again, in the first descent batch beside its
        first neighbors, and compare neighbors with that measurement only (if it fails, with
        the recorded one). The start is the fastest of many measured schedules, so its
        recorded time is biased low (the winner's curse: 1.16x on the CPU kernels of
        ``docs/benchmarks/descent-ab.md``), and against it neighbors with real gains smaller
        than the bias are rejected without a second look. Costs one trial a descent. Off by
        default: in paired A/Bs of 36 descents from shared starts it made no measurable
        difference (1.03x on a 2-core CPU, 0.92x on a busy 16-core one; 0.97x pooled).
    **evolutionary_options
        Passed to ``EvolutionarySearch`` (``population_size``, ``init_measured_ratio``,
        ``init_min_unmeasured``, ``max_fail_count``, ``genetic_num_iters``,
        ``genetic_mutate_prob``, ``genetic_max_fail_count``, ``eps_greedy``).
    """

    def __init__(
        self,
        *,
        exploration_trials: int | None = None,
        p_value: float = 0.05,
        min_gain: float = 0.01,
        max_step: int = 2,
        min_measurements: int = 2,
        max_measurements: int = 3,
        sure_gain: float = 0.1,
        descent_batch: int | None = 8,
        max_restarts: int | None = None,
        rank_neighbors: bool = False,
        remeasure_start: bool = False,
        **evolutionary_options,
    ) -> None:
        _check_int("exploration_trials", exploration_trials, minimum=0, allow_none=True)
        _check_number("p_value", p_value, low=0.0, high=1.0, low_open=True, high_open=True)
        _check_number("min_gain", min_gain, low=0.0, high=1.0, low_open=False, high_open=True)
        _check_int("max_step", max_step, minimum=1)
        _check_number("sure_gain", sure_gain, low=0.0, high=1.0, low_open=False, high_open=False)
        _check_int("min_measurements", min_measurements, minimum=1)
        _check_int("max_measurements", max_measurements, minimum=1)
        _check_int("max_restarts", max_restarts, minimum=0, allow_none=True)
        _check_int("descent_batch", descent_batch, minimum=1, allow_none=True)
        for flag, value in (
            ("rank_neighbors", rank_neighbors),
            ("remeasure_start", remeasure_start),
        ):
            if not isinstance(value, bool):
                raise ValueError(
                    f"DropletSearch: {flag} must be True or False, got {value!r}; {_fix(flag)}"
                )
        if max_measurements < min_measurements:
            raise ValueError(
                f"DropletSearch: max_measurements must be >= min_measurements, got "
                f"max_measurements={max_measurements} < min_measurements={min_measurements}; "
                "raise max_measurements or lower min_measurements"
            )
        unknown = sorted(set(evolutionary_options) - set(_EVOLUTIONARY_OPTIONS))
        if unknown:
            raise TypeError(
                f"DropletSearch: unknown option(s) {unknown}; the options are "
                "exploration_trials, p_value, min_gain, max_step, min_measurements, "
                "max_measurements, sure_gain, descent_batch, max_restarts, rank_neighbors, "
                "remeasure_start and the "
                f"EvolutionarySearch options {list(_EVOLUTIONARY_OPTIONS)}"
            )
        self.exploration_trials = exploration_trials
        self.max_restarts = max_restarts
        self.descent_batch = descent_batch
        self.rank_neighbors = rank_neighbors
        self.remeasure_start = remeasure_start
        self.config = DescentConfig(
            p_value=float(p_value),
            min_gain=float(min_gain),
            max_step=int(max_step),
            min_measurements=int(min_measurements),
            max_measurements=int(max_measurements),
            sure_gain=float(sure_gain),
        )
        self.evolutionary_options = dict(evolutionary_options)
        self._context = None
        self._first_inner: EvolutionarySearch | None = None
        self._state: _RunState | None = None
        self._logger = logging.getLogger("tvm.s_tir.meta_schedule")
        # Shared with every clone: MetaSchedule tunes clones, so this is where a caller finds
        # one DropletReport per task after tuning.
        self.reports: list[DropletReport] = []

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
        # Raises WorkDirBusyError while another process tunes into the same work_dir: refusing
        # here aborts the run before anything is measured.
        lock = _lock_database_dir(database)
        try:
            self._prepare(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        except BaseException:
            if lock is not None:
                release_work_dir(lock)
            raise
        self._state.lock = lock

    def _prepare(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        """``pre_tuning`` after the checks: read the database, set up exploration."""
        state = _RunState(int(max_trials), int(num_trials_per_iter), design_spaces, database)
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
                "re-measurements), %d accepted moves, %d restarts, %d invalid neighbors dropped, "
                "%d duplicates skipped, %d failed measurements, best %s, %.2f s in descent "
                "search (%.2f s ranking neighbors); stop: %s",
                state.trials,
                c.exploration,
                c.descent,
                c.remeasured,
                c.moves,
                c.restarts,
                c.invalid,
                c.duplicates,
                c.failures,
                _fmt_secs(state.best),
                state.search_secs,
                state.rank_secs,
                state.stop_reason or "budget spent",
            )
            self.reports.append(
                DropletReport(
                    task_name=str(self._context.task_name),
                    trials=state.trials,
                    exploration=c.exploration,
                    descent=c.descent,
                    remeasured=c.remeasured,
                    moves=c.moves,
                    invalid=c.invalid,
                    duplicates=c.duplicates,
                    failures=c.failures,
                    best_secs=state.best,
                    stop_reason=state.stop_reason or "budget spent",
                    descent_search_secs=state.search_secs,
                    descent_start_secs=state.descent_start,
                    restarts=c.restarts,
                    rank_secs=state.rank_secs,
                )
            )
        finally:
            self._state = None
            if state.lock is not None:
                release_work_dir(state.lock)

    def generate_measure_candidates(self) -> list[MeasureCandidate] | None:
        state = self._state
        if state is None:
            self._logger.error("droplet: generate_measure_candidates called before pre_tuning")
            return None
        try:
            remaining = state.max_trials - state.trials
            if stop_requested():
                state.stop_reason = "stopped on request (SIGINT/SIGTERM)"
                state.phase = "done"
                self._logger.warning(
                    "droplet: %s; %d trials measured", state.stop_reason, state.trials
                )
                return None
            if remaining <= 0:
                state.stop_reason = state.stop_reason or "budget spent"
                return None
            candidates = None
            # At most one restart per call: a restart whose exploration and descent both come
            # back empty ends the task instead of looping.
            for attempt in range(2):
                if state.phase == "exploration":
                    candidates = self._explore(state, remaining)
                if candidates is None and state.phase == "descent":
                    tic = time.perf_counter()
                    if not state.descent_started:
                        state.descent_started = True
                        self._start_descent(state)
                    cap = min(remaining, state.num_trials_per_iter, self.descent_batch or remaining)
                    candidates = self._descend(state, cap)
                    state.search_secs += time.perf_counter() - tic
                if candidates or attempt or not self._restart(state, remaining):
                    break
            if not candidates:
                state.phase = "done"
                return None
            state.trials += len(candidates)
            return candidates
        except Exception:  # noqa: BLE001 - an exception here would abort the whole tuning run
            self._logger.exception("droplet: unexpected error; ending this task's search")
            state.stop_reason = "internal error (see the traceback above)"
            state.phase = "done"
            return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        state = self._state
        if state is None:
            return
        try:
            if state.phase == "exploration" and state.inner is not None:
                state.inner.notify_runner_results(measure_candidates, results)
            batch, state.batch = state.batch, _Batch()
            for i, (candidate, result) in enumerate(zip(measure_candidates, results)):
                samples = result_run_secs(result)
                shash = batch.hashes[i] if i < len(batch.hashes) else None
                if shash is None:
                    shash = _hash_of(candidate.sch)
                state.traces.setdefault(shash, candidate.sch.trace)
                if samples:
                    state.measured.setdefault(shash, []).extend(samples)
                    state.best = min(state.best, float(np.mean(samples)))
                else:
                    state.counts.failures += 1
                    state.failed.add(shash)
                    self._logger.debug("droplet: candidate failed: %s", _brief(result.error_msg))
                if state.core is not None and i < len(batch.vectors):
                    for vector in batch.vectors[i]:
                        if state.start_known is not None and vector == state.start_known[0]:
                            # A failed second look at a start that ran before: descend on
                            # its earlier run times rather than end the descent.
                            samples = samples or state.start_known[1]
                            state.start_known = None
                        state.core.observe(vector, samples)
            if state.core is not None and batch.vectors:
                tic = time.perf_counter()
                self._log_move(state, state.core.conclude())
                state.search_secs += time.perf_counter() - tic
        except Exception:  # noqa: BLE001 - an exception here would abort the whole tuning run
            self._logger.exception("droplet: unexpected error while reading runner results")

    def clone(self) -> DropletSearch:
        twin = DropletSearch(
            exploration_trials=self.exploration_trials,
            p_value=self.config.p_value,
            min_gain=self.config.min_gain,
            max_step=self.config.max_step,
            min_measurements=self.config.min_measurements,
            max_measurements=self.config.max_measurements,
            sure_gain=self.config.sure_gain,
            descent_batch=self.descent_batch,
            max_restarts=self.max_restarts,
            rank_neighbors=self.rank_neighbors,
            remeasure_start=self.remeasure_start,
            **self.evolutionary_options,
        )
        twin.reports = self.reports
        return twin

    # ------------------------------------------------------------------ phases
    def _explore(self, state: _RunState, remaining: int) -> list[MeasureCandidate] | None:
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
                if shash in state.measured or shash in state.failed or shash in hashes:
                    state.counts.duplicates += 1
                    continue
                fresh.append(candidate)
                hashes.append(shash)
            if fresh:
                fresh, hashes = fresh[:left], hashes[:left]
                state.counts.exploration += len(fresh)
                state.batch = _Batch(hashes=hashes)
                return fresh
        self._finish_exploration(state)
        state.phase = "descent"
        return None

    def _new_inner(self) -> EvolutionarySearch:
        inner = EvolutionarySearch(**self.evolutionary_options)
        inner._initialize_with_tune_context(self._context)  # pylint: disable=protected-access
        return inner

    def _start_exploration(self, state: _RunState, trials: int) -> None:
        inner, self._first_inner = self._first_inner or self._new_inner(), None
        inner.pre_tuning(
            trials, state.num_trials_per_iter, state.design_spaces, state.database, state.cost_model
        )
        state.inner = inner

    def _restart(self, state: _RunState, remaining: int) -> bool:
        """After a descent ended with budget left: explore one more batch, then descend anew.

        Returns False (and the task ends) when restarts are used up or impossible.
        """
        core = state.core
        if core is None or not core.incumbent_samples:
            return False  # no descent ran (nothing to descend on), or its start failed
        if self.max_restarts is not None and state.counts.restarts >= self.max_restarts:
            return False
        shash = state.hash_of.get(core.incumbent)
        if shash is not None:
            state.visited.add(shash)
        state.counts.restarts += 1
        trials = min(remaining, state.num_trials_per_iter)
        self._logger.info(
            "droplet: restart %d: the descent ended (%s) at %s with %d trials left; exploring "
            "%d more, then descending from the best schedule no descent began or ended on",
            state.counts.restarts,
            state.stop_reason,
            _fmt_secs(float(np.mean(core.incumbent_samples))),
            remaining,
            trials,
        )
        state.exploration_budget = state.counts.exploration + trials
        state.explored_before_restart = state.counts.exploration
        state.core, state.space, state.hash_of, state.replays = None, None, {}, {}
        state.descent_started = False
        state.stop_reason = None
        state.phase = "exploration"
        self._start_exploration(state, trials)
        return True

    def _finish_exploration(self, state: _RunState) -> None:
        if state.inner is not None:
            state.inner.post_tuning()
            state.inner = None

    def _load_database(self, state: _RunState) -> int:
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
            if run_secs:
                state.measured.setdefault(replayed.shash, []).extend(run_secs)
                state.traces.setdefault(replayed.shash, record.trace)
                state.best = min(state.best, float(np.mean(run_secs)))
            else:
                state.failed.add(replayed.shash)
        if unusable:
            self._logger.warning(
                "droplet: %d of %d database records of this workload do not replay on it and "
                "are ignored (kept in the database); first error: %s",
                len(unusable),
                len(records),
                unusable[0][:300],
            )
        return len(records) - len(unusable)

    def _start_descent(self, state: _RunState) -> None:
        mod = self._context.mod
        if state.explored_before_restart == state.counts.exploration:
            # Evolutionary search found nothing unmeasured: the space looks exhausted, and a
            # descent over known schedules would only measure them again (a 60-schedule NRM
            # spent 68 of 128 trials that way, 5x evolutionary search's tuning time).
            state.stop_reason = "a restart's exploration found nothing new to measure"
            self._logger.info("droplet: %s; the task ends", state.stop_reason)
            return
        start_trace, start_hash = None, None
        ranked = sorted(
            (float(np.mean(samples)), shash)
            for shash, samples in state.measured.items()
            if shash in state.traces and shash not in state.visited
        )
        if ranked:
            start_hash = ranked[0][1]
            start_trace = state.traces[start_hash]
            source = f"the best measured schedule ({len(ranked)} known, database included)"
        elif state.visited:
            state.stop_reason = "every measured schedule is where an earlier descent began or ended"
            return
        elif state.design_spaces:
            start_trace = state.design_spaces[0].trace
            source = "the design space (nothing measured yet)"
        else:
            state.stop_reason = "no design space and no measured schedule to start from"
            return
        space = TraceSpace(mod, start_trace, state.postprocs, state.replay_seed)
        state.space = space
        if not space.insts:
            state.stop_reason = "the schedule has no sampling decisions: exploration only"
            self._logger.info("droplet: %s", state.stop_reason)
            return
        start = space.start
        start_samples = state.measured.get(start_hash, []) if start_hash is not None else []
        if start_hash is not None:
            state.visited.add(start_hash)  # no later descent begins here again
            state.hash_of[start] = start_hash  # known without a replay
        if start_samples and math.isnan(state.descent_start):  # the first descent's start
            state.descent_start = float(np.mean(start_samples))
        # The start won a selection among noisy measurements: its own are biased low. The
        # core then gets none and measures it again beside its first neighbors.
        again = self.remeasure_start and bool(start_samples)
        state.start_known = (start, list(start_samples)) if again else None
        state.core = DescentCore(
            start,
            [] if again else start_samples,
            space.coordinates_at(start),
            self.config,
            state.rng,
            coordinates_at=space.coordinates_at,
            rank=(lambda vectors: self._rank(state, vectors)) if self.rank_neighbors else None,
        )
        self._logger.info(
            "droplet: exploration done after %d trials; descent starts from %s, %s, over %d "
            "decisions"
            + (" (no descent began or ended there before)" if state.counts.restarts else "")
            + ("; measuring it again" if again else ""),
            state.counts.exploration,
            source,
            _fmt_secs(float(np.mean(start_samples)) if start_samples else math.inf),
            len(start),
        )

    def _descend(self, state: _RunState, cap: int) -> list[MeasureCandidate] | None:
        core, space = state.core, state.space
        if core is None or space is None:
            return None
        batch: list[MeasureCandidate] = []
        vectors: list[list[Vector]] = []
        hashes: list[int | None] = []
        slot_of_hash: dict[int, int] = {}
        while len(batch) < cap:
            proposals = core.propose(cap - len(batch))
            if not proposals:
                if batch:
                    break
                self._log_move(state, core.conclude())
                proposals = core.propose(cap)
                if not proposals:
                    break
            for proposal in proposals:
                vector = proposal.vector
                # Schedules are not kept (memory): a module is replayed again when measured.
                sch, shash = state.replays.pop(vector, None), state.hash_of.get(vector)
                if shash is None:
                    sch = self._replay(state, vector)
                    if sch is None:
                        continue
                    shash = state.hash_of[vector]
                known = state.start_known
                if proposal.remeasure or (known is not None and vector == known[0]):
                    state.counts.remeasured += 1
                elif shash in state.failed or shash in state.measured:
                    state.counts.duplicates += 1
                    core.observe(vector, state.measured.get(shash, []))
                    continue
                elif shash in slot_of_hash:
                    state.counts.duplicates += 1
                    vectors[slot_of_hash[shash]].append(vector)
                    continue
                if sch is None:
                    sch = self._replay(state, vector)
                    if sch is None:
                        continue
                slot_of_hash[shash] = len(batch)
                batch.append(
                    MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
                )
                vectors.append([vector])
                hashes.append(shash)
        if not batch:
            state.stop_reason = core.stop_reason or "no legal neighbor left to measure"
            self._logger.info(
                "droplet: descent stops: %s; best %s after %d moves",
                state.stop_reason,
                _fmt_secs(float(np.mean(core.incumbent_samples)))
                if core.incumbent_samples
                else "-",
                state.counts.moves,
            )
            return None
        state.counts.descent += len(batch)
        state.batch = _Batch(vectors, hashes)
        return batch

    def _rank(self, state: _RunState, vectors: list[Vector]) -> list[float | None] | None:
        """The cost model's scores of ``vectors`` (None: cannot be built), for the core's order.

        The schedules are kept until the next ranking, so a measured one is not built twice.
        Returns None (the core keeps its random order) if the model cannot score them.
        """
        tic = time.perf_counter()
        state.replays = {}
        scores: list[float | None] = [None] * len(vectors)
        slots, candidates = [], []
        for n, vector in enumerate(vectors):
            shash = state.hash_of.get(vector)
            if shash is not None and (shash in state.measured or shash in state.failed):
                scores[n] = math.inf  # measured already: observed without a trial, so first
                continue
            sch = self._replay(state, vector, reject=False)  # the core rejects a None score
            if sch is None:
                continue
            state.replays[vector] = sch
            slots.append(n)
            candidates.append(
                MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
            )
        try:
            predicted = state.cost_model.predict(self._context, candidates) if candidates else []
        except Exception:  # noqa: BLE001 - ranking is an optimization; never fail the run on it
            self._logger.warning("droplet: the cost model could not rank neighbors; random order")
            state.rank_secs += time.perf_counter() - tic
            return None
        for n, score in zip(slots, predicted):
            scores[n] = float(score)
        state.rank_secs += time.perf_counter() - tic
        return scores

    def _replay(self, state: _RunState, vector: Vector, reject: bool = True):
        """The postprocessed schedule of ``vector``, or None (counted, and rejected in the core
        when ``reject``) if invalid."""
        replayed = state.space.replay(vector)
        if replayed.sch is None:
            state.counts.invalid += 1
            if reject:
                state.core.reject(vector)
            self._logger.debug("droplet: invalid neighbor %s: %s", vector, replayed.error)
            return None
        state.hash_of[vector] = replayed.shash
        return replayed.sch

    def _log_move(self, state: _RunState, move: Move | None) -> None:
        if move is None or state.core is None:
            return
        state.counts.moves += 1
        coords = state.core.coordinates
        changes = ", ".join(f"{coords[i].name}: {a} -> {b}" for i, a, b in move.changes)
        self._logger.info(
            "droplet: move %d accepted: %s; speed-up %.3fx, p=%s, now %s (one call suffices "
            "from a %.1f %% gain)",
            state.counts.moves,
            changes,
            move.speedup,
            "n/a" if move.p is None else f"{move.p:.3g}",
            _fmt_secs(float(np.mean(state.core.incumbent_samples))),
            100 * state.core.sure_gain,
        )


def _lock_database_dir(database) -> str | None:
    """Lock the work directory of a ``JSONDatabase`` (None for other databases)."""
    path = getattr(database, "path_tuning_record", None)
    if not path:
        return None
    return acquire_work_dir(os.path.dirname(os.path.abspath(str(path))))


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


def _fmt_secs(secs: float) -> str:
    if not math.isfinite(secs):
        return "none"
    return f"{secs * 1e6:.2f} us"


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"DropletSearch: {name} must be an integer >= {minimum}"
            + (" or None" if allow_none else "")
            + f", got {value!r}; {_fix(name)}"
        )


def _fix(name: str) -> str:
    """How to fix a bad option: its default."""
    default = inspect.signature(DropletSearch.__init__).parameters[name].default
    return f"pass a valid value or leave it out (default {name}={default!r})"


def _check_number(name: str, value, low: float, high: float, low_open: bool, high_open: bool):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(
            f"DropletSearch: {name} must be a number in {interval}, got {value!r}; {_fix(name)}"
        )
