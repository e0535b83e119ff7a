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
"""The fault matrix: each case runs the real thing, injects one fault and checks that the run
finishes (or stops cleanly), that no measured record is lost, that trials are accounted for and
that the log says what happened. The README's fault table lists the same cases."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import Schedule, Trace
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm.s_tir.meta_schedule.postproc import PyPostproc
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet import DropletSearch, FastBuilder
from ms_droplet.measure import default_evaluator_config
from ms_droplet.testing import faulty_build, faulty_run_evaluator
from ms_droplet.workdir import DatabaseFileError, WorkDirBusyError, check_work_dir, lock_work_dir

from .test_strategy_protocol import MOD, drive

MOD_IR = tvm.IRModule({"main": MOD.with_attr("global_symbol", "main")})

FAILED = 1e9


def _records(work_dir):
    path = os.path.join(work_dir, "database_tuning_record.json")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _logs(work_dir):
    logs = os.path.join(work_dir, "logs")
    return "".join(open(os.path.join(logs, n), encoding="utf-8").read() for n in os.listdir(logs))


def _sampled_trace(mod, target, seed=7):
    """A full trace (every decision made) of ``mod``'s first design space."""
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply")
    space = context.generate_design_space()[0]
    sch = Schedule(mod, seed=seed, debug_mask=0)
    Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
    return sch.trace


# ------------------------------------------------------------------ decisions and neighbors
def test_unreplayable_database_record_is_ignored_and_logged(host_target, droplet_log):
    database = ms.database.MemoryDatabase()
    workload = database.commit_workload(MOD_IR)
    # A trace of another operator: its GetSBlock of "T_softmax_*" fails on MOD.
    foreign = _sampled_trace(create_te_workload("SFM", 0), host_target)
    database.commit_tuning_record(TuningRecord(foreign, workload, [1e-5], host_target, None))
    good = _sampled_trace(MOD, host_target)
    database.commit_tuning_record(TuningRecord(good, workload, [1e-3], host_target, None))
    strategy = DropletSearch(exploration_trials=3)
    batches, _ = drive(strategy, host_target, 6, 3, database=database)
    (report,) = strategy.reports
    assert sum(len(b) for b in batches) == report.trials == 6
    text = droplet_log.text()
    assert "1 of 2 database records of this workload do not replay on it" in text
    # The usable record counts toward exploration, the foreign one does not.
    assert "resuming: 1 records" in text
    assert report.exploration == 2


@derived_object
class OnlyModules(PyPostproc):
    """A postprocessor that accepts only the modules whose structural hashes it was given."""

    def __init__(self, allowed):
        self.allowed = set(allowed)

    def _initialize_with_tune_context(self, context):
        pass

    def apply(self, sch):
        return int(tvm_ffi.structural_hash(sch.mod)) in self.allowed

    def clone(self):
        return OnlyModules(self.allowed)


def test_every_neighbor_invalid_stops_without_measuring(host_target, droplet_log):
    # The database's one record is the only module the postprocessors accept: every neighbor
    # of the descent's start is invalid.
    trace = _sampled_trace(MOD, host_target)
    postprocs = list(ms.postproc.Postproc.create("llvm"))
    sch = Schedule(MOD, seed=1, debug_mask=0)
    trace.apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    assert all(p.apply(sch) for p in postprocs)
    allowed = int(tvm_ffi.structural_hash(sch.mod))
    strategy = DropletSearch(exploration_trials=0)
    context = ms.TuneContext(
        mod=MOD,
        target=host_target,
        space_generator=ms.space_generator.PostOrderApply(
            postprocs=postprocs + [OnlyModules([allowed])]
        ),
        search_strategy=strategy,
        task_name="all_invalid",
        num_threads=1,
    )
    database = ms.database.MemoryDatabase()
    workload = database.commit_workload(MOD_IR)
    database.commit_tuning_record(TuningRecord(trace, workload, [1e-4, 1e-4], host_target, None))
    context.pre_tuning(20, 4, context.generate_design_space(), database, None)
    assert context.generate_measure_candidates() is None
    context.post_tuning()
    (report,) = strategy.reports
    assert report.trials == 0
    assert report.invalid > 5
    assert f"{report.invalid} invalid neighbors dropped" in droplet_log.text()
    assert f"stop: {report.stop_reason}" in droplet_log.text()


@pytest.mark.tuning
def test_workload_without_decisions_degrades_to_exploration_only(tmp_path, host_target):
    # No schedule rules: the design space is the unscheduled function, with no decision at all.
    work_dir = str(tmp_path / "work")
    strategy = DropletSearch(exploration_trials=4, population_size=16)
    with FastBuilder() as builder:
        ms.tune_tir(
            create_te_workload("NRM", 0),
            host_target,
            work_dir,
            max_trials_global=8,
            num_trials_per_iter=4,
            space=ms.space_generator.PostOrderApply(sch_rules=[], mutator_probs={}),
            strategy=strategy,
            builder=builder,
            runner=ms.runner.LocalRunner(evaluator_config=default_evaluator_config()),
        )
    (report,) = strategy.reports
    records = _records(work_dir)
    assert len(records) == report.trials == 1  # one distinct module exists
    assert report.descent == 0
    assert report.stop_reason == "the schedule has no sampling decisions: exploration only"
    assert "no sampling decisions: exploration only" in _logs(work_dir)


# ------------------------------------------------------------------ build and run failures
@pytest.mark.tuning
def test_build_run_and_timeout_failures_are_counted_and_kept(tmp_path, host_target):
    work_dir = str(tmp_path / "work")
    errors = []

    @derived_object
    class Collect(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            for b, r in zip(builder_results, runner_results):
                errors.append(b.error_msg or r.error_msg or "")

    strategy = DropletSearch(exploration_trials=8)
    # Faults follow module hashes: remainder 1 mod 4 hangs about one module in four, so a
    # 24-trial run without a time-out is unlikely (about 1 in 200) whatever the search measures.
    build = functools.partial(faulty_build, fail_every=5, hang_every=4, hang_sec=60)
    run = functools.partial(faulty_run_evaluator, fail_call=2, hang_call=5, period=8, hang_sec=60)
    with FastBuilder(f_build=build, timeout_sec=3) as builder:
        database = ms.tune_tir(
            MOD,
            host_target,
            work_dir,
            max_trials_global=24,
            num_trials_per_iter=8,
            strategy=strategy,
            builder=builder,
            runner=ms.runner.LocalRunner(
                timeout_sec=2, evaluator_config=default_evaluator_config(), f_run_evaluator=run
            ),
            measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default"))
            + [Collect()],
            seed=3,
        )
    (report,) = strategy.reports
    assert report.trials == len(errors) == 24
    kinds = {
        "build failure": sum("injected build failure" in e for e in errors),
        "build time-out": sum("FastBuilder: Timeout" in e for e in errors),
        "run failure": sum("injected run-time failure" in e for e in errors),
        "run time-out": sum("LocalRunner: Timeout" in e for e in errors),
    }
    assert all(kinds.values()), kinds
    # Every candidate, failed or not, is a record; failures carry MetaSchedule's 1e10.
    records = _records(work_dir)
    assert len(records) == 24
    failed = sum(1 for r in records if max(r[1][1]) >= FAILED)
    assert failed == report.failures == sum(kinds.values())
    assert report.failures < 24
    logs = _logs(work_dir)
    assert "Error in building" in logs and "Error in running" in logs
    assert "droplet: candidate failed: LocalRunner: Timeout" in logs
    assert f"{report.failures} failed measurements" in logs
    # The best record is a valid one and compiles.
    best = database.query_tuning_record(
        database.get_all_tuning_records()[0].workload.mod, host_target, "main"
    )
    assert best is not None and max(float(x) for x in best.run_secs) < FAILED


# ------------------------------------------------------------------ resume
def _tune(work_dir, target, strategy, trials, seed):
    with FastBuilder() as builder:
        return ms.tune_tir(
            MOD,
            target,
            work_dir,
            max_trials_global=trials,
            num_trials_per_iter=8,
            strategy=strategy,
            builder=builder,
            runner=ms.runner.LocalRunner(evaluator_config=default_evaluator_config()),
            seed=seed,
        )


def _module_hashes(database, target):
    from ms_droplet._trace import replay

    postprocs = list(ms.postproc.Postproc.create("llvm"))
    return [replay(MOD_IR, r.trace, postprocs, 1).shash for r in database.get_all_tuning_records()]


@pytest.mark.tuning
def test_resume_counts_the_database_and_measures_nothing_twice(tmp_path, host_target):
    work_dir = str(tmp_path / "work")
    first = DropletSearch(exploration_trials=8)
    _tune(work_dir, host_target, first, trials=8, seed=1)
    before = _records(work_dir)
    assert len(before) == 8

    second = DropletSearch(exploration_trials=10)  # 8 of its 10 exploration trials are done
    database = _tune(work_dir, host_target, second, trials=12, seed=2)
    (report,) = second.reports
    logs = _logs(work_dir)
    assert "droplet: resuming: 8 records of this workload and target" in logs
    assert report.exploration == 2 and report.trials == 12
    after = _records(work_dir)
    assert after[:8] == before  # nothing measured earlier is lost or rewritten
    assert len(after) == 8 + 12
    # The descent starts from the best record in the database at the end of exploration.
    means = [sum(r[1][1]) / len(r[1][1]) for r in after[:10]]
    assert report.descent_start_secs == pytest.approx(min(means), rel=1e-6)
    # No module is measured twice, except the descent's deliberate re-measurements.
    hashes = _module_hashes(database, host_target)
    assert None not in hashes
    assert len(hashes) - len(set(hashes)) <= report.remeasured


# ------------------------------------------------------------------ two processes


def test_second_process_in_one_work_dir_is_refused(held_work_dir, host_target):
    work_dir, holder = held_work_dir
    with pytest.raises(
        WorkDirBusyError, match=f"in use by another tuning process \\(pid {holder.pid}"
    ):
        with lock_work_dir(work_dir):
            pass
    # tune_tir with droplet refuses in pre_tuning, before anything is measured.
    with pytest.raises(Exception, match="in use by another tuning process") as info:
        _tune(work_dir, host_target, DropletSearch(exploration_trials=2), trials=2, seed=1)
    assert "Wait for that process to finish, or tune into another work_dir" in str(info.value)
    path = os.path.join(work_dir, "database_tuning_record.json")
    assert not os.path.exists(path) or os.path.getsize(path) == 0
    # The lock dies with its holder, even on SIGKILL.
    holder.kill()
    holder.wait()
    with lock_work_dir(work_dir):
        with lock_work_dir(work_dir):  # re-entrant within a process
            pass


def test_cli_refuses_a_busy_work_dir(held_work_dir, capsys):
    from ms_droplet.cli import main

    work_dir, holder = held_work_dir
    with pytest.raises(SystemExit) as info:
        main(["--trials", "2", "--work-dir", work_dir, "--no-progress"])
    assert info.value.code == 2
    assert f"pid {holder.pid}" in capsys.readouterr().err


# ------------------------------------------------------------------ database files
@pytest.fixture
def two_workload_dir(tmp_path, host_target):
    """A real JSON database: 3 records of an SFM workload, then 4 records of MOD."""
    work_dir = str(tmp_path / "db")
    os.makedirs(work_dir)
    database = ms.database.JSONDatabase(work_dir=work_dir)
    other = tvm.IRModule({"main": create_te_workload("SFM", 0).with_attr("global_symbol", "main")})
    for mod, count in ((other, 3), (MOD_IR, 4)):
        workload = database.commit_workload(mod)
        for seed in range(1, count + 1):
            trace = _sampled_trace(mod, host_target, seed=seed)
            database.commit_tuning_record(
                TuningRecord(trace, workload, [seed * 1e-5], host_target, None)
            )
    return work_dir


def _edit_lines(path, edit):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(edit(lines[:-1])) + "\n")


def test_torn_last_line_is_recovered(two_workload_dir):
    path = os.path.join(two_workload_dir, "database_tuning_record.json")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 500])  # a SIGKILL in the middle of the last record
    with pytest.raises(Exception):  # noqa: B017 - TVM's own error says neither file nor line
        ms.database.JSONDatabase(work_dir=two_workload_dir)
    check = check_work_dir(two_workload_dir)
    assert check.records.torn_bytes > 0 and check.records.lines == 6
    assert os.path.getsize(path + ".torn") == check.records.torn_bytes + 1
    assert len(ms.database.JSONDatabase(work_dir=two_workload_dir).get_all_tuning_records()) == 6
    assert not check_work_dir(two_workload_dir).changed  # idempotent


def test_missing_newline_and_blank_lines_are_fixed(two_workload_dir):
    path = os.path.join(two_workload_dir, "database_tuning_record.json")
    _edit_lines(path, lambda lines: lines[:2] + ["", "  "] + lines[2:])
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 1)  # no final newline
    check = check_work_dir(two_workload_dir)
    assert check.records.newline_added and check.records.blank_removed == 2
    assert check.records.lines == 7
    assert len(ms.database.JSONDatabase(work_dir=two_workload_dir).get_all_tuning_records()) == 7


def test_corrupt_middle_line_names_file_and_line_then_repair_keeps_the_rest(two_workload_dir):
    path = os.path.join(two_workload_dir, "database_tuning_record.json")
    _edit_lines(path, lambda lines: lines[:4] + [lines[4][:60]] + lines[5:])
    with open(path, encoding="utf-8") as f:
        original = f.read()
    with pytest.raises(DatabaseFileError, match=r"database_tuning_record.json, line 5: not valid"):
        check_work_dir(two_workload_dir)
    with open(path, encoding="utf-8") as f:
        assert f.read() == original  # an error changes nothing
    check = check_work_dir(two_workload_dir, repair=True)
    assert check.records.rejected == 1 and check.records.lines == 6
    with open(path + ".rejected", encoding="utf-8") as f:
        assert f.read() == original.split("\n")[4] + "\n"
    database = ms.database.JSONDatabase(work_dir=two_workload_dir)
    assert len(database.get_all_tuning_records()) == 6


def test_corrupt_workload_line_renumbers_the_records_of_later_workloads(
    two_workload_dir, host_target
):
    path = os.path.join(two_workload_dir, "database_workload.json")
    _edit_lines(path, lambda lines: ["garbage"] + lines[1:])
    with pytest.raises(DatabaseFileError, match=r"database_workload.json, line 1"):
        check_work_dir(two_workload_dir)
    check = check_work_dir(two_workload_dir, repair=True)
    assert check.workloads.rejected == 1
    assert check.records.rejected == 3 and check.records.lines == 4  # the SFM records
    assert check_work_dir(two_workload_dir, deep=True).records.lines == 4
    database = ms.database.JSONDatabase(work_dir=two_workload_dir)
    best = database.query_tuning_record(MOD_IR, host_target, "main")
    assert best is not None and float(best.run_secs[0]) == pytest.approx(1e-5)


def test_valid_json_that_metaschedule_cannot_read_is_found_by_the_deep_check(two_workload_dir):
    path = os.path.join(two_workload_dir, "database_tuning_record.json")

    def break_trace(lines):
        record = json.loads(lines[5])
        record[1][0] = [[["NoSuchInstruction", [], [], []]], []]
        return lines[:5] + [json.dumps(record)] + lines[6:]

    _edit_lines(path, break_trace)
    assert check_work_dir(two_workload_dir).records.lines == 7  # the shape is right
    with pytest.raises(DatabaseFileError, match="line 6: MetaSchedule cannot read this record"):
        check_work_dir(two_workload_dir, deep=True)


# ------------------------------------------------------------------ interruption
def _live_group_members(pgid):
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def _wait_for_records(path, count, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read().count(b"\n") >= count:
                    return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} records after {timeout} s")


@pytest.mark.tuning
@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGINT,
        # Slow (90 s) and the default run must stay under ~15 min on 2 cores; a torn last line
        # (what SIGKILL mid-write leaves) is covered by test_torn_last_line_is_recovered.
        pytest.param(signal.SIGKILL, marks=pytest.mark.slow),
    ],
    ids=["SIGINT", "SIGKILL"],
)
def test_interrupted_mid_batch_then_rerun_resumes(tmp_path, sig):
    from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload as workload

    from ms_droplet._trace import replay

    work_dir = str(tmp_path / "work")
    path = os.path.join(work_dir, "database_tuning_record.json")
    command = [sys.executable, "-m", "ms_droplet", "--workload", "GMM:0", "--work-dir"]
    command += [work_dir, "--num-trials-per-iter", "4", "--no-progress", "--seed", "1"]
    proc = subprocess.Popen(
        command + ["--trials", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _wait_for_records(path, 4, proc)
    time.sleep(0.3)  # inside the next batch
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole foreground process group
    else:
        os.kill(proc.pid, sig)  # the OOM killer, `kill -9`: the main process only
    output, _ = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, output
        assert "interrupted" in output and "Traceback" not in output
        assert "To resume, run the same command again" in output
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 15
    while _live_group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.5)  # workers notice their parent is gone
    assert not _live_group_members(proc.pid), "worker processes outlived the run"
    with open(path, "rb") as f:
        data = f.read()
    kept = data[: data.rfind(b"\n") + 1]  # a SIGKILL may tear the last line
    measured = kept.count(b"\n")
    assert 4 <= measured < 40
    # Workers ignore Ctrl-C: no candidate in flight was recorded as a failure.
    assert all(max(json.loads(line)[1][1]) < FAILED for line in kept.splitlines())

    rerun = subprocess.run(
        command + ["--trials", "4"], capture_output=True, text=True, timeout=300, check=False
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "exploration 0, descent 4" in rerun.stdout  # the database covers exploration
    with open(path, "rb") as f:
        after = f.read()
    assert after.startswith(kept)  # nothing measured before the interruption is lost
    assert after.count(b"\n") == measured + 4
    # No module measured twice, except the descent's deliberate re-measurements.
    remeasured = int(rerun.stdout.split("re-measured ")[1].split(")")[0])
    mod = tvm.IRModule({"main": workload("GMM", 0).with_attr("global_symbol", "main")})
    postprocs = list(ms.postproc.Postproc.create("llvm"))
    database = ms.database.JSONDatabase(work_dir=work_dir)
    hashes = [replay(mod, r.trace, postprocs, 1).shash for r in database.get_all_tuning_records()]
    assert None not in hashes
    assert len(hashes) - len(set(hashes)) <= remeasured


# ------------------------------------------------------------------ bad options
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p_value": 1.0}, r"p_value must be a number in \(0.0, 1.0\), got 1.0; pass a valid"),
        ({"p_value": -0.5}, r"got -0.5; pass a valid value or leave it out \(default p_value=0.05"),
        ({"exploration_trials": -4}, r"exploration_trials must be an integer >= 0 or None, got -4"),
        ({"exploration_trials": 2.5}, r"got 2.5; pass a valid value or leave it out"),
    ],
)
def test_bad_droplet_options_say_rule_value_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropletSearch(**kwargs)


def test_zero_budget_is_named_in_the_log(host_target, droplet_log):
    strategy = DropletSearch()
    batches, _ = drive(strategy, host_target, 0, 4)
    assert batches == []
    assert (
        "this task's budget is 0 trials: nothing will be measured (give tune_tir/tune_relax "
        "a max_trials_global of at least 1)" in droplet_log.text()
    )
    (report,) = strategy.reports
    assert report.trials == 0


def test_cli_names_a_corrupt_line_and_repair_fixes_it(two_workload_dir, capsys):
    from ms_droplet.cli import main

    path = os.path.join(two_workload_dir, "database_tuning_record.json")
    _edit_lines(path, lambda lines: lines[:2] + ["{not json"] + lines[2:])
    with pytest.raises(SystemExit) as info:
        main(["--trials", "2", "--work-dir", two_workload_dir, "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "database_tuning_record.json, line 3: not valid JSON" in err
    assert f"ms-droplet repair --work-dir {two_workload_dir}" in err
    assert main(["repair", "--work-dir", two_workload_dir]) == 0
    out = capsys.readouterr().out
    assert "database_tuning_record.json: 7 lines kept; 1 malformed lines (3) moved to" in out
    assert len(ms.database.JSONDatabase(work_dir=two_workload_dir).get_all_tuning_records()) == 7


@pytest.mark.tuning
def test_graceful_interrupts_end_a_python_tuning_call_after_the_batch(tmp_path, host_target):
    import threading

    from ms_droplet.interrupt import graceful_interrupts, stop_requested

    work_dir = str(tmp_path / "work")
    path = os.path.join(work_dir, "database_tuning_record.json")

    def interrupt_after_first_batch():
        deadline = time.time() + 300
        while time.time() < deadline:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    strategy = DropletSearch(exploration_trials=4)
    threading.Thread(target=interrupt_after_first_batch, daemon=True).start()
    with graceful_interrupts() as received:
        _tune(work_dir, host_target, strategy, trials=40, seed=1)
    assert received == [signal.SIGINT]
    assert not stop_requested()  # cleared on exit
    (report,) = strategy.reports
    assert report.stop_reason == "stopped on request (SIGINT/SIGTERM)"
    assert 4 <= report.trials < 40
    assert len(_records(work_dir)) == report.trials  # every batch sent was measured and saved
