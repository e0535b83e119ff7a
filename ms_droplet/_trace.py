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
"""Between traces and the descent: read decisions as coordinates, write vectors back, replay.

This is the only place that knows how MetaSchedule records decisions in a ``Trace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tvm_ffi
from tvm.ir import IRModule
from tvm.s_tir import Schedule, Trace

from ._descent import (
    CATEGORICAL,
    COMPUTE_LOCATION,
    KINDS,
    PARTITIONED_TILE,
    PERFECT_TILE,
    Coordinate,
    Vector,
)


def _to_value(decision) -> int | tuple[int, ...]:
    if isinstance(decision, int):
        return int(decision)
    try:
        return tuple(int(x) for x in decision)
    except TypeError:
        return int(decision)


def decision_instructions(trace: Trace) -> list:
    """The instructions of ``trace`` (before postprocessing) that carry a sampling decision."""
    out = []
    for inst in trace.insts:
        if inst.kind.name == "EnterPostproc":
            break
        if inst.kind.name in KINDS and trace.get_decision(inst) is not None:
            out.append(inst)
    return out


def trace_vector(trace: Trace) -> Vector:
    """The decisions of ``trace``, in instruction order."""
    return tuple(_to_value(trace.get_decision(inst)) for inst in decision_instructions(trace))


@dataclass
class Replayed:
    """A replayed candidate: its postprocessed schedule and structural hash, or why it failed.

    ``snapped`` names the compute locations that replay moved because the other decisions made
    them illegal (``"SampleComputeLocation#i: old -> new"``); empty when none was.
    """

    sch: Schedule | None
    shash: int | None
    error: str | None
    snapped: tuple[str, ...] = ()


def replay(mod: IRModule, trace: Trace, postprocs: Sequence, seed: int) -> Replayed:
    """Replay ``trace`` (its postprocessing removed) on ``mod`` and apply every postprocessor.

    Never raises: a failure is returned as ``Replayed(None, None, reason)``.
    """
    try:
        sch = Schedule(mod, seed=seed, debug_mask=0, error_render_level="none")
        trace.apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()
        for postproc in postprocs:
            if not postproc.apply(sch):
                return Replayed(None, None, f"postprocessor {type(postproc).__name__} rejected it")
        return Replayed(sch, int(tvm_ffi.structural_hash(sch.mod)), None)
    except Exception as err:  # noqa: BLE001 - any replay error makes the candidate invalid
        return Replayed(None, None, f"replay failed: {str(err).strip().splitlines()[-1][:200]}")


class TraceSpace:
    """The decisions of one trace as coordinates of a descent.

    Parameters
    ----------
    mod : IRModule
        The workload.
    trace : Trace
        The trace whose instructions define the coordinates (its decisions are one vector).
    postprocs : Sequence[Postproc]
        The context's postprocessors, applied to every candidate.
    seed : int
        The schedule seed used for replay (replay with full decisions does not sample; the seed
        only satisfies ``Schedule``, which rejects 0).
    snap_locations : bool
        What :meth:`replay` does with a candidate whose compute location the other decisions
        made illegal (a tile move can remove the loop a block was computed at): keep it at the
        location replay snaps it to (``True``), or reject it (``False``). Any other decision
        that replay changes always makes the candidate invalid.
    """

    def __init__(
        self,
        mod: IRModule,
        trace: Trace,
        postprocs: Sequence,
        seed: int,
        snap_locations: bool = True,
    ) -> None:
        self.mod = mod
        self.postprocs = list(postprocs)
        self.seed = max(1, int(seed) % (2**31 - 1))
        self.snap_locations = bool(snap_locations)
        self.insts = decision_instructions(trace)
        prefix = []
        for inst in trace.insts:
            if inst.kind.name == "EnterPostproc":
                break
            prefix.append(inst)
        self._prefix = prefix
        self._decisions = {
            inst: trace.get_decision(inst)
            for inst in prefix
            if trace.get_decision(inst) is not None
        }
        self.start: Vector = trace_vector(trace)

    def trace_of(self, vector: Vector) -> Trace:
        """A trace with the decisions of ``vector`` (no postprocessing instructions)."""
        if len(vector) != len(self.insts):
            raise ValueError(
                f"TraceSpace.trace_of: vector has {len(vector)} values, the trace has "
                f"{len(self.insts)} decisions"
            )
        decisions = dict(self._decisions)
        for inst, value in zip(self.insts, vector):
            decisions[inst] = list(value) if isinstance(value, tuple) else value
        return Trace(self._prefix, decisions)

    def replay(self, vector: Vector) -> Replayed:
        """Replay ``vector`` with postprocessing.

        A decision that replay repaired makes the candidate invalid, except a compute location
        when ``snap_locations``: MetaSchedule's replay moves an illegal location to the nearest
        legal one on the root side (the next outer loop, or the root), as it does for its own
        mutants, and the candidate is that schedule (``Replayed.snapped`` says which moved).
        Replay is deterministic, so ``vector`` always stands for the same module.
        """
        result = replay(self.mod, self.trace_of(vector), self.postprocs, self.seed)
        if result.sch is None:
            return result
        got = trace_vector(result.sch.trace)
        if got == tuple(vector):
            return result
        moved = [i for i, (a, b) in enumerate(zip(vector, got)) if a != b]
        changed = tuple(f"{self.insts[i].kind.name}#{i}: {vector[i]} -> {got[i]}" for i in moved)
        if self.snap_locations and all(self.insts[i].kind.name == COMPUTE_LOCATION for i in moved):
            return Replayed(result.sch, result.shash, None, snapped=changed)
        return Replayed(None, None, "replay repaired an illegal decision: " + "; ".join(changed))

    def coordinates_at(self, vector: Vector) -> list[Coordinate]:
        """The coordinates of the trace with the decisions of ``vector``.

        Compute locations are probed: each location is replayed and kept only if replay keeps
        it (illegal ones snap to another location).
        """
        coords = []
        for i, inst in enumerate(self.insts):
            kind = inst.kind.name
            attrs = list(inst.attrs)
            name = f"{kind}#{i}"
            if kind == PERFECT_TILE:
                coords.append(Coordinate(kind, name, max_innermost_factor=int(attrs[1])))
            elif kind == PARTITIONED_TILE:
                coords.append(
                    Coordinate(
                        kind,
                        name,
                        partition_pos=int(attrs[1]),
                        innerpart_factor=int(attrs[2]),
                    )
                )
            elif kind == CATEGORICAL:
                coords.append(Coordinate(kind, name, choices=tuple(range(len(attrs[0])))))
            else:
                coords.append(
                    Coordinate(COMPUTE_LOCATION, name, choices=self._legal_locations(vector, i))
                )
        return coords

    def _legal_locations(self, vector: Vector, index: int) -> tuple[int, ...]:
        base = self._schedule_without_postproc(vector)
        if base is None:
            return (vector[index],)
        upper = _max_loop_depth(base) + 1
        legal = []
        for location in range(-2, upper):
            probe = list(vector)
            probe[index] = location
            sch = self._schedule_without_postproc(tuple(probe))
            if sch is not None and trace_vector(sch.trace)[index] == location:
                legal.append(location)
        if vector[index] not in legal:
            legal.append(vector[index])
        return tuple(sorted(legal))

    def _schedule_without_postproc(self, vector: Vector) -> Schedule | None:
        try:
            sch = Schedule(self.mod, seed=self.seed, debug_mask=0, error_render_level="none")
            self.trace_of(vector).apply_to_schedule(sch, remove_postproc=True)
            return sch
        except Exception:  # noqa: BLE001 - an unreplayable probe is simply not legal
            return None


def _max_loop_depth(sch: Schedule) -> int:
    depth = 0
    for gv in sch.mod.get_global_vars():
        try:
            root = sch.get_sblock("root", func_name=gv.name_hint)
            for block in sch.get_child_blocks(root):
                depth = max(depth, len(sch.get_loops(block)))
        except Exception:  # noqa: BLE001 - functions without a root block add nothing
            continue
    return depth
