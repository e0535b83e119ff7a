"""The descent core on synthetic objectives (no TVM)."""

import math

import numpy as np
import pytest

from ms_droplet._descent import (
    CATEGORICAL,
    PERFECT_TILE,
    Coordinate,
    DescentConfig,
    DescentCore,
)


def run_descent(objective, start, coords, config, seed=0, batch=4, budget=500, noise=None):
    """Drive a core like the strategy does; returns (core, measurements, trajectory)."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 1000)
    core = DescentCore(start, [], coords, config, rng)
    measured = 0
    trajectory = [core.incumbent]
    while measured < budget:
        proposals = core.propose(batch)
        if not proposals:
            if core.conclude() is not None:
                trajectory.append(core.incumbent)
                continue
            proposals = core.propose(batch)
            if not proposals:
                break
        for p in proposals:
            value = objective(p.vector)
            if noise is None:
                samples = [value, value]
            else:
                samples = list(value * (1 + noise * noise_rng.standard_normal(1)))
            core.observe(p.vector, samples)
            measured += 1
        if core.conclude() is not None:
            trajectory.append(core.incumbent)
    return core, measured, trajectory


def lattice_objective(vector):
    """Minimum at tile (4, 8), index 2; separable and convex in log space."""
    tile, index = vector
    return 1.0 + abs(math.log2(tile[1]) - 3) + 0.5 * abs(index - 2)


COORDS = [
    Coordinate(PERFECT_TILE, "tile", max_innermost_factor=16),
    Coordinate(CATEGORICAL, "unroll", choices=(0, 1, 2, 3)),
]


def test_finds_known_optimum_and_stops():
    config = DescentConfig(
        p_value=0.05, min_gain=0.0, max_step=2, min_measurements=1, max_measurements=1
    )
    core, measured, trajectory = run_descent(lattice_objective, ((32, 1), 0), COORDS, config)
    assert core.incumbent == ((4, 8), 2)
    assert core.finished
    assert "local optimum" in core.stop_reason
    assert measured < 500
    # every move strictly improved the objective
    values = [lattice_objective(v) for v in trajectory]
    assert all(b < a for a, b in zip(values, values[1:]))


def test_stops_at_local_optimum():
    def two_basins(vector):
        (_, index) = vector
        return [1.0, 2.0, 3.0, 0.5][index]  # index 0 is a local optimum for steps <= 2

    config = DescentConfig(
        p_value=0.05, min_gain=0.0, max_step=2, min_measurements=1, max_measurements=1
    )
    coords = [Coordinate(CATEGORICAL, "fixed", choices=(0,)), COORDS[1]]
    core, _, trajectory = run_descent(two_basins, (0, 0), coords, config)
    assert core.incumbent == (0, 0)
    assert trajectory == [(0, 0)]
    assert core.finished
    # With step 3 the global optimum is a neighbor.
    config3 = DescentConfig(
        p_value=0.05, min_gain=0.0, max_step=3, min_measurements=1, max_measurements=1
    )
    core3, _, _ = run_descent(two_basins, (0, 0), coords, config3)
    assert core3.incumbent == (0, 3)


def test_rejects_pure_noise():
    def flat(vector):
        return 1.0

    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=2, max_measurements=3)
    core, _, trajectory = run_descent(flat, ((32, 1), 0), COORDS, config, noise=0.005, seed=3)
    assert trajectory == [((32, 1), 0)]
    assert core.finished


def test_noisy_but_real_gain_is_found_with_remeasurement():
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1, max_measurements=4)
    core, _, _ = run_descent(
        lattice_objective, ((32, 1), 1), COORDS, config, noise=0.01, seed=5, budget=800
    )
    assert core.incumbent == ((4, 8), 2)


def test_point_without_neighbors_finishes_after_measuring_start():
    coords = [Coordinate(PERFECT_TILE, "t"), Coordinate(CATEGORICAL, "c", choices=(0,))]
    core, measured, _ = run_descent(lambda v: 1.0, ((1, 1), 0), coords, DescentConfig())
    assert measured == 1
    assert core.finished


def test_failed_start_stops():
    core = DescentCore(((8, 1),), [], [COORDS[0]], DescentConfig(), np.random.default_rng(0))
    proposals = core.propose(4)
    assert proposals[0].vector == ((8, 1),)
    for p in proposals:
        core.observe(p.vector, [] if p.vector == ((8, 1),) else [1.0])
    assert core.conclude() is None
    assert core.propose(4) == []
    assert "failed" in core.stop_reason


def test_unmeasured_start_goes_out_with_its_first_neighbors():
    start = ((8, 1),)
    core = DescentCore(start, [], [COORDS[0]], DescentConfig(), np.random.default_rng(0))
    first = core.propose(3)
    assert [p.vector for p in first][0] == start
    assert len(first) == 3 and len({p.vector for p in first}) == 3
    assert all(not p.remeasure for p in first)
    # Pending: neither the start nor those neighbors come again; later neighbors do.
    more = core.propose(10)
    assert start not in [p.vector for p in more]
    assert not {p.vector for p in more} & {p.vector for p in first}
    for p in first + more:
        core.observe(p.vector, [2.0, 2.0] if p.vector == start else [4.0, 4.0])
    assert core.conclude() is None
    assert core.incumbent_samples == [2.0, 2.0]


def test_failures_are_never_accepted():
    core = DescentCore(
        ((8, 1),), [1.0, 1.0], [COORDS[0]], DescentConfig(), np.random.default_rng(0)
    )
    for p in core.propose(10):
        core.observe(p.vector, [math.inf])
    assert core.conclude() is None
    assert core.incumbent == ((8, 1),)


def test_same_seed_same_trajectory_different_seed_different_order():
    config = DescentConfig(min_gain=0.0, min_measurements=1, max_measurements=1)
    a = run_descent(lattice_objective, ((32, 1), 0), COORDS, config, seed=7)
    b = run_descent(lattice_objective, ((32, 1), 0), COORDS, config, seed=7)
    assert a[2] == b[2] and a[1] == b[1]
    first = DescentCore(((32, 1), 0), [1.0], COORDS, config, np.random.default_rng(1)).propose(8)
    second = DescentCore(((32, 1), 0), [1.0], COORDS, config, np.random.default_rng(2)).propose(8)
    assert {p.vector for p in first} == {p.vector for p in second}
    assert [p.vector for p in first] != [p.vector for p in second]


def test_step_one_before_speculation():
    core = DescentCore(
        ((32, 1), 0), [1.0], COORDS, DescentConfig(max_step=2), np.random.default_rng(0)
    )
    step1 = {((16, 2), 0), ((32, 1), 1)}
    first = [p.vector for p in core.propose(2)]
    assert set(first) == step1
    second = [p.vector for p in core.propose(10)]
    assert set(second) == {((8, 4), 0), ((32, 1), 2)}


def test_continuation_of_accepted_move_comes_first():
    config = DescentConfig(min_gain=0.0, max_step=1, min_measurements=1, max_measurements=1)
    core = DescentCore(((32, 1), 0), [2.0, 2.0], COORDS, config, np.random.default_rng(0))
    for p in core.propose(10):
        core.observe(p.vector, [1.0, 1.0] if p.vector == ((16, 2), 0) else [3.0, 3.0])
    move = core.conclude()
    assert move is not None and move.changes == ((0, (32, 1), (16, 2)),)
    assert core.propose(1)[0].vector == ((8, 4), 0)


def test_contested_candidate_is_remeasured_with_incumbent():
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1, max_measurements=3)
    core = DescentCore(((32, 1), 0), [1.0], COORDS, config, np.random.default_rng(0))
    for p in core.propose(10):
        core.observe(p.vector, [0.8] if p.vector == ((16, 2), 0) else [1.2])
    assert core.conclude() is None  # one sample each: undecided
    again = core.propose(10)
    assert [(p.vector, p.remeasure) for p in again[:2]] == [
        (((32, 1), 0), True),
        (((16, 2), 0), True),
    ]
    core.observe(((32, 1), 0), [1.01])
    core.observe(((16, 2), 0), [0.81])
    move = core.conclude()
    assert move is not None and move.p is not None and move.p <= 0.05
    assert core.incumbent == ((16, 2), 0)


def test_coordinate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="Coordinate.kind must be one of"):
        Coordinate("SampleInt", "x")


def test_one_runner_call_is_not_enough_for_a_small_gain():
    # Three tight timings from one call look significant; a 5 % move waits for a second call.
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1)
    core = DescentCore(((32, 1), 0), [1.0, 1.001, 0.999], COORDS, config, np.random.default_rng(0))
    for p in core.propose(10):
        faster = p.vector == ((16, 2), 0)
        core.observe(p.vector, [0.95, 0.951, 0.949] if faster else [1.2, 1.2, 1.2])
    assert core.conclude() is None
    again = {(p.vector, p.remeasure) for p in core.propose(10)}
    assert {(((32, 1), 0), True), (((16, 2), 0), True)} <= again
    core.observe(((32, 1), 0), [1.0, 1.0, 1.0])
    core.observe(((16, 2), 0), [0.95, 0.95, 0.95])
    assert core.conclude() is not None
    assert core.incumbent == ((16, 2), 0)


def test_a_sure_gain_moves_after_one_call():
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1, sure_gain=0.1)
    core = DescentCore(((32, 1), 0), [1.0, 1.001, 0.999], COORDS, config, np.random.default_rng(0))
    for p in core.propose(10):
        faster = p.vector == ((16, 2), 0)
        core.observe(p.vector, [0.7, 0.701, 0.699] if faster else [1.2, 1.2, 1.2])
    move = core.conclude()
    assert move is not None and move.speedup > 1.4


def test_config_checks_measurement_bounds():
    with pytest.raises(ValueError, match="min_measurements <= max_measurements"):
        DescentConfig(min_measurements=3, max_measurements=2)


def test_other_improvements_are_combined_after_a_move():
    coords = [
        Coordinate(CATEGORICAL, "a", choices=(0, 1, 2)),
        Coordinate(CATEGORICAL, "b", choices=(0, 1, 2)),
        Coordinate(CATEGORICAL, "c", choices=(0, 1, 2)),
    ]
    config = DescentConfig(min_gain=0.0, max_step=1, min_measurements=1, max_measurements=1)
    core = DescentCore((0, 0, 0), [10.0, 10.0], coords, config, np.random.default_rng(0))
    times = {(1, 0, 0): 5.0, (0, 1, 0): 8.0, (0, 0, 1): 12.0}
    for p in core.propose(10):
        t = times[p.vector]
        core.observe(p.vector, [t, t])
    move = core.conclude()
    assert move is not None and core.incumbent == (1, 0, 0)
    # First the same move again, then b's improvement on top of the new incumbent.
    assert [p.vector for p in core.propose(2)] == [(2, 0, 0), (1, 1, 0)]


def test_sure_gain_shrinks_to_the_measured_between_call_noise():
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1, sure_gain=0.1)
    core = DescentCore(((32, 1), 0), [1.0, 1.0, 1.0], COORDS, config, np.random.default_rng(0))
    assert core.between_call_noise is None and core.sure_gain == 0.1
    # Three schedules, each measured in two calls that agree within 0.2 % (a GPU).
    for vector, (a, b) in zip(
        [((16, 2), 1), ((8, 4), 1), ((4, 8), 1)], [(2.0, 2.002), (3.0, 2.997), (4.0, 4.004)]
    ):
        core.observe(vector, [a] * 3)
        core.observe(vector, [b] * 3)
    assert core.between_call_noise == pytest.approx(math.log(1.001), rel=0.01)
    assert core.sure_gain == 0.01  # 3 x 0.1 % is below min_gain
    # A CPU-like 6 % between-call difference keeps the configured bound.
    noisy = DescentCore(((32, 1), 0), [1.0], COORDS, config, np.random.default_rng(0))
    for vector in [((16, 2), 1), ((8, 4), 1), ((4, 8), 1)]:
        noisy.observe(vector, [2.0] * 3)
        noisy.observe(vector, [2.12] * 3)
    assert noisy.sure_gain == 0.1


def test_small_gain_moves_after_one_call_once_calls_agree():
    config = DescentConfig(p_value=0.05, min_gain=0.01, max_step=1, sure_gain=0.1)
    core = DescentCore(((32, 1), 0), [1.0, 1.001, 0.999], COORDS, config, np.random.default_rng(0))
    for vector in [((32, 1), 1), ((32, 1), 2), ((32, 1), 3)]:  # quiet calls, known noise
        core.observe(vector, [2.0, 2.0, 2.0])
        core.observe(vector, [2.001, 2.001, 2.001])
    for p in core.propose(10):
        faster = p.vector == ((16, 2), 0)
        if p.vector not in [((32, 1), 1), ((32, 1), 2), ((32, 1), 3)]:
            core.observe(p.vector, [0.95, 0.951, 0.949] if faster else [1.2, 1.2, 1.2])
    move = core.conclude()  # 5 % after one call: enough now (see the 2-call test above)
    assert move is not None and core.incumbent == ((16, 2), 0)


def test_independent_improvements_are_tried_together_first():
    coords = [
        Coordinate(CATEGORICAL, "a", choices=(0, 1, 2)),
        Coordinate(CATEGORICAL, "b", choices=(0, 1, 2)),
        Coordinate(CATEGORICAL, "c", choices=(0, 1, 2)),
    ]
    config = DescentConfig(min_gain=0.0, max_step=1, min_measurements=1, max_measurements=1)
    core = DescentCore((0, 0, 0), [10.0, 10.0], coords, config, np.random.default_rng(0))
    times = {(1, 0, 0): 5.0, (0, 1, 0): 8.0, (0, 0, 1): 9.0}
    for p in core.propose(10):
        t = times[p.vector]
        core.observe(p.vector, [t, t])
    assert core.conclude() is not None and core.incumbent == (1, 0, 0)
    # The continuation, then b's and c's improvements together, then each alone.
    assert [p.vector for p in core.propose(4)] == [(2, 0, 0), (1, 1, 1), (1, 1, 0), (1, 0, 1)]


def test_rank_orders_step_one_and_drops_unbuildable_neighbors():
    coords = [Coordinate(CATEGORICAL, f"c{i}", choices=tuple(range(5))) for i in range(3)]
    seen = []

    def rank(vectors):
        seen.append(list(vectors))
        # Predicts coordinate 2 moving up is best; (2, 2, 1) cannot be built.
        return [None if v == (2, 2, 1) else 10.0 * v[2] + v[0] + 0.1 * v[1] for v in vectors]

    core = DescentCore(
        (2, 2, 2), [1.0], coords, DescentConfig(max_step=1), np.random.default_rng(0), rank=rank
    )
    order = [p.vector for p in core.propose(10)]
    assert len(seen) == 1 and len(seen[0]) == 6  # every step-1 neighbor, ranked once
    assert order == [(2, 2, 3), (3, 2, 2), (2, 3, 2), (2, 1, 2), (1, 2, 2)]
    assert (2, 2, 1) not in order


def test_rank_none_keeps_random_order_and_bad_rank_is_an_error():
    coords = [Coordinate(CATEGORICAL, f"c{i}", choices=tuple(range(5))) for i in range(3)]
    config = DescentConfig(max_step=1)
    plain = DescentCore((2, 2, 2), [1.0], coords, config, np.random.default_rng(3))
    ranked = DescentCore(
        (2, 2, 2), [1.0], coords, config, np.random.default_rng(3), rank=lambda v: None
    )
    assert [p.vector for p in plain.propose(6)] == [p.vector for p in ranked.propose(6)]
    with pytest.raises(ValueError, match="one score"):
        DescentCore(
            (2, 2, 2), [1.0], coords, config, np.random.default_rng(3), rank=lambda v: [1.0]
        )
