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
"""Whole ONNX models side by side: ONNX Runtime, untuned TVM, evolutionary- and droplet-tuned TVM.

Each model of ``--models`` is written as an ONNX file (``ms_droplet.onnx_models``: random
weights made here, no downloads), loaded through ``ms_droplet.relax.load_onnx`` as a user's
file would be, and tuned with ``ms_droplet.relax.tune_model`` in variants: MetaSchedule's
evolutionary search and droplet at the same global budget (``--trials-per-task`` times the
model's number of tasks) and droplet at a quarter of it, each in its own work_dir, its tuning
time clocked. Then every build (ONNX Runtime with as many threads as the process has cores,
the untuned TVM build and the tuned ones) is checked against ONNX Runtime's output and timed
in one process, interleaved: ``--rounds`` rounds, each build called repeatedly for at least
``--round-ms`` per round (one mean per round), the medians compared. JSON, Markdown and a plot
of model latency against tuning time: the measured builds, and each run's curve as the tuner
saw it (after each batch, the weighted sum of the tasks' best times so far).
Each run's work_dir (database, logs) is kept as ``work/MODEL_VARIANT.tar.xz`` under ``--out``.

Examples::

    python scripts/bench_model.py --smoke --out /tmp/bench_model
    python scripts/bench_model.py --models resnet18,transformer --trials-per-task 64 \\
        --out docs/benchmarks/models
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import time

from benchlib.cli import parse_with_smoke
from benchlib.env import describe, environment
from benchlib.results import write_json, write_text
from benchlib.runs import evaluator_settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="resnet18,transformer", help="of ms_droplet.onnx_models"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--trials-per-task", type=int, default=64, help="global budget = this x the task count"
    )
    parser.add_argument(
        "--variants",
        default="evolutionary@1,droplet@1,droplet@0.25",
        help="STRATEGY@FRACTION of the global budget, comma-separated",
    )
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--round-ms", type=float, default=200.0, help="each build's time a round")
    parser.add_argument("--out", default="bench_model_out", help="output folder")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="write the Markdown of these result files and one plot of all their models to "
        "--out, and exit",
    )
    args = parse_with_smoke(
        parser,
        argv,
        "the mlp, 2 trials a task, 3 rounds (for CI): ~2 minutes",
        models="mlp",
        trials_per_task=2,
        trials_per_iter=4,
        rounds=3,
        round_ms=20.0,
    )
    try:
        args.variants = [parse_variant(text) for text in args.variants.split(",")]
    except ValueError as err:
        parser.error(str(err))
    return args


def parse_variant(text: str) -> tuple[str, float]:
    """``"droplet@0.25"`` -> ``("droplet", 0.25)``."""
    strategy, _, fraction = text.partition("@")
    try:
        value = float(fraction or 1)
    except ValueError:
        value = -1.0
    if strategy not in ("droplet", "evolutionary") or not 0 < value <= 4:
        raise ValueError(
            f"--variants: {text!r} must be droplet@F or evolutionary@F with 0 < F <= 4 (F: a "
            "fraction of the global budget), e.g. droplet@0.25"
        )
    return strategy, value


def tune_variant(model, target, work_dir, strategy, budget, args):
    """Tune ``model`` with ``strategy`` for ``budget`` trials; the result, its seconds and its
    curve (:func:`model_curve`)."""
    from ms_droplet import FastBuilder
    from ms_droplet.relax import tune_model

    callback, curve = model_curve()
    start = time.perf_counter()
    with FastBuilder() as builder:
        result = tune_model(
            model.mod,
            target,
            work_dir,
            budget,
            strategy=strategy,
            num_trials_per_iter=args.trials_per_iter,
            builder=builder,
            measure_callbacks=[callback],
            seed=args.seed,
        )
    return result, time.perf_counter() - start, curve


def model_curve():
    """A measure callback and the curve it fills: after each measured batch,
    ``[seconds since it was made, trials, estimated model seconds]``, the estimate being the
    sum over tasks of weight x best mean time so far (what MetaSchedule's task scheduler
    prints as its total latency), None until every task has a valid time."""
    # pylint: disable=import-outside-toplevel
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    from ms_droplet._samples import mean_run_secs, result_run_secs

    start, best, points = time.perf_counter(), {}, []

    @derived_object
    class ModelCurve(PyMeasureCallback):
        """Adds a point to ``points`` after each batch."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, results):
            task_id = int(task_id)
            for built, result in zip(builder_results, results):
                samples = [] if built.error_msg is not None else result_run_secs(result)
                if samples:
                    best[task_id] = min(best.get(task_id, float("inf")), mean_run_secs(samples))
            records = task_scheduler.tasks_
            total = None
            if len(best) == len(records):
                total = sum(float(records[i].task_weight) * secs for i, secs in best.items())
            trials = (points[-1][1] if points else 0) + len(results)
            points.append([round(time.perf_counter() - start, 3), trials, total])

    return ModelCurve(), points


_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \[INFO\] (\[task_scheduler\.cc:\d+\])?")
_TASK_ROW = re.compile(r"^\s*\d+ \|")
_TOTAL = re.compile(r"^Total (trials|latency \(us\)): ([0-9.eE+-]+)")


def curve_from_scheduler_log(log_path):
    """:func:`model_curve`'s points read back from MetaSchedule's task scheduler log (the
    ``logs/...task_scheduler.log`` of a work_dir), for runs made without the callback. The
    scheduler prints its table of tasks when it commits a batch, where the callback runs;
    seconds count from the log's first line, to the second."""
    points, start, row = [], None, None
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            stamp = _LOG_STAMP.match(line)
            if stamp:
                when = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
                start = start or when
                row = {"at": when, "tasks": 0, "timed": 0} if stamp.group(2) else row
            elif row is not None and _TASK_ROW.match(line):
                row["tasks"] += 1
                row["timed"] += line.split("|")[5].strip() != "N/A"
            elif row is not None and _TOTAL.match(line):
                kind, value = _TOTAL.match(line).groups()
                if kind == "trials":
                    row["trials"] = int(value)
                elif row["tasks"]:
                    total = float(value) * 1e-6 if row["timed"] == row["tasks"] else None
                    seconds = (row["at"] - start).total_seconds()
                    points.append([seconds, row.get("trials", 0), total])
                    row = None
    # The first table is printed before anything is measured.
    return [p for p in points if p[1] > 0]


def keep_work_dir(work_dir, archive_base):
    """Keep a run's database and logs: ``archive_base + ".tar.xz"``; its path."""
    os.makedirs(os.path.dirname(archive_base), exist_ok=True)
    return shutil.make_archive(archive_base, "xztar", root_dir=work_dir)


def timers(builds, model, onnx_path, arguments):
    """One zero-argument callable per build that runs it once on ``arguments`` (outputs kept
    on the device: what a deployment's call costs)."""
    import onnxruntime
    import tvm
    from tvm import relax

    calls = {}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    feed = {spec.name: arg for spec, arg in zip(model.inputs, arguments)}
    calls["onnxruntime"] = lambda: session.run(None, feed)
    device = tvm.cpu()
    for name, executable in builds.items():
        vm = relax.VirtualMachine(executable, device)
        tensors = [tvm.runtime.tensor(a, device) for a in arguments]
        function = vm[model.entry]

        def call(function=function, tensors=tensors):
            function(*tensors)
            device.sync()

        calls[name] = call
    return calls


def time_interleaved(calls, rounds, round_ms):
    """Per build, one mean seconds per call per round; builds in turn within each round."""
    names = list(calls)
    samples = {name: [] for name in names}
    for name in names:  # warm-up: first calls allocate and fill caches
        for _ in range(3):
            calls[name]()
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            count, start = 0, time.perf_counter()
            while True:
                calls[name]()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= round_ms / 1e3:
                    break
            samples[name].append(elapsed / count)
    return samples


def run_model_benchmark(name, args, target, scratch):
    from ms_droplet.onnx_models import write_onnx_model
    from ms_droplet.relax import compile_untuned, extract_model_tasks, run_model
    from ms_droplet.relax.sources import compare_with_reference, load_onnx, onnxruntime_outputs

    onnx_path = write_onnx_model(
        name, os.path.join(scratch, f"{name}.onnx"), batch_size=args.batch_size, seed=args.seed
    )
    model = load_onnx(onnx_path)
    tasks = len(extract_model_tasks(model.mod, target))
    budget = args.trials_per_task * tasks
    print(f"{name}: {tasks} tasks, global budget {budget}", flush=True)
    builds, variants = {}, []
    start = time.perf_counter()
    builds["untuned"] = compile_untuned(model.mod, target)
    variants.append({"name": "untuned", "tune_s": 0.0, "compile_s": time.perf_counter() - start})
    for strategy, fraction in args.variants:
        label = f"{strategy}@{fraction:g}"
        trials = max(1, round(budget * fraction))
        print(f"  {label}: {trials} trials ...", flush=True)
        work_dir = os.path.join(scratch, f"{name}_{label}")
        result, seconds, curve = tune_variant(model, target, work_dir, strategy, trials, args)
        builds[label] = result.executable
        kept = keep_work_dir(work_dir, os.path.join(args.out, "work", f"{name}_{label}"))
        variants.append(
            {
                "name": label,
                "strategy": strategy,
                "budget_fraction": fraction,
                "max_trials": trials,
                "trials": result.trials,
                "tune_s": seconds,
                "curve": curve,
                "work_dir_archive": os.path.relpath(kept, args.out),
                "tasks_without_valid_trial": list(result.no_valid_trial),
                "tasks": [
                    {
                        "name": row.name,
                        "trials": row.trials,
                        "valid": row.valid,
                        "best_s": row.best_secs,
                        "applied": row.applied,
                    }
                    for row in result.tasks
                ],
            }
        )
        print(f"    {seconds:.0f} s, {result.trials} trials", flush=True)
    arguments = model.random_inputs(args.seed)
    expected = onnxruntime_outputs(onnx_path, arguments, model.inputs)
    for variant in variants:
        actual = run_model(builds[variant["name"]], model.entry, arguments)
        check = compare_with_reference(expected, actual, names=model.output_names)
        variant["numerics"] = {
            "match": check.ok,
            "max_abs_diff": check.max_abs_diff,
            "max_rel_diff": check.max_rel_diff,
        }
    samples = time_interleaved(
        timers(builds, model, onnx_path, arguments), args.rounds, args.round_ms
    )
    ort = statistics.median(samples["onnxruntime"])
    rows = [{"name": "onnxruntime", "tune_s": 0.0}] + variants
    for row in rows:
        row["samples_s"] = samples[row["name"]]
        row["median_s"] = statistics.median(row["samples_s"])
        row["vs_onnxruntime"] = ort / row["median_s"]  # above 1: faster than ONNX Runtime
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        if row.get("strategy") == "droplet" and "evolutionary@1" in by_name:
            row["vs_evolutionary"] = by_name["evolutionary@1"]["median_s"] / row["median_s"]
    return {
        "model": name,
        "inputs": [
            {"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in model.inputs
        ],
        "tasks": tasks,
        "global_budget": budget,
        "builds": rows,
    }


def markdown(doc):
    env = describe(doc)
    setup = doc["setup"]
    lines = [
        "# Whole models: ONNX Runtime, untuned TVM, evolutionary- and droplet-tuned TVM",
        "",
        f"{env['date']}, commit {doc['environment']['commit']['sha']}, CPU {env['cpu']} "
        f"({env['physical_cores']} cores), target `{setup['target']}`, TVM {env['tvm']}.",
        f"Command: `{doc['environment']['command']}`",
        "",
        f"Each build timed in {setup['rounds']} interleaved rounds of >= {setup['round_ms']:g} ms "
        "(median of the per-round means); ONNX Runtime with "
        f"{setup['onnxruntime_threads']} intra-op threads. `vs ORT` above 1: faster than ONNX "
        "Runtime; `vs evolutionary@1`: droplet's speed-up over evolutionary search at the full "
        "budget.",
        "",
    ]
    for model in doc["models"]:
        lines += [
            f"## {model['model']} ({model['tasks']} tasks, global budget {model['global_budget']})",
            "",
            "| build | trials | tuning s | latency ms | vs ORT | vs evolutionary@1 | output |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in model["builds"]:
            numerics = row.get("numerics")
            match = "-" if numerics is None else ("match" if numerics["match"] else "MISMATCH")
            lines.append(
                f"| {row['name']} | {row.get('trials', '-')} | {row['tune_s']:.0f} | "
                f"{row['median_s'] * 1e3:.3f} | {row['vs_onnxruntime']:.2f} | "
                f"{row.get('vs_evolutionary', float('nan')):.2f} | {match} |".replace("nan", "-")
            )
        lines.append("")
    return "\n".join(lines)


def plot(doc, path):
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        builds = {row["name"]: row for row in model["builds"]}
        for strategy, marker, color in (
            ("evolutionary", "s", "tab:blue"),
            ("droplet", "o", "tab:orange"),
        ):
            points = sorted(
                (row["tune_s"], row["median_s"] * 1e3)
                for row in model["builds"]
                if row.get("strategy") == strategy
            )
            if points:
                ax.plot(
                    *zip(*points), marker=marker, color=color, label=f"{strategy} (measured build)"
                )
            for row in model["builds"]:
                if row.get("strategy") != strategy:
                    continue
                # The tuner's estimate, once every task has a valid time.
                curve = [(p[0], p[2] * 1e3) for p in row.get("curve", []) if p[2] is not None]
                if curve:
                    ax.plot(
                        *zip(*curve),
                        linewidth=0.8,
                        alpha=0.6,
                        color=color,
                        label=f"{row['name']}: sum of task bests in tuning",
                    )
        for name, style in (("onnxruntime", "--"), ("untuned", ":")):
            if name in builds:
                ax.axhline(builds[name]["median_s"] * 1e3, linestyle=style, color="gray")
                ax.annotate(
                    name,
                    (0.01, builds[name]["median_s"] * 1e3),
                    xycoords=ax.get_yaxis_transform(),  # x: the axes' left edge
                    fontsize=8,
                    va="bottom",
                )
        ax.set_title(f"{model['model']} (budget {model['global_budget']} trials)")
        ax.set_xlim(left=0)
        ax.set_xlabel("tuning time (s)")
        ax.set_ylabel("model latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(paths, out):
    """Markdown of several result files (each with its own setup) and one plot of them all."""
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs.append(json.load(f))
    os.makedirs(out, exist_ok=True)
    text = "\n\n".join(markdown(doc) for doc in docs)
    write_text(os.path.join(out, "models.md"), text)
    print(text)
    drawn = plot({"models": [m for doc in docs for m in doc["models"]]}, f"{out}/models.png")
    if drawn:
        print(f"plot: {drawn}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return report(args.report, args.out)
    import logging
    import shutil
    import tempfile

    import tvm.s_tir.tensor_intrin  # noqa: F401 - a one-time ~12 s import, before any clock

    from ms_droplet.target import host_target

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = host_target()
    env = environment(target)
    setup = {
        "target": str(target),
        "models": args.models.split(","),
        "batch_size": args.batch_size,
        "trials_per_task": args.trials_per_task,
        "variants": [f"{s}@{f:g}" for s, f in args.variants],
        "trials_per_iter": args.trials_per_iter,
        "seed": args.seed,
        "rounds": args.rounds,
        "round_ms": args.round_ms,
        "onnxruntime_threads": len(os.sched_getaffinity(0)),
        "evaluator_config": evaluator_settings(),
        "runner": "ms_droplet.runner.InterleavedRunner",
        "builder": "ms_droplet.builder.FastBuilder",
    }
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_model_")
    try:
        results = [run_model_benchmark(name, args, target, scratch) for name in setup["models"]]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    doc = {"setup": setup, "models": results}
    doc = write_json(os.path.join(args.out, "models.json"), doc, env)
    write_text(os.path.join(args.out, "models.md"), markdown(doc))
    drawn = plot(doc, os.path.join(args.out, "models.png"))
    print(markdown(doc))
    if drawn:
        print(f"plot: {drawn}")
    failed = [
        (m["model"], row["name"])
        for m in results
        for row in m["builds"]
        if row.get("numerics") and not row["numerics"]["match"]
    ]
    if failed:
        print(f"MISMATCH against ONNX Runtime: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
