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
"""The pure parts of ``scripts/benchlib``, the benchmark scripts' library: no tuning here.

``benchlib`` lives beside the scripts (they run as ``python scripts/x.py``); it is loaded here
from its folder, without a ``sys.path`` edit.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def _load(name):
    if "benchlib" not in sys.modules:
        folder = os.path.join(SCRIPTS, "benchlib")
        spec = importlib.util.spec_from_file_location(
            "benchlib", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchlib"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"benchlib.{name}")


env = _load("env")
results = _load("results")
records = _load("records")
runs = _load("runs")
cli = _load("cli")
fidelity = _load("fidelity")

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}


# -- the environment record ------------------------------------------------------------------


def test_environment_record_has_every_field():
    import tvm
    import tvm_ffi

    record = env.environment(TARGET, argv=["scripts/bench_x.py", "--smoke", "--out", "a b"])
    assert record["schema"] == env.SCHEMA_VERSION == 1
    assert set(record) == {
        "schema",
        "commit",
        "date",
        "command",
        "cwd",
        "target",
        "cpu",
        "gpu",
        "tvm",
        "tvm_ffi",
        "python",
    }
    # The command line, exactly, shell-quoted after the interpreter.
    assert record["command"] == f"{sys.executable} scripts/bench_x.py --smoke --out 'a b'"
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 60
    assert record["target"] == TARGET
    assert record["cpu"]["model"] and record["cpu"]["logical_cores"] >= 1
    assert record["cpu"]["physical_cores"] >= 1
    assert record["gpu"] is None  # not asked for
    assert record["tvm"] == tvm.__version__
    assert record["tvm_ffi"] == tvm_ffi.__version__
    assert record["python"] == platform.python_version()
    json.dumps(record)  # all of it is JSON


def test_environment_records_the_commit_of_this_checkout():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=SCRIPTS, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = env.environment()["commit"]
    assert commit["sha"] == head.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", commit["sha"])
    assert isinstance(commit["dirty"], bool)


def test_commit_dirty_flag_follows_tracked_changes(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    assert env.commit(cwd=str(tmp_path)) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    clean = env.commit(cwd=str(tmp_path))
    assert clean["dirty"] is False and len(clean["sha"]) == 40
    (tmp_path / "untracked.txt").write_text("x\n")
    assert env.commit(cwd=str(tmp_path))["dirty"] is False  # untracked files do not count
    (tmp_path / "a.txt").write_text("2\n")
    assert env.commit(cwd=str(tmp_path)) == {"sha": clean["sha"], "dirty": True}


def test_target_json_of_a_tvm_target():
    from ms_droplet.target import host_target

    target = host_target(num_cores=3)
    data = env.target_json(target)
    assert data["kind"] == "llvm" and data["num-cores"] == 3
    assert env.target_json(None) is None


def test_describe_reads_the_record_and_older_setups():
    record = env.environment(TARGET, argv=["x"])
    flat = env.describe({"environment": record, "setup": {"budget_T": 64}})
    assert flat["date"] == record["date"] and flat["tvm"] == record["tvm"]
    assert flat["cpu"] == record["cpu"]["model"]
    assert json.loads(flat["target"]) == TARGET
    # A result set written before the record: its setup held the machine.
    legacy = {
        "date": "2025-01-01T00:00:00+00:00",
        "tvm": "0.27.0",
        "tvm_ffi": "0.1.14",
        "cpu": "Some CPU",
        "cores": {"physical": 2, "logical": 4},
        "target": '{"kind":"llvm"}',
    }
    flat = env.describe({"setup": legacy})
    assert (flat["date"], flat["cpu"], flat["physical_cores"]) == (legacy["date"], "Some CPU", 2)
    # Re-measured later: the tuning's record is kept in the setup and wins.
    tuned = dict(record, date="2020-02-02T00:00:00+00:00")
    flat = env.describe({"environment": record, "setup": {"tuned_in": tuned}})
    assert flat["date"] == "2020-02-02T00:00:00+00:00"


# -- records in measurement order --------------------------------------------------------------

ARGS = [["TENSOR", "float32", [4, 4]], ["TENSOR", "float32", [4, 4]]]


def _write_database(work_dir, run_secs):
    """A database of the tiny workload whose records have empty traces and these times."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((4, 4), name="A")
    b = te.compute((4, 4), lambda i, j: a[i, j] * 2, name="B")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, "database_workload.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(ms.database.Workload(mod).as_json()) + "\n")
    with open(os.path.join(work_dir, "database_tuning_record.json"), "w", encoding="utf-8") as f:
        for secs in run_secs:
            f.write(json.dumps([0, [[[], []], secs, {"kind": "llvm"}, ARGS]]) + "\n")
            f.write("\n")  # blank lines are skipped
    return mod


def test_records_in_order_keeps_the_file_order(tmp_path):
    times = [[3e-5, 3e-5], [1e10], [1e-5, 2e-5], None, [2e-5]]
    mod = _write_database(str(tmp_path), times)
    got = records.records_in_order(str(tmp_path), mod)
    assert [secs for _, secs in got] == pytest.approx(
        [3e-5, math.inf, 1.5e-5, math.inf, 2e-5]
    )  # not JSONDatabase's order (by time); failed records are inf
    assert [list(map(float, r.run_secs or [])) for r, _ in got] == [t or [] for t in times]
    first = records.records_in_order(str(tmp_path), mod, first=2)
    assert [secs for _, secs in first] == [pytest.approx(3e-5), math.inf]


def test_best_of_records_is_the_fastest_valid_one(tmp_path):
    mod = _write_database(str(tmp_path / "all"), [[3e-5], [1e10], [1e-5]])
    assert records.best_of_records(str(tmp_path / "all"), mod) is not None
    mod = _write_database(str(tmp_path / "failed"), [[1e10], None])
    assert records.best_of_records(str(tmp_path / "failed"), mod) is None


def test_read_record_lines_and_the_valid_time_rule(tmp_path):
    _write_database(str(tmp_path), [[1e-5], [2e-5], [3e-5]])
    lines = records.read_record_lines(str(tmp_path), first=2)
    assert [line[1][1] for line in lines] == [[1e-5], [2e-5]]
    assert records.record_mean_secs([1e-5, 3e-5]) == pytest.approx(2e-5)
    for failed in ([1e10], [], None, [0.0], [float("nan")]):
        assert records.record_mean_secs(failed) == math.inf


# -- result files ----------------------------------------------------------------------------


def test_write_json_puts_the_environment_first(tmp_path):
    record = env.environment(TARGET, argv=["x"])
    path = tmp_path / "deep" / "r.json"
    doc = {"environment": {"stale": True}, "setup": {"a": 1}, "results": [{"x": math.inf}]}
    written = results.write_json(str(path), doc, record)
    data = json.loads(path.read_text())
    assert list(data) == ["environment", "setup", "results"]
    assert data["environment"] == record == written["environment"]
    assert data["results"] == [{"x": math.inf}]
    assert doc["environment"] == {"stale": True}  # the caller's dict is left alone


def test_write_json_needs_an_environment_record(tmp_path):
    for bad in (None, {}, {"date": "today"}):
        with pytest.raises(ValueError, match="environment record"):
            results.write_json(str(tmp_path / "r.json"), {"results": []}, bad)
    assert not (tmp_path / "r.json").exists()


def test_write_json_default_serializes_unknown_values(tmp_path):
    record = env.environment(argv=["x"])
    path = tmp_path / "r.json"
    results.write_json(str(path), {"v": {1, 2}.__class__}, record, default=str)
    assert json.loads(path.read_text())["v"] == str(set)


def test_write_text_and_plot_curves(tmp_path):
    results.write_text(str(tmp_path / "sub" / "r.md"), "# title\n")
    assert (tmp_path / "sub" / "r.md").read_text() == "# title\n"
    pytest.importorskip("matplotlib")
    rows = [
        {"kernel": "GMM:0", "run": "droplet@T", "seed": 1, "curve": [(4, 1.0, 9.0), (8, 2.0, 7.0)]},
        {"kernel": "GMM:0", "run": "postopt@T", "seed": 1, "curve": []},
    ]
    assert results.plot_curves(rows, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- runs and the command line ----------------------------------------------------------------


def test_curve_condenses_candidates_to_batches():
    point = SimpleNamespace
    candidates = [
        point(trial=1, wall_secs=1.0, secs=None, best_secs=None),
        point(trial=2, wall_secs=1.0, secs=None, best_secs=None),
        point(trial=3, wall_secs=2.5, secs=4e-6, best_secs=4e-6),
        point(trial=4, wall_secs=2.5, secs=5e-6, best_secs=4e-6),
        point(trial=5, wall_secs=3.0, secs=2e-6, best_secs=2e-6),
    ]
    curve = runs.Curve(candidates)
    assert curve.points == [(2, 1.0, math.inf), (4, 2.5, pytest.approx(4.0)), (5, 3.0, 2.0)]
    assert (curve.trials, curve.failed, curve.best) == (5, 2, 2e-6)
    empty = runs.Curve()
    assert (empty.points, empty.trials, empty.failed, empty.best) == ([], 0, 0, math.inf)


def test_run_settings_and_evaluator_settings():
    from ms_droplet.measure import default_evaluator_config

    config = default_evaluator_config()
    args = argparse.Namespace(
        trials=8, trials_per_iter=4, seeds="1,2", kernels="GMM:0,C2D:1", rounds=3
    )
    settings = runs.run_settings(args)
    assert settings["evaluator_config"] == {
        "number": config.number,
        "repeat": config.repeat,
        "min_repeat_ms": config.min_repeat_ms,
        "enable_cpu_cache_flush": config.enable_cpu_cache_flush,
    }
    assert (settings["budget_T"], settings["seeds"], settings["kernels"]) == (
        8,
        [1, 2],
        ["GMM:0", "C2D:1"],
    )
    assert settings["runner"] == "ms_droplet.runner.InterleavedRunner"


def test_parse_with_smoke():
    def parser():
        made = argparse.ArgumentParser()
        made.add_argument("--trials", type=int, default=64)
        return made

    assert cli.parse_with_smoke(parser(), ["--trials", "5"], "h", trials=8).trials == 5
    args = cli.parse_with_smoke(parser(), ["--smoke"], "h", trials=8)
    assert args.smoke and args.trials == 8


# -- measurement fidelity (scripts/fidelity.py) -----------------------------------------------


def _line(trace, secs):
    return [0, [trace, secs, {"kind": "llvm"}, []]]


def test_distinct_schedules_group_equal_traces_and_keep_the_fastest_record():
    a, b, c = [["a"], []], [["b"], []], [["c"], []]
    lines = [
        _line(a, [3e-5, 3e-5]),
        _line(b, [1e10]),  # failed: left out
        _line(c, [2e-5]),
        _line(a, [1e-5, 2e-5]),  # a measured again, faster: its line and samples count
        _line(b, None),
    ]
    groups = fidelity.distinct_schedules(lines)
    assert [g["line"] for g in groups] == [3, 2]
    assert [g["recorded_us"] for g in groups] == pytest.approx([15.0, 20.0])
    assert [g["records"] for g in groups] == [2, 1]
    assert groups[0]["recorded_samples_us"] == pytest.approx([10.0, 20.0])


def test_select_schedules_takes_the_top_and_a_seeded_sample_of_the_rest():
    lines = [_line([[str(i)], []], [(i + 1) * 1e-6]) for i in range(30)]
    chosen = fidelity.select_schedules(lines, top=5, sample=4, seed=1)
    assert [s["line"] for s in chosen[:5]] == [0, 1, 2, 3, 4]
    assert {s["role"] for s in chosen[:5]} == {"top"}
    sample = [s["line"] for s in chosen[5:]]
    assert len(sample) == 4 and all(line >= 5 for line in sample)
    assert sample == sorted(sample)
    assert [s["line"] for s in fidelity.select_schedules(lines, 5, 4, seed=1)[5:]] == sample
    assert [s["line"] for s in fidelity.select_schedules(lines, 5, 4, seed=2)[5:]] != sample
    # fewer schedules than asked: all of them, once
    assert len(fidelity.select_schedules(lines[:6], top=5, sample=4, seed=0)) == 6


def test_within_and_spearman():
    assert fidelity.within([1.0, 1.05, 0.91, 1.2, 0.8], 0.10) == pytest.approx(0.6)
    assert fidelity.within([], 0.1) is None
    assert fidelity.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert fidelity.spearman([1, 2], [1, 2]) is None
    assert fidelity.spearman([1, 1, 1], [1, 2, 3]) is None  # constant: undefined


def test_compare_reports_ranks_ratios_and_the_pick():
    def sched(line, role, recorded, fresh, again):
        return {
            "line": line,
            "role": role,
            "us": {"recorded": recorded, "fresh": fresh, "fresh again": again},
        }

    schedules = [
        sched(0, "top", 10.0, 14.0, 14.5),  # tuning's pick, 1.4x slower fresh
        sched(1, "top", 11.0, 11.0, 11.2),  # the fresh best
        sched(2, "top", 12.0, 12.5, 12.4),
        sched(3, "top", 13.0, None, 13.0),  # not timed fresh: left out
        sched(4, "sample", 50.0, 52.0, 51.0),
    ]
    got = fidelity.compare(schedules, "recorded", "fresh", "fresh again", tolerance=0.1)
    top, all_ = got["top"], got["all"]
    assert top["n"] == 3 and all_["n"] == 4
    assert top["spearman"] == pytest.approx(-0.5)
    assert top["spearman_fresh_again"] == pytest.approx(1.0)
    assert top["spearman_ratio"] == pytest.approx(-0.5)
    assert top["pick_line"] == 0 and top["fresh_best_line"] == 1
    assert top["pick_regret"] == pytest.approx(14.0 / 11.0)
    assert top["ratio_min"] == pytest.approx(10 / 14) and top["ratio_max"] == pytest.approx(1.0)
    assert top["within"] == pytest.approx(2 / 3)
    assert all_["spearman"] == pytest.approx(0.4)
    no_again = fidelity.compare(schedules, "recorded", "fresh", None)
    assert "spearman_ratio" not in no_again["top"]


def test_paired_report_pairs_repetitions_in_order():
    def comp(label, sd, quotient, within):
        top = {"log_ratio_sd": sd, "spearman_ratio": quotient, "within": within}
        return {"tuning": label, "top": top}

    labels = ["a", "b", "a again", "b again", "a #3", "b #3"]
    sds = [0.2, 0.1, 0.3, 0.15, 0.1, 0.2]
    run = {
        "work_dir": "/x/run1/",
        "comparisons": [comp("recorded", 0.5, 0.5, 0.5)]
        + [comp(lab, sd, 0.9, 0.8) for lab, sd in zip(labels, sds)],
    }
    got = fidelity.paired_report([{"runs": [run]}, {"runs": [run]}], "a", "b")
    pairs = got["pairs"]
    assert len(pairs) == 6 and pairs[0]["run"] == "run1"
    assert [p["labels"] for p in pairs[:3]] == [
        ["a", "b"],
        ["a again", "b again"],
        ["a #3", "b #3"],
    ]
    summary = got["summary"]
    assert summary["second_better_spread"] == 4
    assert summary["spread_ratio_geomean"] == pytest.approx((0.5 * 0.5 * 2.0) ** (1 / 3))
    assert summary["wilcoxon_p"] is not None
    assert summary["quotient_mean"] == [pytest.approx(0.9), pytest.approx(0.9)]


def test_paired_report_without_a_second_fresh_process():
    # A plan with one fresh process has no Spearman quotient: the pairs still compare.
    comps = [
        {"tuning": label, "top": {"log_ratio_sd": sd, "within": 0.9}}
        for label, sd in (("a", 0.2), ("b", 0.1))
    ]
    got = fidelity.paired_report([{"runs": [{"work_dir": "r", "comparisons": comps}]}], "a", "b")
    assert got["pairs"][0]["quotient"] == [None, None]
    assert got["summary"]["quotient_mean"] == [None, None]
    assert got["summary"]["second_better_spread"] == 1


def _load_script(name):
    _load("cli")  # the scripts import benchlib, which is not on sys.path
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# MetaSchedule's table, narrowed (its lines end in spaces; the parser does not need them).
SCHEDULER_LOG = """\
2026-12-01 10:11:41 [INFO] Logging directory: /tmp/w/logs
2026-12-01 10:11:41 [INFO] [task_scheduler.cc:174] Initializing Task #0: "a"
2026-12-01 10:11:42 [INFO] [task_scheduler.cc:344]
 ID | Name | FLOP | Weight | Speed (GFLOPS) | Latency (us) | Weighted Latency (us) | Trials | Done
------------------------------------------------------------------------------------------------
  0 |    a |    1 |      1 |            N/A |          N/A |                   N/A |      0 |
  1 |    b |    1 |      2 |            N/A |          N/A |                   N/A |      0 |
------------------------------------------------------------------------------------------------
Total trials: 0
Total latency (us): 0

2026-12-01 10:11:50 [INFO] [task_scheduler.cc:195] TaskScheduler picks Task #0: "a"
2026-12-01 10:12:00 [INFO] [task_scheduler.cc:344]
 ID | Name | FLOP | Weight | Speed (GFLOPS) | Latency (us) | Weighted Latency (us) | Trials | Done
------------------------------------------------------------------------------------------------
  0 |    a |    1 |      1 |         0.0100 |      10.0000 |               10.0000 |     16 |
  1 |    b |    1 |      2 |            N/A |          N/A |                   N/A |      0 |
------------------------------------------------------------------------------------------------
Total trials: 16
Total latency (us): 10

2026-12-01 10:12:30 [INFO] [task_scheduler.cc:344]
 ID | Name | FLOP | Weight | Speed (GFLOPS) | Latency (us) | Weighted Latency (us) | Trials | Done
------------------------------------------------------------------------------------------------
  0 |    a |    1 |      1 |         0.0100 |      10.0000 |               10.0000 |     16 |
  1 |    b |    1 |      2 |         0.0100 |       5.0000 |               10.0000 |     16 |
------------------------------------------------------------------------------------------------
Total trials: 32
Total latency (us): 20
"""


def test_bench_model_reads_the_curve_back_from_a_task_scheduler_log(tmp_path):
    """The tuner's view of the model (sum of weighted task bests) once every task has a time;
    the table printed before anything was measured is not a point."""
    bench_model = _load_script("bench_model")
    log = tmp_path / "task_scheduler.log"
    log.write_text(SCHEDULER_LOG)
    assert bench_model.curve_from_scheduler_log(str(log)) == [
        [19.0, 16, None],
        [49.0, 32, pytest.approx(20e-6)],
    ]


# -- what a paired A/B can say -----------------------------------------------------------------

pairs = _load("pairs")


def test_log_sd_of_symmetric_ratios():
    a = 0.1
    ratios = [math.exp(a), math.exp(-a)] * 3
    assert pairs.log_sd(ratios) == pytest.approx(a * math.sqrt(6 / 5))
    assert pairs.log_sd([1.2]) is None


def test_power_rules_match_the_protocol_numbers():
    # The protocol's figures: sd 0.156 over 28 pairs sees about 1.09x; 1.05x needs about 80.
    assert pairs.detectable(0.156, 28) == pytest.approx(1.0861, abs=5e-4)
    assert pairs.pairs_needed(0.156, 1.05) == 81
    assert pairs.pairs_needed(0.12, 1.12) == 9
    # More pairs see smaller effects; the needed pairs see the effect asked for.
    n = pairs.pairs_needed(0.2, 1.05)
    assert pairs.detectable(0.2, n) <= 1.05 < pairs.detectable(0.2, n - 1)


def test_geomean_interval_holds_the_geomean_and_is_seeded():
    ratios = [0.9, 1.0, 1.05, 1.1, 1.2, 0.95, 1.3, 1.02]
    low, high = pairs.geomean_interval(ratios)
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert low < geomean < high
    assert pairs.geomean_interval(ratios) == (low, high)
    assert pairs.geomean_interval([1.0, 1.0, 1.0]) is None
    assert pairs.geomean_interval([1.1, 0.9]) is None


def test_evidence_collects_every_number():
    got = pairs.evidence([1.1, 0.9, 1.05, 1.0, 1.2, 0.95])
    assert got["pairs"] == 6
    assert set(got) == {"pairs", "log_sd", "interval95", "detectable", "pairs_needed"}
    assert pairs.evidence([1.0])["interval95"] is None


def _gpu_entry(kernel, seed, times, ceiling=None):
    runs = [
        {"label": label, "median_us": us, "wall_secs": secs} for label, (us, secs) in times.items()
    ]
    return {"kernel": kernel, "seed": seed, "runs": runs, "ceiling": {"median_us": ceiling}}


def test_gpu_pairs_pair_runs_of_one_call_and_a_later_call_replaces_an_earlier():
    first = {
        "results": [
            _gpu_entry("matmul", 1, {"droplet@T": (50, 100), "evolutionary@T": (60, 200)}, 40),
            _gpu_entry("c2d", 1, {"droplet@T": (10, 90), "evolutionary@T": (8, 90)}),
            # droplet failed here: no pair, nothing invented
            _gpu_entry("c2d", 2, {"droplet@T": (None, 90), "evolutionary@T": (9, 90)}),
        ]
    }
    later = {  # matmul seed 1 again, now with its 4T run: all of its pairs come from here
        "results": [
            _gpu_entry(
                "matmul",
                1,
                {"droplet@T": (52, 100), "evolutionary@T": (65, 250), "evolutionary@4T": (39, 400)},
                41.6,
            )
        ]
    }
    got = pairs.gpu_pairs([first, later])
    assert set(got) == {
        "droplet@T vs evolutionary@T",
        "droplet@T vs evolutionary@4T",
        "droplet@T vs torch",
    }
    speed, secs, keys = got["droplet@T vs evolutionary@T"]
    assert keys == [("matmul", 1), ("c2d", 1)]
    assert speed == pytest.approx([65 / 52, 8 / 10])
    assert secs == pytest.approx([100 / 250, 1.0])
    assert got["droplet@T vs evolutionary@4T"][0] == pytest.approx([39 / 52])
    speed, secs, keys = got["droplet@T vs torch"]
    assert (speed, secs, keys) == ([pytest.approx(0.8)], [], [("matmul", 1)])


# -- variants of the A/B scripts ---------------------------------------------------------------


def test_parse_variants_gives_strategy_budget_and_options_in_order():
    got = runs.parse_variants(
        '{"droplet": {}, "short": {"max_step": 1, "descent_batch": 4}, '
        '"evolutionary@4T": {"strategy": "evolutionary", "trials": 256}}',
        64,
        shared=32,
    )
    assert list(got) == ["droplet", "short", "evolutionary@4T"]
    assert got["droplet"] == runs.Variant("droplet", 64, {})
    assert got["short"] == runs.Variant("droplet", 64, {"max_step": 1, "descent_batch": 4})
    assert got["evolutionary@4T"] == runs.Variant("evolutionary", 256, {})


@pytest.mark.parametrize(
    ("text", "shared", "path_safe", "fragment"),
    [
        ("{not json", 0, False, "must be a JSON object"),
        ("[]", 0, False, "non-empty JSON object"),
        ("{}", 0, False, "non-empty JSON object"),
        ('{"a": 3}', 0, False, "variant 'a' must map to an object"),
        ('{"a": {"trials": 16}}', 16, False, 'optional "trials" is an integer above'),
        ('{"a": {"trials": true}}', 0, False, 'optional "trials" is an integer above'),
        ('{"a": {"strategy": "evolutionary", "max_step": 1}}', 0, False, "droplet variants only"),
        ('{"a/b": {}}', 0, True, "becomes a folder name"),
    ],
)
def test_parse_variants_refuses_with_the_rule(text, shared, path_safe, fragment):
    with pytest.raises(ValueError, match="--variants") as err:
        runs.parse_variants(text, 64, shared=shared, path_safe=path_safe)
    assert fragment in str(err.value)


def test_parse_variants_allows_any_name_where_it_is_no_folder():
    assert list(runs.parse_variants('{"a/b": {}}', 8)) == ["a/b"]


def test_bench_gpu_plans_the_default_runs_or_the_variants():
    bench_gpu = _load_script("bench_gpu")
    args = bench_gpu.parse_args(["--trials", "64"])
    assert args.plan == {
        "droplet@T": runs.Variant("droplet", 64, {}),
        "evolutionary@T": runs.Variant("evolutionary", 64, {}),
        "evolutionary@4T": runs.Variant("evolutionary", 256, {}),
    }
    assert list(bench_gpu.parse_args(["--no-4x"]).plan) == ["droplet@T", "evolutionary@T"]
    args = bench_gpu.parse_args(
        ["--variants", '{"b": {"max_step": 1}, "a": {}}', "--shared-exploration", "32"]
    )
    assert args.plan == {
        "b": runs.Variant("droplet", 64, {"max_step": 1}),
        "a": runs.Variant("droplet", 64, {}),
    }
    assert bench_gpu.run_settings(args)["first"] == "b"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--variants", '{"a": {}}', "--no-4x"], "--no-4x skips a default run"),
        (["--warm-model"], "--warm-model needs --shared-exploration"),
        (["--shared-exploration", "64"], "--shared-exploration must be in [0, --trials)"),
        (
            ["--variants", '{"exploration": {}}', "--shared-exploration", "8"],
            "the shared exploration's run",
        ),
        (["--variants", '{"a b": {}}'], "becomes a folder name"),
    ],
)
def test_bench_gpu_refuses_bad_plans_naming_the_option(argv, fragment, capsys):
    bench_gpu = _load_script("bench_gpu")
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(argv)
    assert fragment in capsys.readouterr().err


def test_bench_gpu_time_limit_keeps_an_unfinished_run(tmp_path):
    # A re-measurement (--time-limit 0) over a work root must not delete a partial run's records.
    bench_gpu = _load_script("bench_gpu")
    args = bench_gpu.parse_args(["--work-root", str(tmp_path), "--time-limit", "0"])
    partial = tmp_path / "matmul-s1-droplet_T"
    partial.mkdir()
    (partial / "database_tuning_record.json").write_text("{}\n")
    variant = args.plan["droplet@T"]
    begin = time.perf_counter() - 1.0
    run = bench_gpu.tuned_run(args, "matmul", 1, "droplet@T", variant, None, None, begin)
    assert run["skipped"] == "time limit"
    assert (partial / "database_tuning_record.json").read_text() == "{}\n"


def test_bench_gpu_report_compares_the_first_run_of_the_plan(tmp_path):
    bench_gpu = _load_script("bench_gpu")
    doc = {
        "setup": {"first": "guided"},
        "results": [
            _gpu_entry("matmul", s, {"guided": (50, 100), "droplet": (55, 100)}) for s in (1, 2)
        ],
    }
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(doc))
    text = bench_gpu.report([str(path)])
    assert "| guided vs droplet | 2 | 1.100 | 2 |" in text
    older = {"results": [_gpu_entry("matmul", 1, {"droplet@T": (50, 90), "x": (60, 90)})]}
    path.write_text(json.dumps(older))  # written before setup.first: droplet@T
    assert "| droplet@T vs x | 1 | 1.200 | 1 |" in bench_gpu.report([str(path)])


def test_ab_report_has_a_row_per_kernel_and_seed_with_the_later_file_winning():
    ab = _load_script("ab_droplet")
    variants = {"droplet": {}, "evolutionary@T": {"strategy": "evolutionary"}}
    report = {"descent_start_secs": 12e-6, "moves": 2, "restarts": 1, "duplicates": 3}
    report["descent_search_secs"] = 0.5

    def result(seed, variant, us, tuning_s):
        reports = [report] if variant == "droplet" else []
        return {
            "kernel": "GMM:1",
            "seed": seed,
            "variant": variant,
            "median_us": us,
            "tuning_s": tuning_s,
            "reports": reports,
        }

    early = {
        "args": {"variants": variants},
        "results": [
            result(1, "droplet", 10.0, 60),
            result(1, "evolutionary@T", 11.0, 70),
        ],
    }
    later = {
        "args": {"variants": variants},
        "results": [
            result(1, "droplet", 10.0, 61),
            result(1, "evolutionary@T", 12.0, 71),
            result(2, "droplet", 20.0, 62),
            result(2, "evolutionary@T", None, 72),
        ],
    }
    lines = ab.case_lines([early, later])
    assert lines[2].startswith(
        "| kernel | seed | droplet us | evolutionary@T us | vs evolutionary@T |"
    )
    assert lines[4] == "| GMM:1 | 1 | 10.00 | 12.00 | 1.200 | 12.00 | 2 | 1 | 3 | 0.50 | 61 / 71 |"
    assert lines[5] == "| GMM:1 | 2 | 20.00 |  |  | 12.00 | 2 | 1 | 3 | 0.50 | 62 / 72 |"
    assert len(lines) == 7 and ab.case_lines([]) == []


# -- snapped_moves.py: what snap_locations did, from run logs ----------------------------------


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapped_moves_counts_a_move_as_snapped_only_from_its_own_incumbent(tmp_path, capsys):
    snapped_moves = _script("snapped_moves")
    log = [
        "[INFO] droplet: exploration done after 64 trials; descent starts from x, 5 us, over 3",
        # A neighbor of the first incumbent, snapped: coordinate 1 moved to (4, 2).
        "[DEBUG] droplet: neighbor ((1, 2), (4, 2), 3) kept with its compute location snapped: "
        "SampleComputeLocation#2: 3 -> 1",
        "[INFO] droplet: move 1 accepted: SamplePerfectTile#1: (8, 1) -> (4, 2); speed-up "
        "1.200x, p=0.01, now 4 us (one call suffices from a 10.0 % gain)",
        # Snapped again but not accepted; the next move changes another coordinate to a value
        # this neighbor does not hold there.
        "[DEBUG] droplet: neighbor ((2, 1), (4, 2), 3) kept with its compute location snapped: "
        "SampleComputeLocation#2: 3 -> 0",
        "[INFO] droplet: move 2 accepted: SamplePerfectTile#0: (1, 2) -> (1, 2), "
        "SampleCategorical#2: 3 -> 4; speed-up 1.100x, p=0.02, now 3.6 us (one call suffices "
        "from a 10.0 % gain)",
        # After a restart, an earlier incumbent's snapped neighbor no longer counts.
        "[DEBUG] droplet: neighbor ((1, 1), (2, 2), 4) kept with its compute location snapped: "
        "SampleComputeLocation#2: 4 -> 0",
        "[INFO] droplet: restart 1: the descent ended (no faster neighbor) at y with 20 trials "
        "left; exploring",
        "[INFO] droplet: move 3 accepted: SamplePerfectTile#1: (4, 4) -> (2, 2); speed-up "
        "1.050x, p=0.03, now 3.4 us (one call suffices from a 10.0 % gain)",
        "[INFO] droplet: summary: 128 trials (exploration 80, descent 48 of which 8 "
        "re-measurements), 3 accepted moves, 1 restarts, 0 invalid neighbors dropped, "
        "3 kept with a compute location snapped, 0 duplicates skipped, 0 failed measurements",
    ]
    run = tmp_path / "GMM_1_1_v0" / "logs"
    run.mkdir(parents=True)
    (run / "tvm.s_tir.meta_schedule.logging.task_0_main.log").write_text("\n".join(log))
    (tmp_path / "GMM_1_1_v1" / "logs").mkdir(parents=True)  # another variant: filtered out
    assert snapped_moves.main([str(tmp_path), "--runs", "*_v0"]) == 0
    out = capsys.readouterr().out
    assert out.count("snapped neighbor accepted") == 1
    assert "SamplePerfectTile#1: (8, 1) -> (4, 2) (1.200x)" in out
    assert (
        "1 runs, 1 with a snapped neighbor; 3 snapped of 40 neighbors measured; 3 accepted" in out
    )
    assert "1 of them snapped" in out
    with pytest.raises(SystemExit, match="sources: .* does not exist"):
        snapped_moves.main([str(tmp_path / "missing")])
