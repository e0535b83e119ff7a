"""Traces as coordinates: legal values only, replay with postprocessors, repairs detected."""

from __future__ import annotations

import math

import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet._descent import COMPUTE_LOCATION, PERFECT_TILE
from ms_droplet._trace import TraceSpace, trace_vector


def _spaces(name, index, target, **space):
    context = ms.TuneContext(
        mod=create_te_workload(name, index),
        target=target,
        space_generator=ms.space_generator.PostOrderApply(**space) if space else "post-order-apply",
        task_name=f"trace_{name}",
        rand_state=1,
        num_threads=1,
    )
    return context, context.generate_design_space()


def _trace_space(context, design_space):
    return TraceSpace(context.mod, design_space.trace, context.space_generator.postprocs, seed=1)


def test_vector_round_trip_and_every_tile_neighbor_is_valid(host_target):
    context, spaces = _spaces("GMM", 0, host_target)
    space = _trace_space(context, spaces[0])
    start = space.start
    assert trace_vector(space.trace_of(start)) == start
    assert space.replay(start).sch is not None
    coords = space.coordinates_at(start)
    checked = 0
    for i, coord in enumerate(coords):
        if coord.kind != PERFECT_TILE:
            continue
        for value in coord.neighbors(start[i], 1):
            assert math.prod(value) == math.prod(start[i])
            vector = start[:i] + (value,) + start[i + 1 :]
            replayed = space.replay(vector)
            assert replayed.sch is not None, replayed.error
            assert trace_vector(replayed.sch.trace) == vector
            checked += 1
    assert checked > 10


def test_compute_locations_are_probed_and_repairs_rejected(host_target):
    context, spaces = _spaces("C2D", 0, host_target)
    found = False
    for design_space in spaces:
        space = _trace_space(context, design_space)
        coords = space.coordinates_at(space.start)
        for i, coord in enumerate(coords):
            if coord.kind != COMPUTE_LOCATION:
                continue
            found = True
            assert space.start[i] in coord.choices
            assert len(coord.choices) > 1
            for location in coord.choices:
                vector = space.start[:i] + (location,) + space.start[i + 1 :]
                sch = space._schedule_without_postproc(vector)
                assert trace_vector(sch.trace)[i] == location
            illegal = [x for x in range(-2, max(coord.choices)) if x not in coord.choices]
            if illegal:
                vector = space.start[:i] + (illegal[0],) + space.start[i + 1 :]
                strict = TraceSpace(
                    context.mod,
                    design_space.trace,
                    context.space_generator.postprocs,
                    seed=1,
                    snap_locations=False,
                )
                replayed = strict.replay(vector)
                assert replayed.sch is None and "repaired" in replayed.error
    assert found, "C2D:0 has a padding block with a sampled compute location"


def _snapped_location(space, vector, i):
    """Where MetaSchedule's replay puts an illegal compute location: the nearest legal one
    before it in loop order (the next outer loop), else the root (-1)."""
    legal = [x for x in space._legal_locations(vector, i) if x != vector[i]]
    before = [x for x in legal if x < vector[i]]
    return max(before) if before else -1


def test_tile_move_that_makes_a_compute_location_illegal_is_snapped(host_target):
    """C2D:0's padding block sits under a tile loop; moving factors can remove that location.
    With snap_locations the neighbor is kept at the next outer legal location (the module is
    exactly the replay of the snapped decisions); without it, it is dropped as repaired."""
    context, spaces = _spaces("C2D", 0, host_target)
    postprocs = context.space_generator.postprocs
    snapped_seen = 0
    for design_space in spaces:
        space = _trace_space(context, design_space)
        strict = TraceSpace(
            context.mod, design_space.trace, postprocs, seed=1, snap_locations=False
        )
        start = space.start
        coords = space.coordinates_at(start)
        for t, coord in enumerate(coords):
            if coord.kind != PERFECT_TILE:
                continue
            moves = {v for step in (1, 2, 3) for v in coord.neighbors(start[t], step)}
            for value in sorted(moves):
                vector = start[:t] + (value,) + start[t + 1 :]
                replayed = space.replay(vector)
                if not replayed.snapped:
                    continue
                snapped_seen += 1
                assert replayed.sch is not None and replayed.error is None
                got = trace_vector(replayed.sch.trace)
                moved = [i for i, (a, b) in enumerate(zip(vector, got)) if a != b]
                assert moved and all(coords[i].kind == COMPUTE_LOCATION for i in moved)
                assert len(replayed.snapped) == len(moved)
                for i in moved:
                    assert got[i] == _snapped_location(space, vector, i)
                    assert f"SampleComputeLocation#{i}: {vector[i]} -> {got[i]}" in (
                        replayed.snapped
                    )
                again = space.replay(got)
                assert again.snapped == () and again.shash == replayed.shash
                rejected = strict.replay(vector)
                assert rejected.sch is None and "repaired an illegal decision" in rejected.error
    assert snapped_seen > 0, "no tile move of C2D:0 made its padding block's location illegal"


def test_wrong_tile_product_is_reported_as_repaired(host_target):
    context, spaces = _spaces("GMM", 0, host_target)
    space = _trace_space(context, spaces[0])
    i = next(k for k, c in enumerate(space.coordinates_at(space.start)) if c.kind == PERFECT_TILE)
    bad = list(space.start[i])
    bad[-1] *= 2  # the product no longer equals the extent: replay would rewrite it silently
    replayed = space.replay(space.start[:i] + (tuple(bad),) + space.start[i + 1 :])
    assert replayed.sch is None and "repaired" in replayed.error


def test_cuda_design_space_neighbors_postprocess_without_gpu():
    target = tvm.target.Target(
        {
            "kind": "cuda",
            "arch": "sm_80",
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
        }
    )
    context, spaces = _spaces("GMM", 1, target)
    postprocs = [type(p).__name__ for p in context.space_generator.postprocs]
    assert "VerifyGPUCode" in postprocs
    space = _trace_space(context, spaces[0])
    coords = space.coordinates_at(space.start)
    kinds = {c.kind for c in coords}
    assert "SampleCategorical" in kinds and PERFECT_TILE in kinds
    valid = invalid = 0
    for i, coord in enumerate(coords):
        for value in coord.neighbors(space.start[i], 1):
            replayed = space.replay(space.start[:i] + (value,) + space.start[i + 1 :])
            if replayed.sch is None:
                invalid += 1
            else:
                valid += 1
    assert valid > 0


@pytest.mark.parametrize("vector_length", [0, 99])
def test_trace_of_checks_length(host_target, vector_length):
    context, spaces = _spaces("GMM", 0, host_target)
    space = _trace_space(context, spaces[0])
    with pytest.raises(ValueError, match="vector has"):
        space.trace_of(tuple([1] * vector_length))


def _cuda(max_threads=1024):
    return tvm.target.Target(
        {
            "kind": "cuda",
            "arch": "sm_80",
            "max_threads_per_block": max_threads,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
        }
    )


@pytest.mark.parametrize("workload", [("SFM", 0), ("GMM", 1)])
def test_cuda_categoricals_stay_legal_and_every_postprocessor_runs(workload):
    # SFM: thread extents of cross-thread reductions and bindings are categorical indices;
    # GMM: unroll and cooperative-fetch vector lanes. Every step-1 neighbor is an in-range index
    # and every replay applies all CUDA postprocessors (VerifyGPUCode among them).
    context, spaces = _spaces(*workload, _cuda())
    names = [type(p).__name__ for p in context.space_generator.postprocs]
    assert "VerifyGPUCode" in names and "RewriteCooperativeFetch" in names
    checked = 0
    for design_space in spaces:
        space = _trace_space(context, design_space)
        coords = space.coordinates_at(space.start)
        for i, coord in enumerate(coords):
            if coord.kind != "SampleCategorical":
                continue
            inst = space.insts[i]
            count = len(inst.attrs[0])
            for value in coord.neighbors(space.start[i], 2):
                assert 0 <= value < count
                replayed = space.replay(space.start[:i] + (value,) + space.start[i + 1 :])
                assert replayed.sch is not None or "rejected" in replayed.error
                checked += 1
    assert checked > 0


def test_cuda_neighbor_breaking_gpu_limits_is_rejected_by_verify_gpu_code():
    # With at most 64 threads a block, tile neighbors that put more threads in a block exist
    # and must be rejected by the postprocessors, never measured.
    context, spaces = _spaces("GMM", 1, _cuda(max_threads=64))
    space = _trace_space(context, spaces[0])
    errors = []
    for i, coord in enumerate(space.coordinates_at(space.start)):
        for value in coord.neighbors(space.start[i], 2):
            replayed = space.replay(space.start[:i] + (value,) + space.start[i + 1 :])
            if replayed.sch is None:
                errors.append(replayed.error)
    assert any("VerifyGPUCode" in e for e in errors), errors[:5]
