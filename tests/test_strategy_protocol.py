"""DropletSearch driven through MetaSchedule's protocol with fake runner results."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm.s_tir.meta_schedule.runner import RunnerResult
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet import DropletSearch, default_exploration_trials

from .conftest import synthetic_cost

_names = itertools.count()
MOD = create_te_workload("GMM", 0)
SMALL_SPACE = create_te_workload("NRM", 0)


def make_context(strategy, target, seed, mod=MOD):
    """A one-thread tune context of ``mod`` with a task name no other test uses."""
    return ms.TuneContext(
        mod=mod,
        target=target,
        space_generator="post-order-apply",
        search_strategy=strategy,
        task_name=f"proto{next(_names)}",
        rand_state=seed,
        num_threads=1,
    )


def drive(
    strategy,
    target,
    max_trials,
    num_trials_per_iter,
    *,
    database=None,
    seed=1,
    failing=lambda index: False,
    samples=2,
    cost_model=None,
    mod=MOD,
    noise=0.0,
    failure_msg="fake build failure",
):
    """Run one task by hand like the task scheduler does; commit records like AddToDatabase.

    ``noise``: each run time is the synthetic cost times ``1 + noise * N(0, 1)`` (seeded).
    ``failure_msg``: the error of a candidate ``failing`` picks, or a function of its index
    (MetaSchedule hands a failed build's error to the strategy as the runner result's).
    """
    noise_rng = np.random.default_rng(seed)
    context = make_context(strategy, target, seed, mod)
    database = database if database is not None else ms.database.MemoryDatabase()
    context.pre_tuning(
        max_trials,
        num_trials_per_iter,
        context.generate_design_space(),
        database,
        cost_model if cost_model is not None else ms.cost_model.RandomModel(seed=seed),
    )
    workload = database.commit_workload(context.mod)
    batches = []
    count = 0
    for _ in range(10 * max_trials + 10):
        candidates = context.generate_measure_candidates()
        if candidates is None:
            break
        assert len(candidates) > 0, "a strategy must never return []"
        results = []
        for candidate in candidates:
            if failing(count):
                message = failure_msg(count) if callable(failure_msg) else failure_msg
                results.append(RunnerResult(run_secs=None, error_msg=message))
            else:
                cost = synthetic_cost(candidate.sch)
                secs = [cost * (1 + noise * noise_rng.standard_normal()) for _ in range(samples)]
                results.append(RunnerResult(run_secs=secs, error_msg=None))
            count += 1
        context.notify_runner_results(candidates, results)
        for candidate, result in zip(candidates, results):
            database.commit_tuning_record(
                TuningRecord(
                    candidate.sch.trace,
                    workload,
                    result.run_secs if result.run_secs is not None else [1e10],
                    target,
                    candidate.args_info,
                )
            )
        batches.append(
            [
                (
                    int(tvm_ffi.structural_hash(c.sch.mod)),
                    float(r.run_secs[0]) if r.run_secs else None,
                )
                for c, r in zip(candidates, results)
            ]
        )
    context.post_tuning()
    return batches, database


def repeats(hashes, known=()):
    """How many entries of ``hashes`` measure a module measured before (earlier, or known)."""
    seen = set(known)
    count = 0
    for h in hashes:
        count += h in seen
        seen.add(h)
    return count


def test_budget_cap_batches_and_phase_switch(host_target, droplet_log):
    batches, _ = drive(DropletSearch(exploration_trials=6), host_target, 20, 4)
    sizes = [len(b) for b in batches]
    assert sum(sizes) <= 20
    assert all(0 < s <= 4 for s in sizes)
    text = droplet_log.text()
    assert "exploration done after 6 trials" in text
    total = sum(sizes)
    assert f"summary: {total} trials (exploration 6, descent {total - 6}" in text


def test_descent_improves_on_exploration_and_never_repeats(host_target, droplet_log):
    strategy = DropletSearch(exploration_trials=4)
    batches, _ = drive(strategy, host_target, 60, 8)
    flat = [item for batch in batches for item in batch]
    explored, descended = flat[:4], flat[4:]
    assert descended, "the descent measured nothing"
    assert min(c for _, c in descended) < min(c for _, c in explored)
    (report,) = strategy.reports
    assert report.moves >= 1
    assert repeats([h for h, _ in flat]) == report.remeasured, "a module was measured twice"
    assert "move 1 accepted" in droplet_log.text()


def test_single_call_mode_never_repeats_a_module(host_target):
    strategy = DropletSearch(exploration_trials=4, min_measurements=1, remeasure_start=False)
    batches, _ = drive(strategy, host_target, 40, 8)
    hashes = [h for batch in batches for h, _ in batch]
    assert len(hashes) == len(set(hashes))
    assert strategy.reports[0].remeasured == 0


@pytest.mark.parametrize("again", [True, False])
def test_start_is_measured_again_beside_its_first_neighbors(host_target, droplet_log, again):
    strategy = DropletSearch(exploration_trials=8, remeasure_start=again, min_measurements=1)
    batches, _ = drive(strategy, host_target, 16, 8)
    explored, first_descent = batches[0], batches[1]
    start = min(explored, key=lambda item: item[1])[0]
    hashes = [h for h, _ in first_descent]
    assert len(hashes) == 8, "the start must not take a batch of its own"
    assert (start in hashes) is again
    assert strategy.reports[0].remeasured == int(again)
    assert ("measuring it again" in droplet_log.text()) is again


def test_stops_at_local_optimum_and_leaves_budget_without_restarts(host_target, droplet_log):
    strategy = DropletSearch(exploration_trials=2, max_step=1, max_restarts=0)
    batches, _ = drive(strategy, host_target, 2000, 32)
    used = sum(len(b) for b in batches)
    assert used < 2000
    assert "local optimum" in droplet_log.text()
    assert strategy.reports[0].restarts == 0


def test_restarts_spend_the_budget_left_at_a_local_optimum(host_target, droplet_log):
    strategy = DropletSearch(exploration_trials=2, max_step=1, max_restarts=2)
    batches, _ = drive(strategy, host_target, 2000, 8)
    (report,) = strategy.reports
    assert report.restarts == 2
    text = droplet_log.text()
    assert text.count("local optimum") >= 2
    assert "restart 1: the descent ended (local optimum" in text
    assert "restart 2:" in text and "restart 3:" not in text
    # Each restart explores one more batch: exploration grows past the first 2 trials.
    assert report.exploration > 2
    assert "no descent began or ended there before" in text
    hashes = [h for batch in batches for h, _ in batch]
    assert repeats(hashes) == report.remeasured, "a restart measured a known module again"


def test_a_restart_that_finds_nothing_new_ends_the_task(host_target, droplet_log):
    # NRM:0's space holds about 60 schedules: evolutionary search exhausts it quickly (a small
    # population keeps its empty batches cheap). Before, restarts went on descending over
    # known schedules, measuring them again until the budget was spent.
    strategy = DropletSearch(
        exploration_trials=16, population_size=64, init_min_unmeasured=8, genetic_num_iters=1
    )
    batches, _ = drive(strategy, host_target, 400, 16, mod=SMALL_SPACE, noise=0.1)
    hashes = [h for batch in batches for h, _ in batch]
    (report,) = strategy.reports
    assert len(hashes) < 400
    assert report.stop_reason == "a restart's exploration found nothing new to measure"
    assert report.restarts >= 1
    assert repeats(hashes) == report.remeasured
    assert report.remeasured <= 3 * (report.restarts + 1), "descents over known schedules"
    starts = droplet_log.text().count("descent starts from")
    assert starts == report.restarts  # the last restart ended before its descent


@pytest.mark.parametrize("again", [False, True])
def test_failures_are_counted_and_never_raise(host_target, droplet_log, again):
    # With remeasure_start, the start's second look is trial 5: it fails, and the descent
    # goes on with the start's recorded time instead of ending.
    batches, _ = drive(
        DropletSearch(exploration_trials=4, remeasure_start=again),
        host_target,
        24,
        4,
        failing=lambda i: i % 3 == 1,
    )
    assert sum(len(b) for b in batches) == 24
    text = droplet_log.text()
    failed = sum(1 for i in range(24) if i % 3 == 1)
    assert f"{failed} failed measurements" in text
    assert "in a row" not in text  # scattered failures are odd schedules: no warning


class _LevelCollector(logging.Handler):
    """(level name, message) of every record."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


def _warnings_while(run) -> list[str]:
    """The WARNING messages the strategy logs while ``run()`` runs."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    collector = _LevelCollector()
    logger.addHandler(collector)
    try:
        run()
    finally:
        logger.removeHandler(collector)
    return [m for level, m in collector.records if level == "WARNING"]


def test_a_failing_environment_gets_one_warning_with_cause_count_and_fix(host_target, droplet_log):
    # The run: every build times out; exploration 8 of 24, batches of 4.
    timeout = "LocalBuilder: Timeout, killed after 30.0 seconds"
    strategy = DropletSearch(exploration_trials=8)
    warnings = _warnings_while(
        lambda: drive(strategy, host_target, 24, 4, failing=lambda i: True, failure_msg=timeout)
    )
    (warning,) = [w for w in warnings if "in a row" in w]  # once, not once a batch
    assert "4 candidates in a row failed with the same cause, builder timeout" in warning
    assert "4 of 4 measured so far" in warning and timeout in warning
    assert "LocalBuilder(timeout_sec=" in warning  # the fix
    (report,) = strategy.reports
    assert report.failure_causes == {"builder timeout": report.failures}
    assert report.failures == report.trials >= 8
    # The INFO lines stay as they were.
    assert "the starting schedule failed to build or run" in droplet_log.text()


def test_each_cause_is_warned_once(host_target):
    # A first batch of build errors, then a batch of run errors, then no failure.
    def message(i):
        return "LocalBuilder: An exception occurred\nx" if i < 4 else "LocalRunner: Timeout, x"

    warnings = _warnings_while(
        lambda: drive(
            DropletSearch(exploration_trials=12),
            host_target,
            16,
            4,
            failing=lambda i: i < 8,
            failure_msg=message,
        )
    )
    warned = [w for w in warnings if "in a row" in w]
    assert len(warned) == 2
    assert "same cause, build error" in warned[0] and "same cause, runner timeout" in warned[1]


def test_descent_starts_from_database_best_and_skips_known(host_target, droplet_log):
    first, database = drive(DropletSearch(exploration_trials=8), host_target, 16, 8)
    known = {h for batch in first for h, _ in batch}
    best = min(c for batch in first for _, c in batch)
    strategy = DropletSearch(exploration_trials=0)
    second, _ = drive(strategy, host_target, 16, 8, database=database)
    again = [h for batch in second for h, _ in batch]
    assert again, "the second run measured nothing"
    # Only deliberate confirmations measure a known module again.
    assert repeats(again, known) == strategy.reports[0].remeasured
    assert f"database included), {best * 1e6:.2f} us" in droplet_log.text()


def test_resume_counts_database_records_toward_exploration(host_target, droplet_log):
    first, database = drive(DropletSearch(exploration_trials=8), host_target, 8, 8)
    known = {h for batch in first for h, _ in batch}
    strategy = DropletSearch(exploration_trials=12)
    second, _ = drive(strategy, host_target, 12, 4, database=database)
    again = [h for batch in second for h, _ in batch]
    assert len(again) == 12
    assert repeats(again, known) == strategy.reports[0].remeasured
    text = droplet_log.text()
    assert "resuming: 8 records of this workload and target" in text
    assert "exploration done after 4 trials" in text


def test_same_seed_same_trajectory(host_target):
    a, _ = drive(DropletSearch(exploration_trials=0), host_target, 24, 4, seed=11)
    b, _ = drive(DropletSearch(exploration_trials=0), host_target, 24, 4, seed=11)
    c, _ = drive(DropletSearch(exploration_trials=0), host_target, 24, 4, seed=12)
    assert a == b
    assert a != c


def test_descent_batches_are_capped_by_descent_batch(host_target):
    batches, _ = drive(DropletSearch(exploration_trials=16, descent_batch=4), host_target, 40, 16)
    sizes = [len(b) for b in batches]
    assert sizes[0] == 16 and all(0 < s <= 4 for s in sizes[1:]) and sum(sizes) == 40
    whole, _ = drive(DropletSearch(exploration_trials=16, descent_batch=None), host_target, 40, 16)
    assert max(len(b) for b in whole[1:]) > 4  # None: the tuner's num_trials_per_iter


@derived_object
class OracleModel(PyCostModel):
    """Predicts the synthetic objective exactly (or raises, with ``fail``)."""

    def __init__(self, fail=False):
        self.fail = fail

    def load(self, path):
        pass

    def save(self, path):
        pass

    def update(self, context, candidates, results):
        pass

    def predict(self, context, candidates):
        if self.fail:
            raise RuntimeError("this cost model is broken")
        return np.array([1.0 / synthetic_cost(c.sch) for c in candidates])


def test_neighbors_are_measured_best_predicted_first(host_target):
    def first_descent_batch(rank):
        strategy = DropletSearch(exploration_trials=0, descent_batch=8, rank_neighbors=rank)
        batches, _ = drive(strategy, host_target, 8, 8, cost_model=OracleModel())
        assert [len(b) for b in batches] == [8]  # the start with its first neighbors
        return [cost for _, cost in batches[0][1:]]  # the neighbors' synthetic costs, in order

    ranked, unranked = first_descent_batch(True), first_descent_batch(False)
    assert ranked == sorted(ranked)
    assert unranked != sorted(unranked)
    assert ranked[0] < min(unranked) or ranked[0] == min(ranked + unranked)


def test_a_failing_cost_model_leaves_the_random_order(host_target, droplet_log):
    strategy = DropletSearch(exploration_trials=0, descent_batch=4, rank_neighbors=True)
    batches, _ = drive(strategy, host_target, 13, 4, cost_model=OracleModel(fail=True))
    assert sum(len(b) for b in batches) == 13
    assert "could not rank neighbors; random order" in droplet_log.text()
    assert strategy.reports[-1].trials == 13


def test_single_sample_runner_remeasures_contested(host_target, droplet_log):
    drive(DropletSearch(exploration_trials=4), host_target, 40, 8, samples=1)
    assert "re-measurements" in droplet_log.text()
    summary = [m for m in droplet_log.messages if "summary" in m][-1]
    assert " 0 re-measurements" not in summary


def test_clone_keeps_options_and_works_in_the_protocol(host_target, droplet_log):
    strategy = DropletSearch(exploration_trials=7, max_step=1, population_size=64)
    drive(strategy, host_target, 10, 4)
    batches, _ = drive(strategy.clone(), host_target, 10, 4)
    assert sum(len(b) for b in batches) == 10
    runs = [m for m in droplet_log.messages if "exploration done after 7 trials" in m]
    assert len(runs) == 2
    assert all("max_step=1" in m for m in droplet_log.messages if "budget 10 trials" in m)


def test_name_resolves_everywhere(host_target):
    from tvm.s_tir.meta_schedule import search_strategy
    from tvm.s_tir.meta_schedule.search_strategy import SearchStrategy

    for create in (SearchStrategy.create, search_strategy.create):
        made = create("droplet", exploration_trials=3)
        assert made.exploration_trials == 3
    assert type(SearchStrategy.create("evolutionary")).__name__ == "EvolutionarySearch"
    assert type(SearchStrategy.create("replay-trace")).__name__ == "ReplayTrace"
    context = ms.TuneContext(
        mod=MOD, target=host_target, space_generator="post-order-apply", search_strategy="droplet"
    )
    assert context.search_strategy is not None
    with pytest.raises(ValueError, match="Unknown SearchStrategy"):
        SearchStrategy.create("no-such-strategy")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p_value": 0.0}, r"p_value must be a number in \(0.0, 1.0\), got 0.0"),
        ({"p_value": 1.5}, r"p_value must be a number in \(0.0, 1.0\), got 1.5"),
        ({"min_gain": -0.1}, r"min_gain must be a number in \[0.0, 1.0\)"),
        ({"exploration_trials": -1}, r"exploration_trials must be an integer >= 0 or None"),
        ({"max_step": 0}, r"max_step must be an integer >= 1, got 0"),
        ({"sure_gain": 1.5}, r"sure_gain must be a number in \[0.0, 1.0\], got 1.5"),
        (
            {"min_measurements": 3, "max_measurements": 2},
            r"max_measurements must be >= min_measurements",
        ),
        ({"max_measurements": 1.5}, r"max_measurements must be an integer >= 1"),
        ({"descent_batch": 0}, r"descent_batch must be an integer >= 1 or None, got 0; .*8"),
        ({"max_restarts": -1}, r"max_restarts must be an integer >= 0 or None, got -1"),
        ({"rank_neighbors": "yes"}, r"rank_neighbors must be True or False, got 'yes'; .*False"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropletSearch(**kwargs)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['pvalue'\].*population_size"):
        DropletSearch(pvalue=0.1)
    with pytest.raises(TypeError):
        DropletSearch(5)  # keyword-only


@pytest.mark.parametrize(
    "budget, per_iter, expected",
    [
        (1, None, 1),
        (10, None, 10),
        (64, None, 32),
        (100, None, 50),
        (101, None, 51),  # half, rounded up
        (1000, None, 300),
        (10**4, None, 300),
        (128, 16, 64),
        (100, 16, 64),  # whole batches: 50 -> 64
        (20, 16, 16),
        (10, 16, 10),  # never above the budget
        (1000, 16, 304),
        (64, 64, 64),
    ],
)
def test_default_exploration(budget, per_iter, expected):
    assert default_exploration_trials(budget, per_iter) == expected


def test_misuse_says_what_to_call_first(host_target):
    context = make_context(DropletSearch(), host_target, seed=1)
    spaces = context.generate_design_space()
    database = ms.database.MemoryDatabase()
    context.pre_tuning(8, 4, spaces, database, ms.cost_model.RandomModel(seed=1))
    with pytest.raises(Exception, match="call post_tuning before tuning again"):
        context.pre_tuning(8, 4, spaces, database, ms.cost_model.RandomModel(seed=1))
    context.post_tuning()
    # Before pre_tuning there is nothing to generate: None, not an exception.
    assert context.generate_measure_candidates() is None


def test_internal_error_ends_the_task_without_raising(host_target, droplet_log, monkeypatch):
    import ms_droplet._driver as driver_module  # the descent phase builds the TraceSpace

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug in the descent")

    monkeypatch.setattr(driver_module, "TraceSpace", broken)
    batches, _ = drive(DropletSearch(exploration_trials=4), host_target, 16, 4)
    assert sum(len(b) for b in batches) == 4  # exploration only, then the task ends cleanly
    text = droplet_log.text()
    assert "unexpected error" in text and "internal error" in text


def test_register_is_idempotent_and_keeps_other_names():
    from tvm.s_tir.meta_schedule.search_strategy import SearchStrategy

    import ms_droplet

    before = SearchStrategy.create
    ms_droplet.register()
    ms_droplet.register()
    assert SearchStrategy.create is before
    assert SearchStrategy.create("droplet").exploration_trials is None
    assert type(SearchStrategy.create("replay-func")).__name__ == "ReplayFunc"


def test_exploration_samples_what_evolutionary_search_alone_would(host_target):
    """Same seed, same cost model: droplet's first exploration batch is evolutionary's."""
    droplet, _ = drive(DropletSearch(exploration_trials=8), host_target, 16, 8, seed=5)
    alone, _ = drive(ms.search_strategy.EvolutionarySearch(), host_target, 8, 8, seed=5)
    assert [h for h, _ in droplet[0]] == [h for h, _ in alone[0]]


def test_neighbors_whose_compute_location_became_illegal_are_snapped_not_dropped(host_target):
    """C2D:0's padding block is computed under a tile loop that some tile moves remove. With
    snap_locations (the default) such neighbors are kept at the next outer legal location and
    counted; without it they are dropped as invalid. Every record committed replays to the
    module that was measured."""
    conv = create_te_workload("C2D", 0)

    def run(snap):
        # From the design space, every neighbor up to step 3 (the start's tile moves that
        # snap are of step 3): each fails to run, so no move is made and both runs walk the same
        # neighborhood to its local optimum.
        strategy = DropletSearch(
            exploration_trials=0, descent_batch=16, max_step=3, max_restarts=0, snap_locations=snap
        )
        batches, database = drive(
            strategy, host_target, 160, 16, mod=conv, failing=lambda index: index > 0
        )
        return strategy.reports[-1], batches, database

    snapped, batches, database = run(True)
    strict, _, _ = run(False)
    assert snapped.snapped > 0
    assert strict.snapped == 0
    assert strict.invalid >= snapped.invalid + snapped.snapped
    measured = {h for batch in batches for h, _ in batch}
    for record in database.get_all_tuning_records():
        sch = tvm.s_tir.Schedule(conv, seed=1, debug_mask=0)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        assert int(tvm_ffi.structural_hash(sch.mod)) in measured
