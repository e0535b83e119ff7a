"""ms_droplet.tune_kernel: argument checks, and a real tiny run with its curve and phases."""

from __future__ import annotations

import math

import pytest
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet.kernel import KernelTuneResult, TrialMonitor, tune_kernel


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_trials": 0}, r"max_trials must be an integer >= 1, got 0"),
        ({"num_trials_per_iter": 2.5}, r"num_trials_per_iter must be an integer >= 1, got 2.5"),
        ({"strategy": "annealing"}, r"strategy must be one of droplet, evolutionary.*'annealing'"),
        ({"builder": "remote"}, r"builder must be 'fast', 'local' or a Builder object"),
        (
            {"strategy": "evolutionary", "exploration_trials": 4},
            r"exploration_trials applies to strategy='droplet' only",
        ),
        (
            {"max_trials": 8, "exploration_trials": 9},
            r"exploration_trials \(9\) must not exceed max_trials \(8\)",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune_kernel(None, "llvm", str(tmp_path / "w"), **kwargs)
    assert not (tmp_path / "w").exists()  # refused before the work_dir was made


def test_monitor_counts_failures_and_keeps_the_best():
    class Result:
        def __init__(self, run_secs, error_msg=None):
            self.run_secs, self.error_msg = run_secs, error_msg

    monitor = TrialMonitor(4)
    built, failed_build = Result(None), Result(None, "build error")
    monitor.add([built, built], [Result([2e-3, 4e-3]), Result([1e10])], "exploration")
    monitor.add([failed_build, built], [Result([1e-4]), Result([1e-3])], "descent")
    monitor.close()
    assert [(p.trial, p.secs, p.best_secs, p.phase) for p in monitor.curve] == [
        (1, pytest.approx(3e-3), pytest.approx(3e-3), "exploration"),
        (2, None, pytest.approx(3e-3), "exploration"),
        (3, None, pytest.approx(3e-3), "descent"),  # its build failed: its time does not count
        (4, pytest.approx(1e-3), pytest.approx(1e-3), "descent"),
    ]
    assert monitor.trials == 4


def test_monitor_counts_failures_by_cause():
    class Result:
        def __init__(self, run_secs, error_msg=None):
            self.run_secs, self.error_msg = run_secs, error_msg

    monitor = TrialMonitor(4)
    timeout = Result(None, "LocalBuilder: Timeout, killed after 30.0 seconds")
    built = Result(None)
    runner_failed = Result(None, "LocalRunner: An exception occurred\nIllegal instruction")
    build_failed = Result(None, "LocalBuilder: Timeout, killed after 30.0 seconds")
    monitor.add(
        [timeout, built, built, timeout],
        [build_failed, runner_failed, Result([1e-3]), build_failed],
        "exploration",
    )
    monitor.close()
    assert monitor.failures == {"builder timeout": 2, "run error": 1}
    assert [p.failure for p in monitor.curve] == [
        "builder timeout",
        "run error",
        None,
        "builder timeout",
    ]


def test_all_failed_and_main_failure():
    result = KernelTuneResult("llvm", "droplet", math.nan, 1e6, 4, 0.0, "w")
    assert not result.all_failed and result.main_failure is None
    result.failures = {"builder timeout": 3, "run error": 1}
    assert result.all_failed and result.main_failure == "builder timeout"
    result.failures = {"builder timeout": 3}
    assert not result.all_failed
    assert not KernelTuneResult("llvm", "droplet", math.nan, 1e6, 0, 0.0, "w").all_failed


def test_result_without_a_record():
    result = KernelTuneResult("llvm", "evolutionary", math.nan, 1e6, 0, 0.0, "w")
    assert math.isnan(result.gflops) and result.trials_per_phase is None
    assert result.database.endswith("database_tuning_record.json")


@pytest.mark.tuning
def test_small_run_curve_and_phases(tmp_path, host_target):
    work_dir = str(tmp_path / "w")
    result = tune_kernel(
        create_te_workload("GMM", 0),
        host_target,
        work_dir,
        max_trials=8,
        exploration_trials=4,
        num_trials_per_iter=4,
        seed=1,
    )
    assert result.strategy == "droplet" and result.trials == 8 and not result.stopped
    assert result.trials_per_phase["exploration"] == 4
    assert sum(result.trials_per_phase.values()) == 8
    assert result.database == f"{work_dir}/database_tuning_record.json"
    curve = result.curve
    assert [p.trial for p in curve] == list(range(1, 9))
    # Phases are read from the copy of the strategy tune_tir runs, batch by batch.
    assert [p.phase for p in curve] == ["exploration"] * 4 + ["descent"] * 4
    walls = [p.wall_secs for p in curve]
    assert walls == sorted(walls) and 0 < walls[-1] <= result.wall_secs
    best = math.inf
    for point in curve:
        if point.secs is not None:
            best = min(best, point.secs)
        assert point.best_secs == (best if math.isfinite(best) else None)
    # One run into a fresh work_dir: the database's best is the curve's best.
    assert result.best_secs == pytest.approx(curve[-1].best_secs)
    assert result.gflops > 0 and result.flop > 0
