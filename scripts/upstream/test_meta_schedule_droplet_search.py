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
"""Test Meta Schedule DropletSearch: neighbor rules, descent core and the search strategy"""

# pylint: disable=missing-function-docstring

import math

import numpy as np
import pytest
import tvm
import tvm.testing
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm.s_tir.meta_schedule.runner import RunnerResult
from tvm.s_tir.meta_schedule.search_strategy import DropletSearch
from tvm.s_tir.meta_schedule.search_strategy._droplet_descent import (
    CATEGORICAL,
    PERFECT_TILE,
    Coordinate,
    DescentConfig,
    DescentCore,
    Outcome,
    compare_samples,
)
from tvm.s_tir.meta_schedule.search_strategy._droplet_neighbors import (
    divisors_with_omega,
    index_neighbors,
    partitioned_tile_neighbors,
    prime_factors,
    tile_neighbors,
)
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload


def _synthetic_cost(sch):
    """Seconds, minimal when every innermost tile factor is 4 and every categorical is 2."""
    trace = sch.trace
    cost = 1.0
    for inst in trace.insts:
        decision = trace.get_decision(inst)
        if decision is None:
            continue
        if inst.kind.name == "SamplePerfectTile":
            cost += abs(math.log2(int(decision[-1])) - 2)
        elif inst.kind.name == "SampleCategorical":
            cost += 0.3 * abs(int(decision) - 2)
    return cost * 1e-5


def test_droplet_prime_factors_and_divisors():
    assert prime_factors(12) == (2, 2, 3)
    assert prime_factors(1) == ()
    assert divisors_with_omega(12, 1) == (2, 3)
    assert divisors_with_omega(12, 2) == (4, 6)
    assert divisors_with_omega(7, 2) == ()
    with pytest.raises(ValueError):
        prime_factors(0)


def test_droplet_tile_neighbors_keep_extent():
    tile = (4, 3, 8)
    for step in (1, 2):
        neighbors = tile_neighbors(tile, step)
        assert neighbors == sorted(set(neighbors))
        assert tile not in neighbors
        assert all(math.prod(n) == 96 for n in neighbors)
    assert (2, 3, 16) in tile_neighbors(tile, 1)
    assert all(n[-1] <= 8 for n in tile_neighbors(tile, 1, max_innermost_factor=8))
    assert tile_neighbors((-1, 4), 1) == []
    inner = partitioned_tile_neighbors((2, 4, 4), 1, partition_pos=1, innerpart_factor=8)
    assert inner and all((n[1] * n[2]) % 8 == 0 for n in inner)


def test_droplet_index_neighbors():
    assert index_neighbors(2, range(5), 1) == [1, 3]
    assert index_neighbors(0, range(5), 2) == [2]
    assert index_neighbors(-2, (-2, -1, 0, 3), 1) == [-1]
    assert index_neighbors(7, range(5), 1) == []


def test_droplet_compare_samples():
    slow, fast = [1.0, 1.01, 0.99], [0.5, 0.51, 0.49]
    assert compare_samples(slow, fast, 0.05, 0.01).outcome is Outcome.ACCEPT
    assert compare_samples(fast, slow, 0.05, 0.01).outcome is Outcome.REJECT
    assert compare_samples([1.0], [0.5], 0.05, 0.01).outcome is Outcome.UNDECIDED


def test_droplet_descent_core_reaches_optimum():
    coords = [
        Coordinate(PERFECT_TILE, "tile", max_innermost_factor=64),
        Coordinate(CATEGORICAL, "unroll", choices=tuple(range(6))),
    ]

    def cost(vector):
        tile, unroll = vector
        return 1.0 + abs(math.log2(tile[-1]) - 3) + 0.5 * abs(unroll - 4)

    core = DescentCore(((1, 64), 0), [], coords, DescentConfig(), np.random.default_rng(0))
    measured = 0
    while not core.finished and measured < 500:
        proposals = core.propose(8)
        if not proposals:
            core.conclude()
            continue
        for proposal in proposals:
            core.observe(proposal.vector, [cost(proposal.vector)] * 2)
            measured += 1
        core.conclude()
    assert core.finished
    assert "local optimum" in core.stop_reason
    assert core.incumbent == ((8, 8), 4)


def _tune_by_hand(strategy, max_trials, num_trials_per_iter, seed=1):
    """Drive one task like the task scheduler does, with fake runner results."""
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    context = ms.TuneContext(
        mod=create_te_workload("GMM", 0),
        target=target,
        space_generator="post-order-apply",
        search_strategy=strategy,
        task_name="droplet",
        rand_state=seed,
        num_threads=1,
    )
    database = ms.database.MemoryDatabase()
    context.pre_tuning(
        max_trials,
        num_trials_per_iter,
        context.generate_design_space(),
        database,
        ms.cost_model.RandomModel(seed=seed),
    )
    workload = database.commit_workload(context.mod)
    batches = []
    for _ in range(10 * max_trials):
        candidates = context.generate_measure_candidates()
        if candidates is None:
            break
        assert len(candidates) > 0
        results = [RunnerResult([_synthetic_cost(c.sch)] * 2, None) for c in candidates]
        context.notify_runner_results(candidates, results)
        for candidate, result in zip(candidates, results):
            database.commit_tuning_record(
                TuningRecord(
                    candidate.sch.trace, workload, result.run_secs, target, candidate.args_info
                )
            )
        batches.append([float(r.run_secs[0]) for r in results])
    context.post_tuning()
    return batches


def test_droplet_search_strategy_descends():
    # A small evolutionary population keeps the exploration phase fast.
    strategy = ms.search_strategy.SearchStrategy.create(
        "droplet",
        exploration_trials=4,
        population_size=16,
        init_min_unmeasured=4,
        genetic_num_iters=1,
    )
    assert isinstance(strategy, DropletSearch)
    batches = _tune_by_hand(strategy, 32, 8)
    assert sum(len(b) for b in batches) <= 32
    assert all(0 < len(b) <= 8 for b in batches)
    costs = [c for b in batches for c in b]
    assert min(costs[4:]) < min(costs[:4])
    (report,) = strategy.reports
    assert report.exploration == 4
    assert report.moves >= 1


def test_droplet_search_strategy_create():
    strategy = ms.search_strategy.SearchStrategy.create("droplet", exploration_trials=8, max_step=1)
    assert isinstance(strategy, DropletSearch)
    assert strategy.exploration_trials == 8
    assert strategy.config.max_step == 1
    assert isinstance(ms.search_strategy.create("droplet"), DropletSearch)
    evolutionary = ms.search_strategy.create("evolutionary")
    assert isinstance(evolutionary, ms.search_strategy.EvolutionarySearch)
    with pytest.raises(TypeError):
        ms.search_strategy.SearchStrategy.create("droplet", 8)
    context = ms.TuneContext(
        mod=create_te_workload("GMM", 0),
        target=tvm.target.Target({"kind": "llvm", "num-cores": 1}),
        space_generator="post-order-apply",
        search_strategy="droplet",
        task_name="droplet-by-name",
    )
    assert context.search_strategy is not None


def test_droplet_search_invalid_options():
    with pytest.raises(ValueError):
        DropletSearch(p_value=0.0)
    with pytest.raises(ValueError):
        DropletSearch(min_measurements=3, max_measurements=2)
    with pytest.raises(TypeError):
        DropletSearch(no_such_option=1)


if __name__ == "__main__":
    tvm.testing.main()
