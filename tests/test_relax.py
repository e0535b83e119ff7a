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
"""Relax end to end: the model zoo, tune_model, the static_shape_tuning route, tune-model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter

import numpy as np
import pytest
import tvm
from tvm import relax

from ms_droplet import DropletSearch, models
from ms_droplet import relax as droplet_relax
from ms_droplet.cli import main

# float32 tolerances of every output comparison. Tuned schedules reorder the sums of
# reductions (tiling, vectorized partial sums); each reordered sum of K float32 terms moves by
# about sqrt(K) * 6e-8 of its terms' magnitude (K <= 4608 in the zoo: 3x3x512 in resnet18),
# i.e. < 1e-5 relative for unit-scale activations. Seen here: 0 for the MLPs, 2.9e-6 absolute
# for the transformer block (64 trials). 1e-4 leaves a margin of 10x over the worst estimate.
RTOL = 1e-4
ATOL = 1e-4
# The tuning tests below check plumbing, budgets and numerics, not search quality: they use
# MetaSchedule's random cost model, because training the default XGBoost model costs ~5 s per
# measured batch on the 2-core test machines (most of a tiny run's time).
COST_MODEL = "random"


def _tiny_mlp(batch_size: int = 2):
    return models.get_model(
        "mlp", batch_size=batch_size, in_features=32, hidden=(16,), num_classes=8
    )


def _numpy_mlp(arguments):
    x, w0, b0, w1, b1 = arguments
    return np.maximum(x @ w0.T + b0, 0.0) @ w1.T + b1


def _record_counts(work_dir) -> list[int]:
    """Records per workload in a work_dir's JSON database, sorted."""
    path = os.path.join(work_dir, "database_tuning_record.json")
    with open(path, encoding="utf-8") as f:
        workloads = Counter(json.loads(line)[0] for line in f if line.strip())
    return sorted(workloads.values())


def _logs(work_dir) -> str:
    log_dir = os.path.join(work_dir, "logs")
    return "".join(
        open(os.path.join(log_dir, name), encoding="utf-8").read()
        for name in sorted(os.listdir(log_dir))
    )


# ---------------------------------------------------------------------------------------- zoo


@pytest.mark.parametrize(
    "name, relax_ops, task_words, num_tasks",
    [
        (
            "resnet18",
            ["R.nn.conv2d", "R.nn.batch_norm", "R.nn.relu", "R.add", "R.nn.max_pool2d",
             "R.nn.adaptive_avg_pool2d", "R.matmul"],
            ["conv2d", "max_pool2d", "adaptive_avg_pool2d", "matmul", "relu"],
            20,
        ),
        (
            "transformer",
            ["R.matmul", "R.nn.softmax", "R.nn.layer_norm", "R.nn.gelu", "R.add"],
            ["matmul", "softmax", "layer_norm", "gelu"],
            14,
        ),
        ("mlp", ["R.matmul", "R.nn.relu"], ["fused_matmul_add_relu", "matmul"], 6),
    ],
)  # fmt: skip
def test_zoo_model_task_extraction(name, relax_ops, task_words, num_tasks, host_target):
    model = models.get_model(name)
    script = model.mod.script()
    for op in relax_ops:
        assert op in script, f"{name} has no {op}"
    tasks = droplet_relax.extract_model_tasks(model.mod, host_target)
    names = [task.task_name for task in tasks]
    assert len(tasks) == num_tasks, names
    for word in task_words:
        assert any(word in n for n in names), f"no {word} task in {names}"
    # Every task is a fused TIR function of the prepared module, counted by its call sites.
    assert all(int(task.weight) >= 1 for task in tasks)
    if name == "resnet18":
        # 16 3x3 convolutions + stem + 3 projections = 20 conv2d call sites, batch norm fused in.
        conv_sites = sum(int(t.weight) for t in tasks if "conv2d" in t.task_name)
        assert conv_sites == 20
        assert not any("batch_norm" in n for n in names)
        assert model.inputs[0].shape == (1, 3, 224, 224)


def test_zoo_options_and_errors():
    model = models.get_model("transformer", batch_size=3, seq_len=8, d_model=16, num_heads=2)
    assert model.inputs[0].shape == (3, 8, 16)
    assert model.entry == "forward"
    assert model.options["batch_size"] == 3
    assert [p.name for p in model.params][:2] == ["q_proj.weight", "q_proj.bias"]
    arguments = model.random_arguments(seed=1)
    assert [a.shape for a in arguments[1:]] == [p.shape for p in model.params]
    assert all(a.dtype == np.float32 for a in arguments)
    resnet = models.get_model("resnet18", batch_size=2, image_size=32, width=8, num_classes=10)
    assert resnet.inputs[0].shape == (2, 3, 32, 32)
    variances = [a for a, p in zip(resnet.random_params(), resnet.params) if "moving_var" in p.name]
    assert variances and all((v > 0).all() for v in variances)
    with pytest.raises(ValueError, match=r"unknown model 'vgg'; the zoo has resnet18, transformer"):
        models.get_model("vgg")
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        models.get_model("mlp", batch_size=0)
    with pytest.raises(ValueError, match=r"d_model \(10\) must be a multiple of num_heads \(4\)"):
        models.get_model("transformer", d_model=10, num_heads=4)


# --------------------------------------------------------------------------------- tune_model


@pytest.mark.tuning
def test_tune_model_tiny_mlp_end_to_end(tmp_path, host_target):
    model = _tiny_mlp()
    work_dir = str(tmp_path / "mlp")
    result = droplet_relax.tune_model(
        model.mod, host_target, work_dir, 8, num_trials_per_iter=2, cost_model=COST_MODEL, seed=1
    )
    names = [row.name for row in result.tasks]
    assert len(names) == 4 and sum("fused_matmul" in n for n in names) == 2, names
    # What each task received is what the database holds: one record per measured candidate.
    assert sorted(row.trials for row in result.tasks) == _record_counts(work_dir)
    # Every candidate sent counts and a batch is never cut: at most one batch minus one over.
    assert 4 <= result.trials < 8 + 2
    assert result.no_valid_trial == []
    for row in result.tasks:
        assert row.valid == row.trials >= 1
        assert 0 < row.best_secs < 1
        assert row.database_best_secs == pytest.approx(row.best_secs)
        assert row.applied is True, f"compile_relax did not find {row.name}'s record"
    assert result.strategy == "droplet"
    assert sorted(r.task_name for r in result.reports) == sorted(names)
    assert "droplet: budget" in _logs(work_dir)

    arguments = model.random_arguments(seed=2)
    tuned = droplet_relax.run_model(result.executable, model.entry, arguments)[0]
    np.testing.assert_allclose(tuned, _numpy_mlp(arguments), rtol=RTOL, atol=ATOL)
    untuned = droplet_relax.compile_untuned(result.mod, host_target)
    comparison = droplet_relax.compare_outputs(
        untuned, result.executable, model.entry, arguments, rtol=RTOL, atol=ATOL
    )
    assert comparison.ok and comparison.max_abs_diff < ATOL
    vm_out = result.vm()[model.entry](*[tvm.runtime.tensor(a) for a in arguments]).numpy()
    np.testing.assert_array_equal(vm_out, tuned)
    latency = droplet_relax.measure_latency(
        {"untuned": untuned, "tuned": result.executable},
        model.entry,
        arguments,
        rounds=3,
        min_repeat_ms=5,
    )
    assert [len(latency[k].samples) for k in ("untuned", "tuned")] == [3, 3]
    assert all(0 < latency[k].median < 1 for k in latency)


@pytest.mark.tuning
def test_tune_model_names_tasks_without_valid_trials(tmp_path, host_target, caplog):
    model = _tiny_mlp(batch_size=1)
    work_dir = str(tmp_path / "starved")
    # One batch of 2 candidates for 4 tasks: the scheduler's round robin stops after task 0.
    with caplog.at_level(logging.WARNING, logger="ms_droplet.relax"):
        result = droplet_relax.tune_model(
            model.mod,
            host_target,
            work_dir,
            2,
            num_trials_per_iter=2,
            strategy="evolutionary",
            cost_model=COST_MODEL,
            seed=1,
        )
    first, *starved = result.tasks
    assert first.trials == 2 and first.valid >= 1 and first.applied
    assert [row.trials for row in starved] == [0, 0, 0]
    assert result.no_valid_trial == [row.name for row in starved]
    assert all(row.applied is False for row in starved)
    assert "got no valid trial" in caplog.text and starved[0].name in caplog.text
    assert result.reports == [] and result.strategy == "evolutionary"
    # Untuned functions are compiled as they are: the model still runs and is right.
    arguments = model.random_arguments(seed=3)
    out = droplet_relax.run_model(result.executable, model.entry, arguments)[0]
    np.testing.assert_allclose(out, _numpy_mlp(arguments), rtol=RTOL, atol=ATOL)


def test_tune_model_argument_errors(host_target, tmp_path):
    model = _tiny_mlp()
    work_dir = str(tmp_path / "unused")  # tune_model locks it (creating it) before checking
    with pytest.raises(ValueError, match="max_trials_global must be >= 1, got 0"):
        droplet_relax.tune_model(model.mod, host_target, work_dir, 0)
    with pytest.raises(ValueError, match=r"op_names=\['no_such_op'\] matched none"):
        droplet_relax.tune_model(model.mod, host_target, work_dir, 4, op_names=["no_such_op"])
    with pytest.raises(ValueError, match=r"no Relax function 'main'.*\['forward'\]"):
        droplet_relax.canonicalize_model(
            model.mod, host_target, params={"x": np.zeros((2, 32), "float32")}, entry="main"
        )


def test_bound_params_fold_weight_transposes(host_target):
    model = _tiny_mlp()
    weights = dict(zip([p.name for p in model.params], model.random_params()))
    free = droplet_relax.extract_model_tasks(model.mod, host_target)
    bound = droplet_relax.extract_model_tasks(model.mod, host_target, params=weights)
    assert sum("transpose" in t.task_name for t in free) == 2
    assert not any("transpose" in t.task_name for t in bound)


# ------------------------------------------------------------------ static_shape_tuning route


def _empty_module_tuning() -> str:
    """Run the real MetaScheduleTuneIRMod pass on an empty module; it tunes nothing.

    Both the original tune_relax and a routed call end in tune_tasks' "No tasks to tune."
    """
    with tempfile.TemporaryDirectory() as work_dir:
        with tvm.target.Target({"kind": "llvm"}):
            tune_pass = relax.transform.MetaScheduleTuneIRMod(
                params={}, work_dir=work_dir, max_trials_global=1
            )
        with pytest.raises(ValueError, match="No tasks to tune") as err:
            tune_pass(tvm.IRModule())
    return str(err.value)


def test_pipeline_route_restores_state_on_exit_and_on_error():
    name = droplet_relax.TUNE_RELAX_GLOBAL
    original = tvm.get_global_func(name)
    assert not droplet_relax.pipeline_route_active()

    with droplet_relax.pipeline_strategy() as route:
        assert droplet_relax.pipeline_route_active()
        assert isinstance(route.strategy, DropletSearch)
        assert not tvm.get_global_func(name).same_as(original)
        _empty_module_tuning()
        assert [call.kind for call in route.calls] == ["tune_relax"]
        assert route.calls[0].max_trials_global == 1

    assert not droplet_relax.pipeline_route_active()
    assert tvm.get_global_func(name).same_as(original)
    assert tvm.get_global_func(droplet_relax.TUNE_TIR_GLOBAL) is not None
    _empty_module_tuning()  # the original again: the route saw nothing
    assert len(route.calls) == 1

    failing = droplet_relax.pipeline_strategy("evolutionary")
    with pytest.raises(KeyError, match="raised inside"):
        with failing:
            assert droplet_relax.pipeline_route_active()
            raise KeyError("raised inside")
    assert not droplet_relax.pipeline_route_active()
    assert tvm.get_global_func(name).same_as(original)
    _empty_module_tuning()
    assert failing.calls == []


def test_pipeline_routes_nest_and_stay_in_their_thread():
    with droplet_relax.pipeline_strategy() as outer:
        with droplet_relax.pipeline_strategy("evolutionary") as inner:
            _empty_module_tuning()
        assert (len(outer.calls), len(inner.calls)) == (0, 1)
        _empty_module_tuning()
        assert (len(outer.calls), len(inner.calls)) == (1, 1)

        seen = {}

        def other_thread():
            seen["active"] = droplet_relax.pipeline_route_active()
            try:
                _empty_module_tuning()
            except BaseException as err:  # noqa: BLE001 - reported to the main thread
                seen["error"] = err

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert seen == {"active": False}
        assert len(outer.calls) == 1  # the other thread's call went to the original
    assert not droplet_relax.pipeline_route_active()


def test_pipeline_route_refuses_a_pass_that_cached_the_original():
    code = (
        "import tempfile, tvm\n"
        "from tvm import relax\n"
        "with tvm.target.Target({'kind': 'llvm'}):\n"
        "    p = relax.transform.MetaScheduleTuneIRMod("
        "params={}, work_dir=tempfile.mkdtemp(), max_trials_global=1)\n"
        "try:\n"
        "    p(tvm.IRModule())\n"
        "except ValueError:\n"
        "    pass\n"
        "from ms_droplet.relax import pipeline_strategy\n"
        "try:\n"
        "    pipeline_strategy().__enter__()\n"
        "except RuntimeError as err:\n"
        "    print('REFUSED', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED pipeline_strategy: MetaScheduleTuneIRMod" in out.stdout
    assert "before the first static_shape_tuning run" in out.stdout


def test_pipeline_route_process_exits_cleanly():
    # The C++ passes keep the dispatcher in a static; the process must still exit cleanly after
    # the originals are registered again (TVM frees a static-only Python function after
    # Python's finalization: "double free or corruption").
    code = (
        "import tempfile, tvm\n"
        "from tvm import relax\n"
        "from ms_droplet.relax import pipeline_strategy\n"
        "with pipeline_strategy() as route:\n"
        "    with tvm.target.Target({'kind': 'llvm'}):\n"
        "        p = relax.transform.MetaScheduleTuneIRMod("
        "params={}, work_dir=tempfile.mkdtemp(), max_trials_global=1)\n"
        "    try:\n"
        "        p(tvm.IRModule())\n"
        "    except ValueError:\n"
        "        pass\n"
        "print('CALLS', len(route.calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CALLS 1" in out.stdout


@pytest.mark.tuning
def test_static_shape_tuning_pipeline_tunes_with_droplet(tmp_path, host_target):
    model = _tiny_mlp()
    work_dir = str(tmp_path / "pipeline")
    strategy = DropletSearch(exploration_trials=2)
    with droplet_relax.pipeline_strategy(
        strategy, num_trials_per_iter=2, seed=1, cost_model=COST_MODEL
    ) as route:
        tuned_mod = relax.get_pipeline(
            "static_shape_tuning", target=host_target, total_trials=8, work_dir=work_dir
        )(model.mod)
    assert not droplet_relax.pipeline_route_active()
    (call,) = route.calls
    assert call.kind == "tune_relax" and call.max_trials_global == 8
    assert len(call.tasks) == 4
    assert sorted(row.trials for row in call.tasks) == _record_counts(work_dir)
    assert route.strategy is strategy
    assert sorted(r.task_name for r in strategy.reports) == sorted(r.name for r in call.tasks)
    logs = _logs(work_dir)
    assert "droplet: budget" in logs and "droplet: summary" in logs
    executable = tvm.compile(tuned_mod, target=host_target)
    arguments = model.random_arguments(seed=4)
    out = droplet_relax.run_model(executable, model.entry, arguments)[0]
    np.testing.assert_allclose(out, _numpy_mlp(arguments), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------- CLI


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], "argument --model: unknown model 'vgg'; use one of resnet18, "
         "transformer, mlp"),
        ([], "one of the arguments --model --onnx --relax is required"),
        (["--model", "mlp", "--batch-size", "0"], "--batch-size must be an integer >= 1, got '0'"),
        (["--model", "mlp", "--trials", "x"], "--trials must be an integer >= 1, got 'x'"),
        (["--model", "mlp", "--trials", "8", "--max-trials-per-task", "9"],
         "--max-trials-per-task (9) must not exceed --trials (8)"),
        (["--model", "mlp", "--target", "{kind"], "--target must be a JSON object such as"),
        (["--model", "mlp", "--strategy", "annealing"], "invalid choice: 'annealing'"),
    ],
)  # fmt: skip
def test_tune_model_cli_errors_name_the_option(argv, message, capsys, tmp_path):
    # --work-dir: some checks run after the CLI has locked the work directory.
    work_dir = ["--work-dir", str(tmp_path / "w")]
    assert message in _cli_error(["tune-model", *argv, *work_dir], capsys)


@pytest.fixture
def restore_meta_schedule_log_level():
    # main() sets MetaSchedule's logger to WARNING (the CLI's quiet default).
    meta_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = meta_logger.level
    yield
    meta_logger.setLevel(level)


@pytest.mark.tuning
def test_tune_model_cli_prints_tasks_and_latencies(
    tmp_path, capsys, restore_meta_schedule_log_level
):
    # 2 trials, 1 a batch, for the 6 tasks of the zoo MLP: tasks 0 and 1 get one trial each,
    # the other four none, and the output must say so.
    code = main(
        [
            "tune-model",
            "--model",
            "mlp",
            "--trials",
            "2",
            "--num-trials-per-iter",
            "1",
            "--latency-rounds",
            "3",
            "--no-progress",
            "--work-dir",
            str(tmp_path / "cli"),
            "--json",
            str(tmp_path / "result.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "result.json").read_text())
    tasks = {task["name"]: task for task in result["tasks"]}
    assert "fused_matmul_add_relu" in tasks and any("transpose" in name for name in tasks)
    assert sorted(task["trials"] for task in result["tasks"]) == [0, 0, 0, 0, 1, 1]
    assert len(result["no_valid_trial"]) == 4
    assert result["latency_rounds"] == 3
    assert result["untuned_secs"] > 0 and result["best_secs"] > 0
    assert result["speedup"] == pytest.approx(result["untuned_secs"] / result["best_secs"])
    assert result["output_match"] is True
    assert result["database"] == str(tmp_path / "cli" / "database_tuning_record.json")
    # The human table still says the same (its layout is the CLI's; its numbers are the JSON's).
    assert "no valid trial    | 4 task(s): " in out and "output vs untuned | match" in out


# ------------------------------------------------------------------------------------ slow


@pytest.mark.slow
@pytest.mark.tuning
def test_cli_tune_model_transformer_subprocess(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ms_droplet",
            "tune-model",
            "--model",
            "transformer",
            "--trials",
            "32",
            "--num-trials-per-iter",
            "2",
            "--no-progress",
            "--work-dir",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "output vs untuned | match" in out.stdout
    assert "no valid trial    | none" in out.stdout
    assert "softmax" in out.stdout and "layer_norm" in out.stdout


@pytest.mark.slow
@pytest.mark.tuning
def test_tune_small_resnet_matches_untuned(tmp_path, host_target):
    model = models.get_model("resnet18", image_size=32, width=8, num_classes=10)
    result = droplet_relax.tune_model(
        model.mod, host_target, str(tmp_path / "resnet"), 40, num_trials_per_iter=2, seed=1
    )
    assert len(result.tasks) == 20
    assert result.no_valid_trial == []
    assert all(row.applied for row in result.tasks)
    untuned = droplet_relax.compile_untuned(result.mod, host_target)
    arguments = model.random_arguments(seed=5)
    comparison = droplet_relax.compare_outputs(
        untuned, result.executable, model.entry, arguments, rtol=RTOL, atol=ATOL
    )
    assert comparison.ok, comparison
