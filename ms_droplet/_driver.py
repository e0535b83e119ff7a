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
"""The descent phase of ``DropletSearch``: a :class:`DescentCore` driven with TVM schedules.

:class:`DescentDriver` picks the descent's start among the measured schedules, turns the
core's proposals into postprocessed ``MeasureCandidate`` s (skipping invalid and already
measured modules), ranks neighbors with the cost model when asked, and logs the moves. It keeps
no state of its own: everything lives in the :class:`RunState` it is handed.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

from ._descent import DescentConfig, DescentCore, Move, Vector
from ._options import DropletOptions
from ._state import Batch, RunState
from ._trace import TraceSpace


def fmt_secs(secs: float) -> str:
    """A run time for the log: microseconds, or "none" when there is none."""
    if not math.isfinite(secs):
        return "none"
    return f"{secs * 1e6:.2f} us"


class DescentDriver:
    """Runs the descents of one task for ``DropletSearch``.

    Parameters
    ----------
    context : TuneContext
        The task's tune context (module, postprocessors, for the cost model).
    options : DropletOptions
        The strategy's options.
    logger : logging.Logger
        The task's logger.
    """

    def __init__(self, context, options: DropletOptions, logger) -> None:
        self._context = context
        self._options = options
        self._config: DescentConfig = options.descent_config()
        self._logger = logger

    def start(self, state: RunState) -> None:
        """Begin a descent from the best measured schedule no descent began or ended on."""
        mod = self._context.mod
        if state.explored_before_restart == state.counts.exploration:
            # Evolutionary search found nothing unmeasured: the space looks exhausted, and a
            # descent over known schedules would only measure them again (a 60-schedule NRM
            # spent 68 of 128 trials that way, 5x evolutionary search's tuning time).
            state.stop_reason = "a restart's exploration found nothing new to measure"
            self._logger.info("droplet: %s; the task ends", state.stop_reason)
            return
        pool, run = state.pool, state.descent
        start_trace, start_hash = None, None
        ranked = pool.untried_starts()
        if ranked:
            start_hash = ranked[0][1]
            start_trace = pool.traces[start_hash]
            source = f"the best measured schedule ({len(ranked)} known, database included)"
        elif pool.visited:
            state.stop_reason = "every measured schedule is where an earlier descent began or ended"
            return
        elif state.design_spaces:
            start_trace = state.design_spaces[0].trace
            source = "the design space (nothing measured yet)"
        else:
            state.stop_reason = "no design space and no measured schedule to start from"
            return
        space = TraceSpace(
            mod,
            start_trace,
            state.postprocs,
            state.replay_seed,
            snap_locations=self._options.snap_locations,
        )
        run.space = space
        if not space.insts:
            state.stop_reason = "the schedule has no sampling decisions: exploration only"
            self._logger.info("droplet: %s", state.stop_reason)
            return
        start = space.start
        start_samples = pool.samples(start_hash) if start_hash is not None else []
        if start_hash is not None:
            pool.mark_visited(start_hash)  # no later descent begins here again
            run.hash_of[start] = start_hash  # known without a replay
        if start_samples and math.isnan(state.descent_start):  # the first descent's start
            state.descent_start = float(np.mean(start_samples))
        # The start won a selection among noisy measurements: its own are biased low. The
        # core then gets none and measures it again beside its first neighbors.
        again = self._options.remeasure_start and bool(start_samples)
        run.start_known = (start, list(start_samples)) if again else None
        # With rank_neighbors the cost model orders the step-1 neighbors.
        rank = functools.partial(self._rank, state) if self._options.rank_neighbors else None
        run.core = DescentCore(
            start,
            [] if again else start_samples,
            space.coordinates_at(start),
            self._config,
            state.rng,
            coordinates_at=space.coordinates_at,
            rank=rank,
        )
        self._logger.info(
            "droplet: exploration done after %d trials; descent starts from %s, %s, over %d "
            "decisions"
            + (" (no descent began or ended there before)" if state.counts.restarts else "")
            + ("; measuring it again" if again else ""),
            state.counts.exploration,
            source,
            fmt_secs(float(np.mean(start_samples)) if start_samples else math.inf),
            len(start),
        )

    def next_batch(self, state: RunState, cap: int) -> list[MeasureCandidate] | None:
        """Up to ``cap`` candidates of the descent; None when it has ended."""
        run = state.descent
        core, space = run.core, run.space
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
                self.log_move(state, core.conclude())
                proposals = core.propose(cap)
                if not proposals:
                    break
            for proposal in proposals:
                vector = proposal.vector
                # Schedules are not kept (memory): a module is replayed again when measured.
                sch, shash = run.replays.pop(vector, None), run.hash_of.get(vector)
                if shash is None:
                    sch = self._replay(state, vector)
                    if sch is None:
                        continue
                    shash = run.hash_of[vector]
                known = run.start_known
                if proposal.remeasure or (known is not None and vector == known[0]):
                    state.counts.remeasured += 1
                elif state.pool.knows(shash):
                    state.counts.duplicates += 1
                    core.observe(vector, state.pool.samples(shash))
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
                fmt_secs(float(np.mean(core.incumbent_samples))) if core.incumbent_samples else "-",
                state.counts.moves,
            )
            return None
        state.counts.descent += len(batch)
        state.batch = Batch(vectors, hashes)
        return batch

    def _rank(self, state: RunState, vectors: list[Vector]) -> list[float | None] | None:
        """The cost model's scores of ``vectors`` (None: cannot be built), for the core's order.

        The schedules are kept until the next ranking (one asked again is not replayed again),
        so a measured one is not built twice. Returns None (the core keeps its random order) if
        the model cannot score them.
        """
        tic = time.perf_counter()
        run = state.descent
        kept, run.replays = run.replays, {}
        scores: list[float | None] = [None] * len(vectors)
        slots, candidates = [], []
        for n, vector in enumerate(vectors):
            if state.pool.knows(run.hash_of.get(vector)):
                scores[n] = math.inf  # measured already: observed without a trial, so first
                continue
            sch = kept.get(vector)
            if sch is None:
                sch = self._replay(state, vector, reject=False)  # the core rejects a None score
            if sch is None:
                continue
            if state.pool.knows(run.hash_of.get(vector)):  # another vector's measured module
                scores[n] = math.inf
                continue
            run.replays[vector] = sch
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

    def _replay(self, state: RunState, vector: Vector, reject: bool = True):
        """The postprocessed schedule of ``vector``, or None (counted, and rejected in the core
        when ``reject``) if invalid."""
        run = state.descent
        replayed = run.space.replay(vector)
        if replayed.sch is None:
            state.counts.invalid += 1
            if reject:
                run.core.reject(vector)
            self._logger.debug("droplet: invalid neighbor %s: %s", vector, replayed.error)
            return None
        if replayed.snapped and vector not in run.hash_of:  # counted once per neighbor
            state.counts.snapped += 1
            self._logger.debug(
                "droplet: neighbor %s kept with its compute location snapped: %s",
                vector,
                "; ".join(replayed.snapped),
            )
        run.hash_of[vector] = replayed.shash
        return replayed.sch

    def log_move(self, state: RunState, move: Move | None) -> None:
        core = state.descent.core
        if move is None or core is None:
            return
        state.counts.moves += 1
        coords = core.coordinates
        changes = ", ".join(f"{coords[i].name}: {a} -> {b}" for i, a, b in move.changes)
        self._logger.info(
            "droplet: move %d accepted: %s; speed-up %.3fx, p=%s, now %s (one call suffices "
            "from a %.1f %% gain)",
            state.counts.moves,
            changes,
            move.speedup,
            "n/a" if move.p is None else f"{move.p:.3g}",
            fmt_secs(float(np.mean(core.incumbent_samples))),
            100 * core.sure_gain,
        )
