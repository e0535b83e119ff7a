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
"""Coordinate descent over sampling decisions: the algorithm, apart from TVM.

The state of one descent lives in :class:`DescentCore`. It is fed measurements and proposes
decision vectors; it knows nothing of traces, builders or databases, so it runs on synthetic
objectives in tests. A *vector* is a tuple with one value per :class:`Coordinate`. Whether a
neighbor is faster is decided by :mod:`ms_droplet._acceptance` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._acceptance import (
    Outcome,
    Verdict,
    between_call_noise,
    compare_samples,
    sure_gain_bound,
)
from ._neighbors import index_neighbors, partitioned_tile_neighbors, tile_neighbors

Value = Hashable
Vector = tuple

PERFECT_TILE = "SamplePerfectTile"
PARTITIONED_TILE = "SamplePartitionedTile"
CATEGORICAL = "SampleCategorical"
COMPUTE_LOCATION = "SampleComputeLocation"
#: The instructions whose sampling decision is a coordinate.
KINDS = (PERFECT_TILE, PARTITIONED_TILE, CATEGORICAL, COMPUTE_LOCATION)


@dataclass(frozen=True)
class Coordinate:
    """One sampling decision of a trace and the rule of its legal values.

    Parameters
    ----------
    kind : str
        The instruction kind: one of ``SamplePerfectTile``, ``SamplePartitionedTile``,
        ``SampleCategorical``, ``SampleComputeLocation``.
    name : str
        A readable label for logs, e.g. ``"SamplePerfectTile#2"``.
    max_innermost_factor : int
        Perfect tiles only: the innermost limit (``-1``: none).
    partition_pos : int
        Partitioned tiles only: where the inner part starts.
    innerpart_factor : int
        Partitioned tiles only: the inner part's product is a multiple of it.
    choices : Tuple[int, ...]
        Categoricals: the legal indices; compute locations: the legal locations, in loop order.
    """

    kind: str
    name: str
    max_innermost_factor: int = -1
    partition_pos: int = 0
    innerpart_factor: int = 1
    choices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"Coordinate.kind must be one of {KINDS}, got {self.kind!r}; "
                "only these instructions carry values the descent may move"
            )

    def neighbors(self, value: Value, step: int) -> list[Value]:
        """The legal values ``step`` steps away from ``value``, in a fixed order."""
        if self.kind == PERFECT_TILE:
            return tile_neighbors(value, step, self.max_innermost_factor)  # type: ignore[arg-type]
        if self.kind == PARTITIONED_TILE:
            return partitioned_tile_neighbors(
                value,  # type: ignore[arg-type]
                step,
                self.partition_pos,
                self.innerpart_factor,
            )
        return index_neighbors(value, self.choices, step)  # type: ignore[arg-type]

    def continue_move(self, old: Value, new: Value, max_step: int) -> Value | None:
        """Repeat the move ``old -> new`` once more from ``new``, if that is legal.

        For indices the same shift; for tiles the same factors moved between the same levels.
        """
        if self.kind in (PERFECT_TILE, PARTITIONED_TILE):
            ahead = []
            for o, n in zip(old, new):  # type: ignore[call-overload]
                if (n * n) % o:
                    return None
                ahead.append(n * n // o)
            candidate: Value = tuple(ahead)
        else:
            if old not in self.choices or new not in self.choices:
                return None
            pos = 2 * self.choices.index(new) - self.choices.index(old)
            if not 0 <= pos < len(self.choices):
                return None
            candidate = self.choices[pos]
        legal = any(candidate in self.neighbors(new, s) for s in range(1, max_step + 1))
        return candidate if legal else None


# ---------------------------------------------------------------------------------------------
# Descent


@dataclass(frozen=True)
class DescentConfig:
    """The options of one descent (validated by :class:`ms_droplet.DropletSearch`)."""

    p_value: float = 0.05
    min_gain: float = 0.01
    max_step: int = 2
    min_measurements: int = 2
    max_measurements: int = 3
    sure_gain: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.min_measurements <= self.max_measurements:
            raise ValueError(
                "DescentConfig: need 1 <= min_measurements <= max_measurements, got "
                f"min_measurements={self.min_measurements}, "
                f"max_measurements={self.max_measurements}"
            )


@dataclass(frozen=True)
class Proposal:
    """A vector to measure; ``remeasure`` marks a repeated measurement of a known vector."""

    vector: Vector
    remeasure: bool = False


@dataclass(frozen=True)
class Move:
    """An accepted move: the decisions that changed, the speed-up and the test's p-value."""

    changes: tuple[tuple[int, Value, Value], ...]
    speedup: float
    p: float | None


@dataclass
class _Observations:
    samples: list[float] = field(default_factory=list)
    measurements: int = 0
    failures: int = 0
    call_means: list[float] = field(default_factory=list)  # one per successful runner call

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else math.inf


class DescentCore:
    """The state of one coordinate descent from a starting vector.

    The host calls :meth:`propose` to get vectors to measure, reports each with
    :meth:`observe` (or :meth:`reject` when it cannot be measured), then calls
    :meth:`conclude` once the batch is back. The neighborhood of the incumbent is visited in
    this order: a repetition of the last accepted move, then the other single changes that
    looked faster than the previous incumbent, applied to the new one all at once (when there
    are two or more) and then one by one (fastest first), then
    every single-coordinate neighbor at step 1 (in the order of ``rank`` if given, else drawn
    from ``rng``), then at step 2 (drawn from ``rng``), up to ``config.max_step``.

    Parameters
    ----------
    start : Vector
        The starting decisions, one per coordinate.
    start_samples : Sequence[float]
        Known run times of ``start`` (may be empty: it is then proposed first, with its
        first neighbors in the same batch).
    coordinates : Sequence[Coordinate]
        The coordinates at ``start``.
    config : DescentConfig
        The options.
    rng : numpy.random.Generator
        The only source of randomness.
    coordinates_at : Optional[Callable[[Vector], Sequence[Coordinate]]]
        Called after each accepted move to get the coordinates at the new incumbent (legal
        compute locations depend on the other decisions). ``None``: they never change.
    rank : Optional[Callable[[list[Vector]], Optional[Sequence[Optional[float]]]]]
        Orders the step-1 neighbors: called with them (in the ``rng`` order) whenever the
        neighborhood is built, it returns one predicted score per vector (higher: expected
        faster), ``None`` for a vector that cannot be built (it is rejected, never measured),
        or ``None`` instead of a list to keep the ``rng`` order. ``None``: no ranking.
        Only the order changes: every move is still accepted on measurements alone.
    """

    def __init__(
        self,
        start: Vector,
        start_samples: Sequence[float],
        coordinates: Sequence[Coordinate],
        config: DescentConfig,
        rng: np.random.Generator,
        coordinates_at: Callable[[Vector], Sequence[Coordinate]] | None = None,
        rank: Callable[[list[Vector]], Sequence[float | None] | None] | None = None,
    ) -> None:
        if len(start) != len(coordinates):
            raise ValueError(
                f"DescentCore: start has {len(start)} values but there are "
                f"{len(coordinates)} coordinates; give one value per coordinate"
            )
        self.config = config
        self._rng = rng
        self._coordinates_at = coordinates_at
        self._rank = rank
        self._coordinates = tuple(coordinates)
        self._obs: dict[Vector, _Observations] = {}
        self._invalid: set[Vector] = set()
        self._pending: set[Vector] = set()
        self._queue: list[Vector] = []
        self._neighborhood: set[Vector] = set()
        self._contested: list[Vector] = []
        self.incumbent: Vector = tuple(start)
        if start_samples:
            self.observe(self.incumbent, start_samples)
        self._build_neighborhood(last_move=None)

    # -- queries -------------------------------------------------------------------------------
    @property
    def coordinates(self) -> tuple[Coordinate, ...]:
        """The coordinates at the current incumbent."""
        return self._coordinates

    @property
    def incumbent_samples(self) -> list[float]:
        """The run times observed for the incumbent."""
        return list(self._obs.get(self.incumbent, _Observations()).samples)

    @property
    def finished(self) -> bool:
        """True when the descent has nothing left to measure (see :attr:`stop_reason`)."""
        return self.stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Why the descent ended, or ``None`` while it goes on."""
        start = self._obs.get(self.incumbent)
        if start is not None and not start.samples and start.failures:
            return "the starting schedule failed to build or run"
        if self._pending or self._contested or not self._has_incumbent_samples():
            return None
        if self._unvisited():
            return None
        return (
            f"local optimum: all {len(self._neighborhood)} neighbors up to step "
            f"{self.config.max_step} are known and none is faster with p <= {self.config.p_value}"
        )

    @property
    def between_call_noise(self) -> float | None:
        """The 90th percentile of ``|log(mean of a later call / mean of the first call)|``
        over the schedules measured in several runner calls; ``None`` while fewer than
        ``NOISE_MIN_SCHEDULES`` schedules were."""
        return between_call_noise(o.call_means for o in self._obs.values())

    @property
    def sure_gain(self) -> float:
        """The gain that needs no second runner call: ``config.sure_gain`` until the noise
        between calls is known, then ``NOISE_MARGIN`` times that noise (at least
        ``config.min_gain``, at most ``config.sure_gain``)."""
        return sure_gain_bound(self.between_call_noise, self.config.min_gain, self.config.sure_gain)

    # -- protocol ------------------------------------------------------------------------------
    def propose(self, max_count: int) -> list[Proposal]:
        """Up to ``max_count`` vectors to measure next; empty when there is nothing to do."""
        out: list[Proposal] = []
        if max_count <= 0 or self.stop_reason is not None:
            return out
        if not self._has_incumbent_samples():
            # The start, then its first neighbors in the same batch (one runner call).
            if self.incumbent not in self._pending:
                self._pending.add(self.incumbent)
                out.append(Proposal(self.incumbent))
        elif self._contested:
            cap = self.config.max_measurements
            if self._obs[self.incumbent].measurements < cap and self.incumbent not in self._pending:
                self._pending.add(self.incumbent)
                out.append(Proposal(self.incumbent, remeasure=True))
            for vector in self._contested:
                if len(out) >= max_count:
                    break
                if self._obs[vector].measurements < cap and vector not in self._pending:
                    self._pending.add(vector)
                    out.append(Proposal(vector, remeasure=True))
            self._contested = []
        for vector in self._unvisited():
            if len(out) >= max_count:
                break
            self._pending.add(vector)
            out.append(Proposal(vector))
        return out[:max_count]

    def observe(self, vector: Vector, samples: Sequence[float]) -> None:
        """Record one measurement of ``vector``: its run times (empty or inf if it failed)."""
        vector = tuple(vector)
        self._pending.discard(vector)
        obs = self._obs.setdefault(vector, _Observations())
        obs.measurements += 1
        finite = [float(s) for s in samples if math.isfinite(s) and s > 0]
        if finite and len(finite) == len(samples):
            obs.samples.extend(finite)
            obs.call_means.append(float(np.mean(finite)))
        else:
            obs.failures += 1

    def reject(self, vector: Vector) -> None:
        """Mark ``vector`` as impossible to measure (invalid schedule); never proposed again."""
        vector = tuple(vector)
        self._pending.discard(vector)
        self._invalid.add(vector)

    def conclude(self) -> Move | None:
        """Decide on the measurements so far: move to the best accepted neighbor, if any.

        A neighbor is accepted only once it and the incumbent were each measured at least
        ``min_measurements`` times (timings of one runner call are correlated: they
        underestimate the spread between calls), unless its gain is at least :attr:`sure_gain`
        (which shrinks below ``config.sure_gain`` once the re-measurements show the noise
        between calls to be small, as on GPUs).
        Neighbors that look faster but are not yet significant or not yet confirmed are queued
        for another measurement (the incumbent too) until they have ``max_measurements``.
        """
        inc = self._obs.get(self.incumbent)
        if inc is None or not inc.samples:
            return None
        accepted: list[tuple[float, Vector, Verdict]] = []
        contested: list[tuple[float, Vector]] = []
        sure_gain = self.sure_gain
        for vector in self._neighborhood:
            obs = self._obs.get(vector)
            if obs is None or not obs.samples or vector in self._pending:
                continue
            verdict = compare_samples(
                inc.samples, obs.samples, self.config.p_value, self.config.min_gain
            )
            confirmed = (
                min(obs.measurements, inc.measurements) >= self.config.min_measurements
                or 1.0 - 1.0 / verdict.speedup >= sure_gain
            )
            if verdict.outcome is Outcome.ACCEPT and confirmed:
                accepted.append((obs.mean, vector, verdict))
            elif verdict.outcome is not Outcome.REJECT and (
                obs.measurements < self.config.max_measurements
                or inc.measurements < self.config.max_measurements
            ):
                contested.append((obs.mean, vector))
        if accepted:
            _, best, verdict = min(accepted, key=lambda item: (item[0], repr(item[1])))
            old = self.incumbent
            changes = tuple((i, a, b) for i, (a, b) in enumerate(zip(old, best)) if a != b)
            move = Move(changes, verdict.speedup, verdict.p)
            # Other changes that looked faster than the old incumbent, fastest first: tried on
            # top of the new incumbent before the rest of its neighborhood.
            promising = sorted(
                (mean, vector) for mean, vector, *_ in accepted + contested if vector != best
            )
            self.incumbent = best
            self._contested = []
            if self._coordinates_at is not None:
                self._coordinates = tuple(self._coordinates_at(best))
            self._build_neighborhood(
                last_move=(old, best), promising=[vector for _, vector in promising]
            )
            return move
        contested.sort(key=lambda item: (item[0], repr(item[1])))
        self._contested = [vector for _, vector in contested]
        return None

    # -- internals -----------------------------------------------------------------------------
    def _has_incumbent_samples(self) -> bool:
        obs = self._obs.get(self.incumbent)
        return obs is not None and bool(obs.samples)

    def _unvisited(self) -> list[Vector]:
        return [
            v
            for v in self._queue
            if v not in self._obs and v not in self._invalid and v not in self._pending
        ]

    def _ranked(self, level: list[Vector]) -> list[Vector]:
        """``level`` by the rank callback's scores, best first (ties keep their order)."""
        fresh = [v for v in level if v not in self._obs and v not in self._invalid]
        scores = self._rank(fresh) if fresh else None
        if scores is None:
            return level
        if len(scores) != len(fresh):
            raise ValueError(
                f"DescentCore: rank returned {len(scores)} scores for {len(fresh)} vectors; "
                "it must return one score (or None) per vector"
            )
        score_of = {}
        for vector, score in zip(fresh, scores):
            if score is None or (isinstance(score, float) and math.isnan(score)):
                self._invalid.add(vector)
            else:
                score_of[vector] = float(score)
        # Known vectors first (they cost no trial), then the best predicted.
        keyed = [
            (-score_of.get(v, math.inf if v in self._obs else -math.inf), n)
            for n, v in enumerate(level)
        ]
        return [level[n] for _, n in sorted(keyed)]

    def _build_neighborhood(
        self, last_move: tuple[Vector, Vector] | None, promising: Sequence[Vector] = ()
    ) -> None:
        inc = self.incumbent
        self._neighborhood = set()  # the new incumbent's; _set_queue fills it
        ordered: list[Vector] = []
        if last_move is not None:
            old, new = last_move
            ahead = list(new)
            for i, (a, b) in enumerate(zip(old, new)):
                if a != b:
                    nxt = self._coordinates[i].continue_move(a, b, self.config.max_step)
                    if nxt is None:
                        ahead = None
                        break
                    ahead[i] = nxt
            if ahead is not None:
                ordered.append(tuple(ahead))
            singles = []
            for vector in promising:
                diff = [i for i, (a, b) in enumerate(zip(old, vector)) if a != b]
                if len(diff) != 1 or old[diff[0]] != new[diff[0]]:
                    continue  # not a single change, or one on the coordinate that just moved
                i = diff[0]
                legal = any(
                    vector[i] in self._coordinates[i].neighbors(inc[i], step)
                    for step in range(1, self.config.max_step + 1)
                )
                if legal:
                    singles.append((i, vector[i]))
            # All those changes at once (one per coordinate, the fastest first): independent
            # improvements compound in one trial instead of one batch each.
            combined, used = list(inc), set()
            for i, value in singles:
                if i not in used:
                    combined[i] = value
                    used.add(i)
            if len(used) >= 2:
                ordered.append(tuple(combined))
            ordered.extend(inc[:i] + (value,) + inc[i + 1 :] for i, value in singles)
        for step in range(1, self.config.max_step + 1):
            level = []
            for i, coord in enumerate(self._coordinates):
                for value in coord.neighbors(inc[i], step):
                    level.append(inc[:i] + (value,) + inc[i + 1 :])
            level = [level[j] for j in self._rng.permutation(len(level))]
            if step == 1 and self._rank is not None:
                level = self._ranked(level)
            ordered.extend(level)
        self._set_queue(ordered)

    def _set_queue(self, ordered: Sequence[Vector]) -> None:
        """Visit ``ordered`` next (first occurrences, never the incumbent); every vector queued
        since the last move belongs to the neighborhood that :meth:`conclude` compares."""
        seen: set[Vector] = {self.incumbent}
        self._queue = [v for v in ordered if not (v in seen or seen.add(v))]
        self._neighborhood |= set(self._queue)
