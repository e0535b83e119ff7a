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
"""Droplet vs evolutionary search on CUDA kernels, measured side by side on one GPU.

The protocol of ``scripts/bench_kernels.py`` (``shared/docs/benchmark-protocol.md``), on a GPU:
every strategy and budget is its own tuning run in its own ``work_dir`` with the same seed;
tuning wall time is clocked; then the best schedule of every run is built and timed in one
process, interleaved (A B C A B C ...), after a numerics check against a float64 reference on
the CPU. The ceiling is timed in the same run, in a subprocess: torch's fp32 matmul (cuBLAS)
or conv2d (cuDNN), with TF32 off.

Kernels: ``matmul`` (1024^3 fp32, ``te_workload.matmul``) and ``c2d`` (``C2D:0`` of
``te_workload``, ResNet-18's first convolution, NHWC). Runs per kernel and seed: ``droplet@T``,
``evolutionary@T`` and, time allowing (``--time-limit``), ``evolutionary@4T``.

A lent GPU machine takes at most 10 minutes a command, so the work can be staged: with
``--work-root DIR`` every run tunes into ``DIR/<kernel>-s<seed>-<run>/`` and leaves its
``bench_run.json`` there; a run whose folder already has one is not tuned again but reused
(its records are read back with ``JSONDatabase``). ``--tune-only`` stops after tuning. A last
call without it (the folders carried over) re-measures every run's winner side by side. Other
finished runs of the same kernel and seed under the work root (say, a droplet run of earlier
code, renamed ``matmul-s1-droplet_T_before``) are re-measured with them, under their folder's
suffix as label: an A/B comparison in one measurement.

``--variants JSON`` (as in ``ab_droplet.py``: run name -> ``DropletSearch`` options, with
optional ``"strategy"`` and ``"trials"``) replaces those runs; the first is compared with the
others. ``--shared-exploration N`` tunes one N-trial evolutionary exploration per kernel and
seed (the run ``exploration``) and lets every run continue from a copy of its records with the
rest of its budget (``--warm-model``: its cost model trained on them first), so that a
comparison of the descent's options is paired. ``--smoke`` runs that flow on this machine's
CPU (a 128^3 matmul, no torch ceiling): CI's check of the script, not a GPU's numbers.

Needs a CUDA GPU (see ``shared/device/README.md`` for the lent machines)::

    python scripts/bench_gpu.py --kernels matmul --trials 64 --out bench_gpu
    python scripts/bench_gpu.py --kernels matmul --seeds 1,2 --no-4x --work-root runs --tune-only
    python scripts/bench_gpu.py --kernels matmul --seeds 1,2 --no-4x --work-root runs
    python scripts/bench_gpu.py --kernels matmul --seeds 1,2,3 --shared-exploration 32 \\
        --warm-model --variants '{"droplet": {}, "step1": {"max_step": 1}}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from benchlib.cli import parse_with_smoke
from benchlib.env import describe, environment
from benchlib.kernels import random_args
from benchlib.remeasure import remeasure
from benchlib.results import write_json, write_text
from benchlib.runs import (
    Variant,
    continue_exploration,
    evaluator_settings,
    parse_variants,
    tune_one,
)

KERNELS = {
    "matmul": {"te": ("matmul", (1024, 1024, 1024)), "flop": 2 * 1024**3},
    "matmul128": {"te": ("matmul", (128, 128, 128)), "flop": 2 * 128**3},  # --smoke
    "c2d": {"te": ("C2D", 0), "flop": None},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kernels", default="matmul,c2d", help="comma-separated: matmul, c2d (matmul128: 128^3)"
    )
    parser.add_argument("--trials", type=int, default=64, help="the budget T")
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument(
        "--runs", default=None, help="only these runs, e.g. evolutionary@4T (default: all)"
    )
    parser.add_argument(
        "--work-root", default=None, help="keep and reuse each run's work_dir under this folder"
    )
    parser.add_argument("--tune-only", action="store_true", help="tune; do not re-measure")
    parser.add_argument("--no-4x", action="store_true", help="skip evolutionary@4T")
    parser.add_argument(
        "--time-limit", type=float, default=480.0, help="skip runs that start after this (s)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--out", default="bench_gpu", help="output folder")
    parser.add_argument(
        "--variants",
        default=None,
        help='JSON: run name -> DropletSearch options, with optional "strategy" and '
        '"trials" (as in ab_droplet.py), e.g. \'{"droplet": {}, "step1": {"max_step": 1}}\': '
        "these runs instead of droplet@T, evolutionary@T and evolutionary@4T; "
        "the first is compared with the others",
    )
    parser.add_argument(
        "--shared-exploration",
        type=int,
        default=0,
        metavar="N",
        help="per kernel and seed, one evolutionary exploration of N trials (the run "
        "'exploration'); every run continues from a copy of its records with the rest of "
        "its budget (0: every run from scratch)",
    )
    parser.add_argument(
        "--warm-model",
        action="store_true",
        help="with --shared-exploration: each run's cost model starts trained on the "
        "exploration's records",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="FILE",
        help="print the paired comparisons of these result files (pooled; a kernel and seed "
        "in a later file replaces an earlier one) and exit; needs no GPU",
    )
    smoke = {
        "kernels": "matmul128",
        "seeds": "1",
        "trials": 12,
        "trials_per_iter": 4,
        "rounds": 3,
        "shared_exploration": 4,
        "warm_model": True,
        "variants": '{"droplet": {}, "step1": {"max_step": 1}, "evolutionary": '
        '{"strategy": "evolutionary"}}',
    }
    args = parse_with_smoke(
        parser,
        argv,
        "on this machine's CPU (no GPU, no torch ceiling): a 128^3 matmul, three 12-trial runs "
        "continuing a shared 4-trial exploration (CI: the script's flow, not a GPU's numbers)",
        **smoke,
    )
    if args.report:
        return args
    if args.variants is not None and args.no_4x:
        parser.error("--no-4x skips a default run; with --variants, name only the runs you want")
    if args.warm_model and not args.shared_exploration:
        parser.error("--warm-model needs --shared-exploration: the model is warmed on its records")
    if not 0 <= args.shared_exploration < args.trials:
        parser.error(
            f"--shared-exploration must be in [0, --trials), got {args.shared_exploration} "
            f"with --trials {args.trials}; the runs need trials left after the exploration"
        )
    try:
        args.plan = plan_of(args)
    except ValueError as err:
        parser.error(str(err))
    return args


EXPLORATION = "exploration"
"""The label of a shared exploration's run (``--shared-exploration``)."""


def plan_of(args):
    """The runs of each kernel and seed: label -> :class:`benchlib.runs.Variant`, the one
    compared with the others first (``--variants``, or droplet@T, evolutionary@T and, without
    ``--no-4x``, evolutionary@4T)."""
    if args.variants is None:
        plan = {
            "droplet@T": Variant("droplet", args.trials, {}),
            "evolutionary@T": Variant("evolutionary", args.trials, {}),
        }
        if not args.no_4x:
            plan["evolutionary@4T"] = Variant("evolutionary", 4 * args.trials, {})
        return plan
    plan = parse_variants(args.variants, args.trials, args.shared_exploration, path_safe=True)
    if EXPLORATION in plan and args.shared_exploration:
        raise ValueError(
            f"--variants: the name {EXPLORATION!r} is the shared exploration's run; name the "
            "variant otherwise"
        )
    return plan


def cuda_target():
    """The CUDA target of GPU 0, with its arch and limits read from the device."""
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        raise SystemExit("bench_gpu.py: no CUDA GPU here; run it on a lent GPU machine")
    arch = "sm_" + str(dev.compute_version).replace(".", "")
    return tvm.target.Target(
        {
            "kind": "cuda",
            "arch": arch,
            "max_threads_per_block": int(dev.max_threads_per_block),
            "max_shared_memory_per_block": int(dev.max_shared_memory_per_block),
            "thread_warp_size": int(dev.warp_size),
        }
    )


def workload(name):
    import tvm
    from tvm.s_tir.meta_schedule.testing import te_workload

    te_name, shape = KERNELS[name]["te"]
    if te_name == "matmul":
        func = tvm.te.create_prim_func(list(te_workload.matmul(*shape)))
    else:
        func = te_workload.create_te_workload(te_name, shape)
    return func


def reference(name, inputs):
    """The float64 result on the CPU."""
    if name.startswith("matmul"):
        return inputs[0].astype("float64") @ inputs[1].astype("float64")
    import torch

    _, _, stride, padding = 7, 3, 2, 3  # C2D:0 is (1, 224, 224, 3, 64, 7, 2, 3)
    x = torch.from_numpy(inputs[0].astype("float64")).permute(0, 3, 1, 2)
    w = torch.from_numpy(inputs[1].astype("float64")).permute(3, 2, 0, 1)
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1).numpy()


_TORCH_CEILING = """
import json, statistics, sys, torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
kind, rounds = sys.argv[1], int(sys.argv[2])
dev = "cuda"
if kind == "matmul":
    a = torch.rand(1024, 1024, device=dev); b = torch.rand(1024, 1024, device=dev)
    op = lambda: torch.matmul(a, b)
else:
    x = torch.rand(1, 3, 224, 224, device=dev); w = torch.rand(64, 3, 7, 7, device=dev)
    op = lambda: torch.nn.functional.conv2d(x, w, stride=2, padding=3)
for _ in range(20):
    op()
torch.cuda.synchronize()
times = []
for _ in range(rounds):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n = 50
    start.record()
    for _ in range(n):
        op()
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / n * 1e3)
print(json.dumps({"median_us": statistics.median(times), "torch": torch.__version__,
                  "cublas_or_cudnn": "cuDNN " + str(torch.backends.cudnn.version())
                  if kind != "matmul" else "cuBLAS"}))
"""


def torch_ceiling(kind, rounds):
    """torch's fp32 time (TF32 off) in a subprocess, or None with the reason."""
    out = subprocess.run(
        [sys.executable, "-c", _TORCH_CEILING, kind, str(rounds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_settings(args):
    """The settings of the benchmark, for its result file (the machine is in its environment
    record)."""
    ev = evaluator_settings()
    return {
        "cuda_compile_mode": os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc (default)"),
        "trials": args.trials,
        "trials_per_iter": args.trials_per_iter,
        "seeds": [int(x) for x in args.seeds.split(",")],
        "tuning_evaluator": f"number={ev['number']}, repeat={ev['repeat']}, "
        f"min_repeat_ms={ev['min_repeat_ms']} (ms_droplet.measure.default_evaluator_config)",
        "remeasure": f"{args.rounds} interleaved rounds of time_evaluator(number=20, "
        "min_repeat_ms=50), median",
        "cost_model": "xgb (MetaSchedule default)",
        "runs": {label: variant._asdict() for label, variant in args.plan.items()},
        "first": next(iter(args.plan)),
        "shared_exploration": args.shared_exploration,
        "warm_model": args.warm_model,
    }


def markdown(env, setup, results):
    machine = describe({"environment": env})
    lines = [
        f"# GPU kernels: droplet vs evolutionary ({machine['gpu']})",
        "",
        f"{machine['date']}, TVM {machine['tvm']}, target `{machine['target']}`, "
        f"seeds {setup['seeds']}.",
        "",
        "| kernel | seed | run | trials | failed | tuning s | best us (re-measured) | vs ceiling "
        "| correct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kernel in results:
        ceiling = kernel["ceiling"].get("median_us")
        for run in kernel["runs"]:
            med = run.get("median_us")
            if not med:
                reason = run.get("skipped", "no valid schedule")
                lines.append(
                    f"| {kernel['kernel']} | {kernel['seed']} | {run['label']} | {reason} |||||| "
                )
                continue
            ratio = f"{ceiling / med:.2f}x" if ceiling else "-"
            lines.append(
                f"| {kernel['kernel']} | {kernel['seed']} | {run['label']} | {run['trials']} | "
                f"{run['failed']} | {run['wall_secs']:.0f} | {med:.2f} | {ratio} | "
                f"{run['correct']} |"
            )
        if ceiling:
            lines.append(
                f"| {kernel['kernel']} | {kernel['seed']} | torch "
                f"({kernel['ceiling'].get('cublas_or_cudnn')}, TF32 off) | - | - | - | "
                f"{ceiling:.2f} | 1.00x | - |"
            )
    lines += ["", "'vs ceiling': torch's time / the run's time (1.00x = as fast as torch)."]
    return "\n".join(lines) + "\n"


def winner(work_dir, mod, target):
    """The best schedule of a work_dir's records (``compile_tir``), or None."""
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=work_dir)
    return ms.tir_integration.compile_tir(database, mod, target)


def tuned_run(args, name, seed, label, variant, mod, target, begin, explored=None):
    """One run's record (with its winner under ``_sch``): tuned now, or reused from the root.

    ``explored``: the work_dir of the shared exploration this run continues (its records are
    copied in; the run spends the rest of its budget), or None for a run from scratch.
    """
    budget, options = variant.trials, dict(variant.options)
    if explored is not None:
        budget -= args.shared_exploration
        if variant.strategy == "droplet":  # the copied records are its exploration
            options = {"exploration_trials": args.shared_exploration, **options}
    if args.work_root:
        work_dir = os.path.join(args.work_root, f"{name}-s{seed}-{label.replace('@', '_')}")
        meta_path = os.path.join(work_dir, "bench_run.json")
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                run = json.load(f)
            run["_sch"] = winner(work_dir, mod, target)
            run["reused"] = True
            run["work_dir"] = work_dir
            print(f"{name} s{seed} {label}: reused from {work_dir}", flush=True)
            return run
    # Checked before an unfinished run is removed: a re-measure with --time-limit 0 keeps it.
    if time.perf_counter() - begin > args.time_limit:
        return {"label": label, "skipped": "time limit", "_sch": None}
    if args.work_root:
        if os.path.exists(work_dir):
            shutil.rmtree(work_dir)  # an unfinished run: droplet would resume from it
    else:
        # A fresh work_dir: droplet would resume from an earlier run's records.
        parent = tempfile.mkdtemp(prefix=f"bench_gpu_{name}_{label.replace('@', '_')}_")
        work_dir = os.path.join(parent, "work")
    cost_model = "xgb"
    if explored is not None:
        cores = os.cpu_count() or 1
        cost_model = continue_exploration(explored, work_dir, mod, target, cores, args.warm_model)
    else:
        os.makedirs(work_dir)
    _, wall, curve, profile, reports = tune_one(
        mod,
        target,
        work_dir,
        variant.strategy,
        budget,
        args.trials_per_iter,
        seed,
        options=options,
        cost_model=cost_model,
    )
    sch = winner(work_dir, mod, target)
    run = {
        "label": label,
        "seed": seed,
        "strategy": variant.strategy,
        "options": options,
        "continues": EXPLORATION if explored is not None else None,
        "trials": curve.trials,
        "failed": curve.failed,
        "wall_secs": wall,
        "tuning_best_us": curve.best * 1e6,
        "curve": curve.points,
        "profile": profile,
        "reports": reports,
    }
    if args.work_root:
        with open(os.path.join(work_dir, "bench_run.json"), "w", encoding="utf-8") as f:
            json.dump(run, f)
    print(
        f"{name} s{seed} {label}: {curve.trials} trials, {wall:.0f} s, best "
        f"{curve.best * 1e6:.2f} us during tuning",
        flush=True,
    )
    run["_sch"] = sch
    run["work_dir"] = work_dir
    return run


def kept_runs(args, name, seed, planned, mod, target):
    """Finished runs of this kernel and seed under the work root that are not in the plan."""
    if not args.work_root or not os.path.isdir(args.work_root):
        return []
    prefix = f"{name}-s{seed}-"
    planned_dirs = {prefix + label.replace("@", "_") for label in planned}
    runs = []
    for entry in sorted(os.listdir(args.work_root)):
        work_dir = os.path.join(args.work_root, entry)
        meta_path = os.path.join(work_dir, "bench_run.json")
        if not entry.startswith(prefix) or entry in planned_dirs or not os.path.exists(meta_path):
            continue
        with open(meta_path, encoding="utf-8") as f:
            run = json.load(f)
        run["label"] = entry[len(prefix) :]
        run["_sch"] = winner(work_dir, mod, target)
        run["reused"] = True
        runs.append(run)
    return runs


def report(paths, first=None):
    """Markdown: per comparison of ``first`` with another run (or torch), pooled over the result
    files ``paths`` (:func:`benchlib.pairs.gpu_pairs`): geometric-mean speed-up, pairs it is
    faster in, exact Wilcoxon p, tuning-time ratio, then :func:`benchlib.pairs.evidence_lines`
    (spread, bootstrap interval, power; per kernel), as ``ab_droplet.py --report``.

    ``first`` None: the first run of the first file's plan (``setup.first``: the first of
    ``--variants``), or ``droplet@T`` for files written before it was recorded."""
    from benchlib.pairs import cell, evidence_lines, gpu_pairs
    from scipy.stats import gmean, wilcoxon

    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs.append(json.load(f))
    if first is None:
        first = docs[0].get("setup", {}).get("first", "droplet@T") if docs else "droplet@T"
    pairs = gpu_pairs(docs, first)
    lines = [
        "| comparison | pairs | geomean speed-up of the first | first faster in | Wilcoxon p "
        "| tuning time of the first (ratio) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (speed, secs, _) in pairs.items():
        p = float(wilcoxon(np.log(speed)).pvalue) if len(speed) >= 2 else None
        lines.append(
            f"| {name} | {len(speed)} | {gmean(speed):.3f} | {sum(r > 1 for r in speed)} "
            f"| {cell(p, digits=3)} | {cell(gmean(secs) if secs else None, digits=2)} |"
        )
    lines.append("")
    by_kernel = {name: (s, t, [k for k, _ in keys]) for name, (s, t, keys) in pairs.items()}
    return "\n".join(lines + evidence_lines(by_kernel))


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    os.makedirs(args.out, exist_ok=True)
    if args.smoke:
        from ms_droplet.target import host_target

        target = host_target()
    else:
        target = cuda_target()
    env, setup = environment(target, gpu=not args.smoke), run_settings(args)
    print(json.dumps({"environment": env, "setup": setup}, indent=1), flush=True)
    begin = time.perf_counter()
    stem = "gpu-" + args.kernels.replace(",", "-")
    wanted = set(args.runs.split(",")) if args.runs else None
    results = []
    for name in args.kernels.split(","):
        mod = workload(name)
        for seed in setup["seeds"]:
            runs, explored = [], None
            if args.shared_exploration:
                shared = Variant("evolutionary", args.shared_exploration, {})
                first = tuned_run(args, name, seed, EXPLORATION, shared, mod, target, begin)
                runs.append(first)
                if first.get("skipped"):
                    continue
                explored = first["work_dir"]
            runs += [
                tuned_run(args, name, seed, label, variant, mod, target, begin, explored)
                for label, variant in args.plan.items()
                if wanted is None or label in wanted
            ]
            planned = set(args.plan) | {EXPLORATION}
            runs += kept_runs(args, name, seed, planned, mod, target)
            if args.tune_only:
                continue
            # Inputs from the seed: each seed's winners are checked on their own random data.
            inputs = random_args(mod, np.random.default_rng(seed))
            remeasure(
                runs,
                target,
                args.rounds,
                inputs,
                reference(name, inputs),
                number=20,
                atol_scale=1e-4,
            )
            ceiling = {"skipped": "--smoke"} if args.smoke else torch_ceiling(name, args.rounds)
            results.append({"kernel": name, "seed": seed, "runs": runs, "ceiling": ceiling})
            doc = {"setup": setup, "results": results}
            write_json(os.path.join(args.out, f"{stem}.json"), doc, env, default=str)
    if args.tune_only:
        print("tuned; re-measure with the same --work-root and without --tune-only", flush=True)
        return
    text = markdown(env, setup, results)
    write_text(os.path.join(args.out, f"{stem}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
