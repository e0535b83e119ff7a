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


@dataclass
class Counters:
    """What a run did, for the summary and the report."""

    exploration: int = 0
    descent: int = 0
    remeasured: int = 0
    invalid: int = 0
    duplicates: int = 0
    failures: int = 0
    moves: int = 0
    restarts: int = 0


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
        )
