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
"""The state of one droplet run, from ``pre_tuning`` to ``post_tuning``, in parts.

A run measures into a :class:`MeasurementPool` that lives as long as the run, and descends
with a :class:`DescentRun` that a restart replaces (:meth:`RunState.restart`). The
:class:`RunHooks` are the run's outside concerns (a lock, a stop request), which do nothing by
default. Pure Python with numpy: no TVM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Vector = tuple

# The causes of a failed candidate told apart by :func:`classify_failure`.
BUILDER_TIMEOUT = "builder timeout"
BUILD_ERROR = "build error"
RUNNER_TIMEOUT = "runner timeout"
RUN_ERROR = "run error"
RPC_FAILURE = "RPC"
FAILURE_FIXES = {
    BUILDER_TIMEOUT: "building one candidate took longer than the builder's time limit, as on a "
    "slow or busy machine: give the builder more time, e.g. LocalBuilder(timeout_sec=120), or "
    "fewer parallel builds, e.g. LocalBuilder(max_workers=1)",
    BUILD_ERROR: "the candidates do not compile: check the target (its -mtriple, -mcpu and "
    "-mattr must suit the compiler) and the kernel; the task log in work_dir/logs has the "
    "whole error",
    RUNNER_TIMEOUT: "running one candidate took longer than the runner's time limit: give the "
    "runner more time, e.g. LocalRunner(timeout_sec=...), or tune a smaller kernel",
    RUN_ERROR: "the built candidates fail to run: check that the target's -mcpu suits the "
    "machine that runs them (an instruction it lacks crashes every candidate) and the kernel; "
    "the task log in work_dir/logs has the whole error",
    RPC_FAILURE: "the RPC measurement failed: check the tracker and its servers "
    "(python -m tvm.exec.query_rpc_tracker), that the servers run the target's architecture, "
    "and the runner's session timeout",
}
"""The fix suggested for each cause, for a warning that names it."""

_RPC_MARKERS = ("rpcrunner", "rpcsession", "rpcerror", "rpc server", "tracker")


def classify_failure(error_msg: str | None, stage: str | None = None) -> str:
    """The cause of one failed candidate, from its builder's or runner's error message.

    Parameters
    ----------
    error_msg : str or None
        ``BuilderResult.error_msg`` or ``RunnerResult.error_msg`` (MetaSchedule hands a failed
        build's message to the strategy as the runner result's); ``None``: the runner gave no
        error but no valid time either.
    stage : {"build", "run"} or None
        Where the message comes from, when the caller knows; ``None``: told from the message's
        first line (``LocalBuilder: ...``, ``FastBuilder: ...`` name a builder).

    Returns
    -------
    str
        One of :data:`FAILURE_FIXES`' keys: ``"builder timeout"``, ``"build error"``,
        ``"runner timeout"``, ``"run error"`` or ``"RPC"``.
    """
    text = (error_msg or "").strip()
    first = text.splitlines()[0] if text else ""
    lower = text.lower()
    # "Timeout" on the headline only: a traceback further down may mention any timeout.
    timed_out = "timeout" in first.lower()
    if stage == "build" or (stage is None and "build" in first.lower()):
        return BUILDER_TIMEOUT if timed_out else BUILD_ERROR
    if any(marker in lower for marker in _RPC_MARKERS):
        return RPC_FAILURE
    return RUNNER_TIMEOUT if timed_out else RUN_ERROR


class FailureWatch:
    """Failed candidates of one run by cause, and when they deserve a warning.

    A run of failures with one cause as long as the task's first batch (a whole batch, or the
    task's first candidates) points at the environment rather than at odd schedules: it is
    reported once per cause (:meth:`observe` returns the cause then).
    """

    def __init__(self) -> None:
        self.by_cause: dict[str, int] = {}
        self.examples: dict[str, str] = {}  # cause -> its first error message
        self.threshold: int | None = None  # the size of the task's first measured batch
        self.streak_cause: str | None = None
        self.streak = 0
        self.warned: set[str] = set()

    def new_batch(self, size: int) -> None:
        """A batch of ``size`` candidates was measured; the first one sets the threshold."""
        if self.threshold is None and size > 0:
            self.threshold = size

    def succeeded(self) -> None:
        """A candidate ran: the run of failures ends."""
        self.streak_cause, self.streak = None, 0

    def observe(self, error_msg: str | None) -> str | None:
        """Count one failed candidate; return its cause when that now calls for the warning."""
        cause = classify_failure(error_msg)
        self.by_cause[cause] = self.by_cause.get(cause, 0) + 1
        self.examples.setdefault(cause, (error_msg or "no valid run time").strip())
        if cause != self.streak_cause:
            self.streak_cause, self.streak = cause, 0
        self.streak += 1
        if cause in self.warned or self.streak < (self.threshold or 1):
            return None
        self.warned.add(cause)
        return cause


class RunHooks:
    """What a run asks of its environment; this default asks nothing.

    A host application overrides it to lock a work directory for the run's duration or to
    stop runs on a signal.
    """

    def acquire(self, database) -> Any:
        """Called by ``pre_tuning`` before anything is read; returns a token for :meth:`release`.

        May raise to refuse the run (nothing is measured then).
        """
        del database
        return None

    def release(self, token) -> None:
        """Called once by ``post_tuning`` (or a failed ``pre_tuning``) with the token."""
        del token

    def should_stop(self) -> bool:
        """Checked before every batch: True ends the task with what was measured so far."""
        return False

    def failure_fix(self, cause: str) -> str:
        """The fix named by the warning about many failures of ``cause`` (see
        :func:`classify_failure`)."""
        return FAILURE_FIXES.get(cause, "see the task log in work_dir/logs for the error")


@dataclass
class Counters:
    """What a run did, for the summary and the report (the fields of :class:`DropletReport`)."""

    exploration: int = 0  # candidates sent by the evolutionary exploration
    descent: int = 0  # candidates sent by the descent, re-measurements included
    remeasured: int = 0  # of those, schedules measured again to decide a contested move
    invalid: int = 0  # neighbors that failed to replay or to pass the postprocessors
    duplicates: int = 0  # candidates skipped: their module was measured before
    failures: int = 0  # measured candidates whose build or run failed
    moves: int = 0  # accepted moves of the descent
    restarts: int = 0  # explorations after a local optimum
    snapped: int = 0  # neighbors kept with a compute location snapped to a legal one


@dataclass
class Batch:
    """What was sent in the last batch: per candidate, the vectors it stands for and its hash."""

    vectors: list[list[Vector]] = field(default_factory=list)
    hashes: list[int | None] = field(default_factory=list)


class MeasurementPool:
    """Every measurement of the run by structural hash of the module, kept across restarts."""

    def __init__(self) -> None:
        self.measured: dict[int, list[float]] = {}  # structural hash -> pooled run times
        self.traces: dict[int, object] = {}  # structural hash -> a trace that builds it
        self.failed: set[int] = set()
        self.best = math.inf
        self.visited: set[int] = set()  # hashes of schedules a descent began or ended on

    def add(self, shash: int, samples: list[float], trace=None) -> None:
        """Pool one measurement (``samples`` empty: it failed) and remember a trace of it."""
        if trace is not None:
            self.traces.setdefault(shash, trace)
        if samples:
            self.measured.setdefault(shash, []).extend(samples)
            self.best = min(self.best, float(np.mean(samples)))
        else:
            self.failed.add(shash)

    def knows(self, shash: int | None) -> bool:
        """Whether the module was measured already (successfully or not)."""
        return shash in self.measured or shash in self.failed

    def samples(self, shash: int | None) -> list[float]:
        """Its pooled run times (empty if never measured successfully)."""
        return self.measured.get(shash, [])

    def untried_starts(self) -> list[tuple[float, int]]:
        """(mean run time, hash) of each rebuildable schedule no descent began or ended on,
        fastest first."""
        return sorted(
            (float(np.mean(samples)), shash)
            for shash, samples in self.measured.items()
            if shash in self.traces and shash not in self.visited
        )

    def mark_visited(self, shash: int | None) -> None:
        """No later descent begins on this schedule."""
        if shash is not None:
            self.visited.add(shash)


class DescentRun:
    """One descent: its core, its space and what it built; a restart starts a new one."""

    def __init__(self) -> None:
        self.started = False
        self.core = None  # the DescentCore, once a start was found
        self.space = None  # the TraceSpace of the start
        self.hash_of: dict[Vector, int] = {}  # vector -> structural hash of its module
        self.replays: dict[Vector, object] = {}  # schedules built to rank the neighborhood
        # A known start to measure again, with its earlier run times, until the result is in.
        self.start_known: tuple[Vector, list[float]] | None = None

    @property
    def incumbent_hash(self) -> int | None:
        """The structural hash of the descent's current schedule, if known."""
        return None if self.core is None else self.hash_of.get(self.core.incumbent)


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
    failure_causes: dict = field(default_factory=dict)  # cause -> failed candidates
    snapped: int = 0


class RunState:
    """Everything that lives from ``pre_tuning`` to ``post_tuning``.

    ``phase`` is ``"exploration"``, ``"descent"`` or ``"done"``.
    """

    def __init__(self, max_trials, num_trials_per_iter, design_spaces, database) -> None:
        self.max_trials = max_trials
        self.num_trials_per_iter = num_trials_per_iter
        self.design_spaces = list(design_spaces)
        self.database = database
        self.trials = 0
        self.phase = "exploration"
        self.counts = Counters()
        self.pool = MeasurementPool()
        self.descent = DescentRun()
        self.batch = Batch()
        self.postprocs: list = []
        self.replay_seed = 1
        self.rng = np.random.default_rng(0)  # reseeded from the tune context in pre_tuning
        self.inner = None  # the EvolutionarySearch of the current exploration
        self.cost_model = None  # handed to each evolutionary exploration round
        self.stop_reason: str | None = None
        self.exploration_budget = 0
        self.explored_before_restart: int | None = None  # exploration count at the last restart
        self.search_secs = 0.0  # time spent in this strategy's own descent code
        self.rank_secs = 0.0  # of search_secs: building and scoring neighbors to rank them
        self.descent_start = math.nan  # mean run time of the first descent's starting schedule
        self.hook_token = None  # what RunHooks.acquire returned, released in post_tuning
        self.failures = FailureWatch()  # failed candidates by cause, kept across restarts

    def stop(self, reason: str | None = None) -> None:
        """End the task: nothing more is generated (``reason`` kept if given)."""
        self.stop_reason = reason or self.stop_reason
        self.phase = "done"

    def restart(self, trials: int) -> None:
        """Explore ``trials`` more, then descend anew: the pool stays, the descent goes.

        The finished descent's schedule becomes visited, so no later descent begins there.
        """
        self.pool.mark_visited(self.descent.incumbent_hash)
        self.counts.restarts += 1
        self.exploration_budget = self.counts.exploration + trials
        self.explored_before_restart = self.counts.exploration
        self.descent = DescentRun()
        self.stop_reason = None
        self.phase = "exploration"

    def report(self, task_name: str) -> DropletReport:
        """What this run did, for ``DropletSearch.reports``."""
        c = self.counts
        return DropletReport(
            task_name=task_name,
            trials=self.trials,
            exploration=c.exploration,
            descent=c.descent,
            remeasured=c.remeasured,
            moves=c.moves,
            invalid=c.invalid,
            duplicates=c.duplicates,
            failures=c.failures,
            best_secs=self.pool.best,
            stop_reason=self.stop_reason or "budget spent",
            descent_search_secs=self.search_secs,
            descent_start_secs=self.descent_start,
            restarts=c.restarts,
            rank_secs=self.rank_secs,
            failure_causes=dict(self.failures.by_cause),
            snapped=c.snapped,
        )
