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
"""Benchmark the measurement pipeline: FastBuilder vs LocalBuilder, and runner settings.

Three parts, all on one te_workload kernel (``GMM:1`` by default) and the host CPU:

(a) build phase: one batch of random, postprocessed candidates (replayed design-space traces,
    like ``ReplayTrace`` makes them) built by ``LocalBuilder`` and by ``FastBuilder`` (its first,
    cold batch, which starts the workers, and warm batches after it);
(b) tuning wall time: ``tune_tir`` with ``strategy="replay-trace"`` and a fixed seed (so both
    runs measure the same trials), once with each builder;
(c) runner: per-candidate cost and noise of ``LocalRunner`` under several ``EvaluatorConfig``
    settings, from repeated measurements of the same kernels.

Usage::

    python scripts/bench_build.py                 # full run, a few minutes on 2 cores
    python scripts/bench_build.py --smoke         # < 1 min, exercises every part
    python scripts/bench_build.py --json docs/benchmarks/build.json --md docs/benchmarks/build.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil
import tvm
import tvm.s_tir.meta_schedule as ms
from benchlib.env import describe, environment
from benchlib.results import write_json, write_text
from tvm.s_tir.meta_schedule.builder import BuilderInput
from tvm.s_tir.meta_schedule.testing import te_workload

from ms_droplet.builder import FastBuilder
from ms_droplet.measure import valid_run_secs
from ms_droplet.target import host_target
from ms_droplet.testing import random_schedules

RUNNER_CONFIGS = [
    (3, 1, 100),  # MetaSchedule's default EvaluatorConfig
    (3, 2, 50),
    (3, 3, 20),
    (3, 3, 40),
    (1, 5, 20),
]


def workload_module(spec: str) -> tvm.IRModule:
    name, index = spec.split(":")
    return tvm.IRModule({"main": te_workload.create_te_workload(name, int(index))})


def make_candidates(mod, target, count: int, seed: int) -> list[tvm.IRModule]:
    """``count`` distinct random schedules that pass postprocessing."""
    return random_schedules(mod, target, count, seed)


def remove_artifacts(results) -> None:
    for result in results:
        if result.artifact_path:  # each artifact has its own temporary directory
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)


def timed_build(builder, inputs) -> tuple[float, int]:
    start = time.perf_counter()
    results = builder.build(inputs)
    elapsed = time.perf_counter() - start
    remove_artifacts(results)
    return elapsed, sum(result.error_msg is not None for result in results)


def bench_build_phase(inputs, args) -> dict:
    sizes = sorted({len(inputs), *(n for n in args.small_batches if 0 < n < len(inputs))})
    out: dict = {"candidates": len(inputs), "batch_sizes": sizes}
    print(f"(a) build phase: batches of {sizes} candidates", flush=True)
    builder = FastBuilder(max_workers=args.max_workers, timeout_sec=args.timeout)
    cold, failed = timed_build(builder, inputs)
    warm: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.warm_batches):
        for n in sizes:
            elapsed, batch_failed = timed_build(builder, inputs[:n])
            warm[n].append(elapsed)
            failed += batch_failed
    rss = []
    for pid in builder.worker_pids():
        try:
            rss.append(round(psutil.Process(pid).memory_info().rss / 2**20, 1))
        except psutil.Error:
            pass
    workers = builder.max_workers
    out["fast"] = {
        "max_workers": workers,
        "timeout_sec": args.timeout,
        "cold_batch_s": round(cold, 3),
        "failed": failed,
        "worker_rss_mb": rss,
        "stats": builder.stats(),
    }
    builder.shutdown()
    print(f"    FastBuilder first batch of {len(inputs)}: {cold:.2f} s", flush=True)

    local_workers = None
    rows = []
    for n in sizes:
        local = ms.builder.LocalBuilder(max_workers=args.local_workers, timeout_sec=args.timeout)
        local_workers = local.max_workers
        local_s, local_failed = timed_build(local, inputs[:n])
        fast_s = statistics.median(warm[n])
        rows.append(
            {
                "candidates": n,
                "fast_warm_s": [round(x, 3) for x in warm[n]],
                "fast_warm_median_s": round(fast_s, 3),
                "fast_core_s_per_candidate": round(fast_s * workers / n, 4),
                "local_s": round(local_s, 3),
                "local_failed": local_failed,
                "ratio": round(local_s / fast_s, 2),
            }
        )
        print(
            f"    {n} candidates: FastBuilder warm {fast_s:.2f} s, LocalBuilder {local_s:.2f} s "
            f"({local_failed} failed): {local_s / fast_s:.1f}x",
            flush=True,
        )
    out["local"] = {"max_workers": local_workers, "timeout_sec": args.timeout}
    out["batches"] = rows
    full = rows[-1]
    out["ratio_vs_warm"] = full["ratio"]
    out["ratio_vs_cold"] = round(full["local_s"] / cold, 2)
    if args.local_default_timeout:
        local = ms.builder.LocalBuilder(max_workers=args.local_workers)
        elapsed, local_failed = timed_build(local, inputs)
        out["local_default_timeout"] = {
            "timeout_sec": local.timeout_sec,
            "batch_s": round(elapsed, 3),
            "failed": local_failed,
        }
        print(
            f"    LocalBuilder, default 30 s timeout: {elapsed:.2f} s ({local_failed} failed)",
            flush=True,
        )
    return out


def _records(database) -> list[tuple[str, float | None]]:
    rows = []
    for record in database.get_all_tuning_records():
        secs = valid_run_secs(record.run_secs)
        rows.append((str(record.trace), statistics.median(secs) if secs else None))
    return sorted(rows, key=lambda row: row[0])


def tune_once(mod, target, builder, args, cost_model=None) -> tuple[float, list]:
    if not args.verbose:  # tune_tir's logging.config resets the level every time
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_build_") as work_dir:
        start = time.perf_counter()
        database = ms.tune_tir(
            mod,
            target,
            work_dir,
            max_trials_global=args.trials,
            num_trials_per_iter=args.trials_per_iter,
            builder=builder,
            cost_model=cost_model or args.cost_model,
            strategy="replay-trace",
            seed=args.seed,
            # One search thread: ReplayTrace hands out per-thread random states dynamically,
            # so with several threads the same seed does not give the same trials.
            num_tuning_cores=1,
        )
        elapsed = time.perf_counter() - start
        return elapsed, _records(database)


def bench_tuning(mod, target, args) -> dict:
    print(f"(b) tuning: {args.trials} trials, {args.trials_per_iter} a batch", flush=True)
    out: dict = {
        "trials": args.trials,
        "trials_per_iter": args.trials_per_iter,
        "strategy": "replay-trace",
        "cost_model": args.cost_model,
        "seed": args.seed,
    }
    with FastBuilder(max_workers=args.max_workers, timeout_sec=args.timeout) as builder:
        fast_s, fast_records = tune_once(mod, target, builder, args)
    out["fast_s"] = round(fast_s, 2)
    print(f"    FastBuilder {fast_s:.1f} s", flush=True)
    best = [r[1] for r in fast_records if r[1] is not None]
    out["fast_best_us"] = round(min(best) * 1e6, 1) if best else None
    if args.smoke:
        out["local_s"] = None
        out["note"] = "LocalBuilder tuning skipped in --smoke mode"
        return out
    local = ms.builder.LocalBuilder(max_workers=args.local_workers, timeout_sec=args.timeout)
    local_s, local_records = tune_once(mod, target, local, args)
    print(f"    LocalBuilder {local_s:.1f} s", flush=True)
    best = [r[1] for r in local_records if r[1] is not None]
    out["local_s"] = round(local_s, 2)
    out["local_best_us"] = round(min(best) * 1e6, 1) if best else None
    out["same_trials"] = [r[0] for r in fast_records] == [r[0] for r in local_records]
    out["ratio"] = round(local_s / fast_s, 2)
    if args.cost_model != "random":
        # replay-trace does not consult the cost model, so this measures the same trials
        # without the cost model's updates: what is left of the tuning time.
        with FastBuilder(max_workers=args.max_workers, timeout_sec=args.timeout) as builder:
            random_s, _ = tune_once(mod, target, builder, args, cost_model="random")
        out["fast_random_cost_model_s"] = round(random_s, 2)
        print(f"    FastBuilder, cost_model='random' {random_s:.1f} s", flush=True)
    return out


def _cv(values) -> float | None:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / np.mean(values))


def bench_runner(artifacts, args) -> dict:
    """Cost and noise of LocalRunner settings on the same built kernels."""
    print(f"(c) runner: {len(artifacts)} kernels x {args.runner_repeats} runs", flush=True)
    configs = RUNNER_CONFIGS[:2] if args.smoke else RUNNER_CONFIGS
    rows = []
    for number, repeat, min_repeat_ms in configs:
        config = ms.runner.EvaluatorConfig(
            number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        runner = ms.runner.LocalRunner(evaluator_config=config)
        runner_inputs = [ms.runner.RunnerInput(path, "cpu", info) for path, info in artifacts]
        for future in runner.run(runner_inputs):  # warm-up: load, link, first touch
            future.result()
        samples: list[list[list[float]]] = [[] for _ in artifacts]
        start = time.perf_counter()
        for _ in range(args.runner_repeats):
            for index, future in enumerate(runner.run(runner_inputs)):
                result = future.result()
                if result.error_msg is None:
                    samples[index].append([float(x) for x in result.run_secs])
        elapsed = time.perf_counter() - start
        between = [_cv([float(np.mean(s)) for s in kernel]) for kernel in samples]
        within = [_cv(s) for kernel in samples for s in kernel] if repeat >= 2 else []
        first = [_cv([s[0] for s in kernel]) for kernel in samples]
        false_alarm = _false_alarm_rate(samples) if repeat >= 2 else None
        row = {
            "number": number,
            "repeat": repeat,
            "min_repeat_ms": min_repeat_ms,
            "s_per_candidate": round(elapsed / (len(artifacts) * args.runner_repeats), 4),
            "cv_between_runs_median": _round(_median(between)),
            "cv_between_runs_max": _round(max((x for x in between if x is not None), default=None)),
            "cv_single_sample_median": _round(_median(first)),
            "cv_within_run_median": _round(_median(within)) if within else None,
            "welch_false_alarm_p05": _round(false_alarm, 3),
            "kernel_median_us": [
                round(float(np.median([np.mean(s) for s in kernel])) * 1e6, 1) if kernel else None
                for kernel in samples
            ],
        }
        rows.append(row)
        print(
            f"    number={number} repeat={repeat} min_repeat_ms={min_repeat_ms}: "
            f"{row['s_per_candidate']:.3f} s/candidate, CV between runs "
            f"{row['cv_between_runs_median']}, within {row['cv_within_run_median']}",
            flush=True,
        )
        del runner
    return {"kernels": len(artifacts), "runs_per_kernel": args.runner_repeats, "configs": rows}


def _false_alarm_rate(samples) -> float | None:
    """How often Welch's t-test (p < 0.05) calls two runner calls of one kernel different."""
    from scipy import stats  # pylint: disable=import-outside-toplevel

    tests = alarms = 0
    for kernel in samples:
        for i, first in enumerate(kernel):
            for second in kernel[i + 1 :]:
                if np.std(first) == 0 and np.std(second) == 0:
                    continue
                tests += 1
                alarms += stats.ttest_ind(first, second, equal_var=False).pvalue < 0.05
    return alarms / tests if tests else None


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _round(value, digits=4):
    return None if value is None else round(value, digits)


def write_markdown(result: dict, path: str) -> None:
    setup, build, tune, runner = (
        result["setup"],
        result["build_phase"],
        result["tuning"],
        result["runner"],
    )
    machine = describe(result)
    lines = [
        "# Build and measurement benchmark",
        "",
        f"`scripts/bench_build.py{' --smoke' if setup['smoke'] else ''}`, {machine['date']}: "
        f"TVM {machine['tvm']}, {machine['cpu']} (`{setup['llvm_cpu']}`), "
        f"{setup['physical_cores']} physical / {machine['logical_cores']} logical cores, "
        f"workload `{setup['workload']}`, target `{machine['target']}`.",
        "",
        "## (a) Build phase",
        "",
        f"Random postprocessed candidates of `{setup['workload']}`. LocalBuilder: "
        f"{build['local']['max_workers']} workers, timeout {build['local']['timeout_sec']} s "
        f"(a fresh pool per batch). FastBuilder: {build['fast']['max_workers']} workers, "
        "warm batches (median).",
        "",
        "| candidates | LocalBuilder (s) | FastBuilder warm (s) | speed-up | "
        "FastBuilder core-s / candidate |",
        "|---|---|---|---|---|",
    ]
    for row in build["batches"]:
        lines.append(
            f"| {row['candidates']} | {row['local_s']} | {row['fast_warm_median_s']} | "
            f"**{row['ratio']}x** | {row['fast_core_s_per_candidate']} |"
        )
    lines += [
        "",
        f"FastBuilder's first batch of {build['candidates']} (starting its workers): "
        f"{build['fast']['cold_batch_s']} s ({build['ratio_vs_cold']}x). Worker RSS after "
        f"{build['fast']['stats'].get('builds')} builds: {build['fast']['worker_rss_mb']} MiB.",
    ]
    if "local_default_timeout" in build:
        row = build["local_default_timeout"]
        lines.append(
            f"LocalBuilder with its default {row['timeout_sec']} s timeout: {row['batch_s']} s, "
            f"{row['failed']} of {build['candidates']} failed."
        )
    lines += [
        "",
        f"## (b) Tuning wall time, {tune['trials']} trials ({tune['trials_per_iter']} a batch, "
        f"{tune['strategy']}, cost model {tune.get('cost_model')}, seed {tune['seed']})",
        "",
        "| builder | wall time (s) | best (us) |",
        "|---|---|---|",
        f"| LocalBuilder | {tune.get('local_s')} | {tune.get('local_best_us')} |",
        f"| FastBuilder | {tune['fast_s']} | {tune.get('fast_best_us')} |",
    ]
    if tune.get("fast_random_cost_model_s") is not None:
        lines.append(
            f'| FastBuilder, `cost_model="random"` (same trials) | '
            f"{tune['fast_random_cost_model_s']} | |"
        )
    lines.append("")
    if tune.get("ratio") is not None:
        lines += [
            f"Speed-up: **{tune['ratio']}x**; same trials measured: {tune.get('same_trials')}.",
            "",
        ]
    elif tune.get("note"):
        lines += [tune["note"] + ".", ""]
    lines += [
        f"## (c) LocalRunner cost and noise ({runner['kernels']} kernels, "
        f"{runner['runs_per_kernel']} runs each)",
        "",
        "| number | repeat | min_repeat_ms | s / candidate | CV between runs (median / max) "
        "| CV of one sample | CV within a run | Welch false alarms (p<0.05) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def _cell(value):
        return "-" if value is None else value

    for row in runner["configs"]:
        lines.append(
            f"| {row['number']} | {row['repeat']} | {row['min_repeat_ms']} | "
            f"{row['s_per_candidate']} | {row['cv_between_runs_median']} / "
            f"{row['cv_between_runs_max']} | {row['cv_single_sample_median']} | "
            f"{_cell(row['cv_within_run_median'])} | {_cell(row.get('welch_false_alarm_p05'))} |"
        )
    lines += [
        "",
        "CV between runs: coefficient of variation of a kernel's mean time over repeated runner "
        "calls. CV of one sample: the same, using only the first timing of each call. CV within "
        "a run: spread of the `repeat` timings of one call (what a t-test on one call sees). "
        "Welch false alarms: share of pairs of calls on the *same* kernel that Welch's t-test "
        "(p < 0.05) on their `repeat` timings calls different (5 % if calls were independent "
        "samples of one distribution).",
        "",
    ]
    write_text(path, "\n".join(lines))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, finishes in < 1 min")
    parser.add_argument("--workload", default="GMM:1", help="te_workload NAME:INDEX")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument(
        "--small-batches",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[16],
        help="also time these smaller batch sizes (comma-separated)",
    )
    parser.add_argument("--warm-batches", type=int, default=2)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--runner-kernels", type=int, default=6)
    parser.add_argument("--runner-repeats", type=int, default=10)
    parser.add_argument("--max-workers", type=int, default=None, help="FastBuilder workers")
    parser.add_argument(
        "--local-workers", type=int, default=None, help="LocalBuilder workers (its default)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="build timeout of both builders; LocalBuilder's covers its tensor_intrin import",
    )
    parser.add_argument(
        "--no-local-default-timeout",
        dest="local_default_timeout",
        action="store_false",
        help="skip the extra LocalBuilder batch with its default 30 s timeout",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cost-model", default=None, help="tune_tir cost model (default xgb; random in --smoke)"
    )
    parser.add_argument("--verbose", action="store_true", help="keep MetaSchedule's console log")
    parser.add_argument("--skip-tuning", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--md", default=None, help="write a Markdown table here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.candidates = min(args.candidates, 6)
        args.small_batches = []
        args.warm_batches = 1
        args.trials = min(args.trials, 4)
        args.trials_per_iter = min(args.trials_per_iter, 4)
        args.runner_kernels = min(args.runner_kernels, 2)
        args.runner_repeats = min(args.runner_repeats, 3)
        args.local_workers = args.local_workers or 1
        args.local_default_timeout = False
    if args.cost_model is None:
        args.cost_model = "random" if args.smoke else "xgb"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    started = time.perf_counter()
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    target = host_target(physical)
    mod = workload_module(args.workload)
    env = environment(target)
    setup = {
        "smoke": args.smoke,
        "llvm_cpu": tvm.get_global_func("target.llvm_get_system_cpu")(),
        "physical_cores": physical,  # the target's (psutil's, or os.cpu_count() without it)
        "workload": args.workload,
        "args": vars(args),
    }
    print(f"setup: {env['cpu']['model']} ({setup['llvm_cpu']}), TVM {tvm.__version__}", flush=True)
    start = time.perf_counter()
    candidates = make_candidates(mod, target, args.candidates, args.seed)
    # TuneContext imports tvm.s_tir.tensor_intrin in this process, once: not part of (a) or (b).
    setup["candidate_generation_s"] = round(time.perf_counter() - start, 2)
    try:
        import xgboost  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        pass
    inputs = [BuilderInput(candidate, target) for candidate in candidates]
    result = {"environment": env, "setup": setup, "build_phase": bench_build_phase(inputs, args)}

    if args.skip_tuning:
        result["tuning"] = {"trials": 0, "trials_per_iter": 0, "strategy": "-", "seed": args.seed}
        result["tuning"].update({"fast_s": None, "note": "skipped"})
    else:
        result["tuning"] = bench_tuning(mod, target, args)

    with FastBuilder(max_workers=args.max_workers) as builder:
        built = builder.build(inputs[: args.runner_kernels])
    artifacts = [
        (res.artifact_path, ms.arg_info.ArgInfo.from_entry_func(cand, remove_preproc=True))
        for res, cand in zip(built, candidates)
        if res.error_msg is None
    ]
    result["runner"] = bench_runner(artifacts, args)
    remove_artifacts(built)
    setup["total_s"] = round(time.perf_counter() - started, 1)
    print(f"total {setup['total_s']} s", flush=True)

    if args.json:
        write_json(args.json, result, env, indent=2)
    else:
        print(json.dumps(result, indent=2))
    if args.md:
        write_markdown(result, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
