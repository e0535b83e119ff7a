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
from ms_droplet.cli import default_evaluator_config
from ms_droplet.testing import faulty_build, faulty_run_evaluator
from ms_droplet.workdir import lock_work_dir

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
    build = functools.partial(faulty_build, fail_every=5, hang_every=9, hang_sec=60)
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
