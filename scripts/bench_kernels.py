#!/usr/bin/env python3
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
"""Droplet vs evolutionary search on te_workload kernels, measured side by side.

Follows ``shared/docs/benchmark-protocol.md``: every strategy and budget is its own tuning run
in its own ``work_dir`` with the same seeds; tuning wall time is clocked; afterwards the best
schedule of every run is built and timed in one process, interleaved (A B C A B C ...), with
one evaluator setting; every winner is checked against a reference (numpy for matmuls, the
untuned TVM build otherwise) before its time counts.

Runs per kernel and seed: ``droplet@T``, ``evolutionary@T``, ``evolutionary@4T`` (and
``evolutionary@8T`` with ``--with-8x``), and ``postopt@T`` (``tune_tir(post_optimization=True)``,
TVM's own droplet post-pass; skip it with ``--no-postopt``). ``tune_tir(post_optimization=True)``
is ``tune_tir`` followed by ``PostOpt(work_dir, target).run()`` on the finished work_dir, so
``postopt@T`` is measured as exactly that: the ``evolutionary@T`` run, whose best is taken
before the post-pass, then the post-pass on its work_dir, clocked on its own; its tuning time
is the sum. This saves one evolutionary run per kernel and seed and changes nothing in either.

The winners of one kernel and seed are re-measured in a fresh process (see
:func:`benchlib.remeasure.measure_fresh`). ``--remeasure RESULTS.json --keep DIR`` re-measures
an earlier result set that way from its kept work_dirs and rewrites its tables.

Results so far are written to ``<out>/kernels.partial.json`` after every kernel and seed.
With ``--keep DIR`` every run's work_dir is kept as ``DIR/<kernel>_<index>_<seed>_<run>``.

``--ab RESULTS.json --keep DIR`` compares the droplet of the code at hand with an earlier full
result set, fairly: for every kernel and seed of ``RESULTS.json`` it tunes ``droplet@T`` again
(same seed, budget and batch size), then re-measures it side by side, interleaved, with the best
schedules of that set's runs read back from their kept work_dirs (``evolutionary@T`` from its
first T records, before the post-pass's; ``postopt@T`` from all of them). Output:
``<out>/ab.json`` and ``ab.md``.

Examples::

    python scripts/bench_kernels.py --smoke
    python scripts/bench_kernels.py --kernels GMM:1,C2D:1 --seeds 1,2,3 --trials 64
    python scripts/bench_kernels.py --ab out/kernels.json --keep out/runs --out ab_out
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from benchlib.cli import parse_with_smoke
from benchlib.env import describe, environment
from benchlib.kernels import random_args, reference_output, te_kernel
from benchlib.remeasure import measure_fresh, measure_spec_main
from benchlib.results import plot_curves, write_json, write_text
from benchlib.runs import run_settings, tune_one

DEFAULT_KERNELS = "GMM:1,C2D:1,DEP:1,NRM:1,SFM:1,CBR:1"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default=DEFAULT_KERNELS, help="NAME:INDEX list")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--trials", type=int, default=64, help="the budget T")
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--with-8x", action="store_true", help="also run evolutionary@8T")
    parser.add_argument("--no-postopt", action="store_true", help="skip the upstream post-pass")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--out", default="bench_out", help="output folder")
    parser.add_argument("--keep", default=None, help="keep every run's work_dir under DIR")
    parser.add_argument(
        "--ab", default=None, help="an earlier kernels.json: re-tune droplet@T against it"
    )
    parser.add_argument(
        "--remeasure",
        default=None,
        help="an earlier kernels.json: re-measure its runs from the work_dirs under --keep",
    )
    parser.add_argument(
        "--runs",
        default=None,
        help="comma-separated labels to tune (droplet@T, evolutionary@T, evolutionary@4T, "
        "evolutionary@8T); the others are taken from --resume or left out",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="comma-separated earlier kernels.json / kernels.partial.json files: their runs "
        "(work_dirs under --keep) are re-measured instead of tuned again, except those in --runs",
    )
    parser.add_argument("--measure-spec", default=None, help=argparse.SUPPRESS)
    smoke = {"kernels": "GMM:0", "seeds": "1", "trials": 8, "trials_per_iter": 4, "rounds": 3}
    smoke_help = "one kernel, tiny budgets (for CI): ~2 minutes"
    args = parse_with_smoke(parser, argv, smoke_help, **smoke, no_postopt=True)
    labels = {"droplet@T", "evolutionary@T", "evolutionary@4T", "evolutionary@8T"}
    if args.runs is not None:
        wanted = [x.strip() for x in args.runs.split(",") if x.strip()]
        unknown = sorted(set(wanted) - labels)
        if not wanted or unknown:
            parser.error(
                f"--runs: every label must be one of {sorted(labels)}; got {args.runs!r}. "
                "Example: --runs droplet@T"
            )
        args.runs = wanted
    if args.resume and not args.keep:
        parser.error(
            "--resume needs --keep DIR: the folder that holds the earlier runs' work_dirs "
            "(new runs are written there too)"
        )
    return args


def runs_for(trials: int, with_8x: bool, postopt: bool):
    """(label, strategy, budget, post_optimization) of one kernel and seed.

    With ``post_optimization`` the run is ``evolutionary@T``, and ``postopt@T`` is the
    post-pass on its finished work_dir (see the module docstring).
    """
    runs = [
        ("droplet@T", "droplet", trials, False),
        ("evolutionary@T", "evolutionary", trials, postopt),
        ("evolutionary@4T", "evolutionary", 4 * trials, False),
    ]
    if with_8x:
        runs.append(("evolutionary@8T", "evolutionary", 8 * trials, False))
    return runs


def run_post_pass(work_dir, target):
    """TVM's post-pass on a finished work_dir, as ``tune_tir(post_optimization=True)`` runs it.

    Returns (wall seconds, the best schedule afterwards from a fresh read of the work_dir,
    the number of records the post-pass added).
    """
    import glob

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.post_optimization import PostOpt

    def records():
        return sum(
            sum(1 for line in open(path, encoding="utf-8") if line.strip())
            for path in glob.glob(os.path.join(work_dir, "database_tuning_record*.json"))
        )

    before = records()
    start = time.perf_counter()
    PostOpt(work_dir, target).run()
    wall = time.perf_counter() - start
    database = ms.database.JSONDatabase(work_dir=work_dir)
    return wall, database, records() - before


def numpy_ceiling(name, inputs, rounds):
    """numpy's time for the matmul (OpenBLAS), with OPENBLAS_CORETYPE unset in a subprocess."""
    if name != "GMM":
        return None
    import subprocess

    x, y = inputs[0], inputs[1]
    # One 2-D product per batch: numpy's stacked matmul does not always reach BLAS.
    code = (
        "import numpy as np, time, statistics\n"
        f"x = np.random.rand(*{list(x.shape)}).astype('float32')\n"
        f"y = np.random.rand(*{list(y.shape)}).astype('float32')\n"
        "ts = []\n"
        f"for _ in range({rounds}):\n"
        "    t = time.perf_counter(); n = 0\n"
        "    while time.perf_counter() - t < 0.05:\n"
        "        [np.dot(a, b) for a, b in zip(x, y)]; n += 1\n"
        "    ts.append((time.perf_counter() - t) / n)\n"
        "print(statistics.median(ts) * 1e6)\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip()) if out.returncode == 0 else None


def summarize(results):
    """Geometric means of latency ratios (baseline / droplet, > 1: droplet faster) per baseline."""
    from scipy.stats import gmean

    by_key: dict[tuple[str, int], dict[str, dict]] = {}
    for r in results:
        by_key.setdefault((r["kernel"], r["seed"]), {})[r["run"]] = r
    out = {}
    for baseline in ("evolutionary@T", "evolutionary@4T", "evolutionary@8T", "postopt@T"):
        ratios, wall, wins, ties, losses = [], [], 0, 0, 0
        for runs in by_key.values():
            d, b = runs.get("droplet@T"), runs.get(baseline)
            if not d or not b or not d.get("median_us") or not b.get("median_us"):
                continue
            if not d["correct"] or not b["correct"]:
                continue
            ratio = b["median_us"] / d["median_us"]
            ratios.append(ratio)
            wall.append(d["tuning_s"] / b["tuning_s"])
            spread = (d["iqr_us"] + b["iqr_us"]) / 2
            if abs(b["median_us"] - d["median_us"]) <= spread:
                ties += 1
            elif ratio > 1:
                wins += 1
            else:
                losses += 1
        if ratios:
            out[baseline] = {
                "geomean_speedup_of_droplet": float(gmean(ratios)),
                "min_speedup": float(min(ratios)),
                "wins": wins,
                "ties": ties,
                "losses": losses,
                "geomean_tuning_time_ratio": float(gmean(wall)),
                "pairs": len(ratios),
            }
    shares = [
        rep["descent_search_secs"] / r["tuning_s"]
        for r in results
        for rep in r.get("droplet_reports") or []
    ]
    if shares:
        out["_droplet_search_share_of_wall"] = {"max": max(shares), "mean": float(np.mean(shares))}
    return out


def markdown(doc):
    """The Markdown of a result set: every run, the summary, and the tables below."""
    setup, results, summary = doc["setup"], doc["results"], doc["summary"]
    env = describe(doc)
    lines = [
        "# Kernel benchmark: droplet vs evolutionary search",
        "",
        f"{env['date']}, TVM {env['tvm']} (ffi {env['tvm_ffi']}), {env['cpu']}, "
        f"{env['physical_cores']} physical cores, target `{env['target']}`, "
        f"evaluator {setup['evaluator_config']}, T={setup['budget_T']}, "
        f"{setup['trials_per_iter']} trials a batch, seeds {setup['seeds']}, "
        f"{setup['rounds']} interleaved timing rounds.",
        "",
        "| kernel | seed | run | trials used | tuning s | median us | IQR us | GFLOPS | "
        "ratio to droplet | correct |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    droplet = {(r["kernel"], r["seed"]): r for r in results if r["run"] == "droplet@T"}
    for r in results:
        d = droplet.get((r["kernel"], r["seed"]))
        med = r.get("median_us")
        ratio = med / d["median_us"] if med and d and d.get("median_us") else None
        gflops = r["flop"] / (med * 1e-6) / 1e9 if med else None
        lines.append(
            f"| {r['kernel']} | {r['seed']} | {r['run']} | {r['trials_used']} | "
            f"{r['tuning_s']:.1f} | {med:.2f} | {r['iqr_us']:.2f} | {gflops:.1f} | "
            f"{'-' if ratio is None else format(ratio, '.3f')} | {r['correct']} |"
            if med
            else f"| {r['kernel']} | {r['seed']} | {r['run']} | {r['trials_used']} | "
            f"{r['tuning_s']:.1f} | - | - | - | - | {r['correct']} |"
        )
    lines += [
        "",
        "| baseline | geomean speed-up of droplet@T | min | win/tie/loss | "
        "tuning time droplet/baseline |",
        "|---|---|---|---|---|",
    ]
    for baseline, s in summary.items():
        if baseline.startswith("_"):
            continue
        lines.append(
            f"| {baseline} | {s['geomean_speedup_of_droplet']:.3f} | {s['min_speedup']:.3f} | "
            f"{s['wins']}/{s['ties']}/{s['losses']} | {s['geomean_tuning_time_ratio']:.2f} |"
        )
    lines += per_kernel_table(results)
    lines += exploration_table(results)
    lines += droplet_table(results)
    return "\n".join(lines) + "\n"


def droplet_table(results):
    """What droplet did in each run (its DropletReport), and its search's share of wall time."""
    lines = [
        "",
        "## What droplet did (its DropletReport per run)",
        "",
        "| kernel | seed | exploration | descent | re-measured | moves | restarts | "
        "descent start (us) | best measured (us) | descent search (s) | share of tuning | stop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for rep in r.get("droplet_reports") or []:
            lines.append(
                f"| {r['kernel']} | {r['seed']} | {rep['exploration']} | {rep['descent']} | "
                f"{rep['remeasured']} | {rep['moves']} | {rep.get('restarts', 0)} | "
                f"{rep['descent_start_secs'] * 1e6:.1f} | {rep['best_secs'] * 1e6:.1f} | "
                f"{rep['descent_search_secs']:.2f} | "
                f"{rep['descent_search_secs'] / r['tuning_s']:.2%} | {rep['stop_reason']} |"
            )
    return lines


def per_kernel_table(results):
    """Per kernel: droplet@T's geomean speed-up against each baseline, over the seeds."""
    from scipy.stats import gmean

    baselines = ("evolutionary@T", "postopt@T", "evolutionary@4T", "evolutionary@8T")
    groups: dict[str, dict[int, dict[str, dict]]] = {}
    for r in results:
        groups.setdefault(r["kernel"], {}).setdefault(r["seed"], {})[r["run"]] = r
    present = [b for b in baselines if any(b in s for g in groups.values() for s in g.values())]
    lines = [
        "",
        "## Per kernel (geometric mean over seeds of baseline latency / droplet latency)",
        "",
        "| kernel | seeds | " + " | ".join(f"vs {b}" for b in present) + " | droplet tuning "
        "s / evolutionary@4T's | descent gain (start / best) |",
        "|---|---|" + "---|" * len(present) + "---|---|",
    ]
    for kernel, seeds in groups.items():
        cells = []
        for b in present:
            ratios = [
                runs[b]["median_us"] / runs["droplet@T"]["median_us"]
                for runs in seeds.values()
                if "droplet@T" in runs
                and b in runs
                and runs[b].get("median_us")
                and runs["droplet@T"].get("median_us")
            ]
            cells.append(f"{gmean(ratios):.3f}" if ratios else "-")
        times = [
            runs["droplet@T"]["tuning_s"] / runs["evolutionary@4T"]["tuning_s"]
            for runs in seeds.values()
            if "droplet@T" in runs and "evolutionary@4T" in runs
        ]
        gains = [
            rep["descent_start_secs"] / rep["best_secs"]
            for runs in seeds.values()
            for rep in (runs.get("droplet@T", {}).get("droplet_reports") or [])
            if rep.get("best_secs") and math.isfinite(rep.get("descent_start_secs", math.nan))
        ]
        lines.append(
            f"| {kernel} | {len(seeds)} | " + " | ".join(cells) + " | "
            f"{f'{gmean(times):.2f}' if times else '-'} | "
            f"{f'{gmean(gains):.2f}x' if gains else '-'} |"
        )
    return lines


def _best_within(curve, trials):
    """Best-so-far latency (us) of a run's curve after at most ``trials`` trials."""
    return min((best for n, _, best in curve if n <= trials), default=math.inf)


def exploration_table(results):
    """Where droplet stands against evolutionary search, as measured during tuning.

    Per kernel and seed: droplet's descent start and best, evolutionary@T's best after as
    many trials as droplet explored, evolutionary@4T's best after T and after 4T trials.
    Tells a weak start (exploration) from a weak descent.
    """
    from scipy.stats import gmean

    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        groups.setdefault((r["kernel"], r["seed"]), {})[r["run"]] = r
    lines = [
        "",
        "## Exploration or descent? (latencies measured during tuning, us)",
        "",
        "| kernel | seed | droplet explored | droplet start | droplet best | evolutionary@T "
        "after as many trials | evolutionary@4T after T | evolutionary@4T after 4T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    starts, gains, tails = [], [], []
    for (kernel, seed), runs in groups.items():
        reps = (runs.get("droplet@T") or {}).get("droplet_reports") or []
        evo, evo4 = runs.get("evolutionary@T"), runs.get("evolutionary@4T")
        if not reps or not evo or not evo4 or not evo["curve"] or not evo4["curve"]:
            continue
        rep = reps[0]
        start, best = rep["descent_start_secs"] * 1e6, rep["best_secs"] * 1e6
        same = _best_within(evo["curve"], rep["exploration"])
        at_t = _best_within(evo4["curve"], evo["budget"])
        at_4t = _best_within(evo4["curve"], evo4["budget"])
        lines.append(
            f"| {kernel} | {seed} | {rep['exploration']} | {start:.1f} | {best:.1f} | "
            f"{same:.1f} | {at_t:.1f} | {at_4t:.1f} |"
        )
        if kernel.startswith("NRM") or not all(map(math.isfinite, (start, best, same))):
            continue  # NRM: a space of ~60 schedules, everything ties
        starts.append(same / start)
        gains.append(start / best)
        tails.append(at_t / at_4t)
    if starts:
        lines += [
            "",
            f"Geometric means over {len(starts)} kernel-seed pairs (NRM left out): droplet's "
            f"start is {gmean(starts):.3f}x as fast as evolutionary@T's best after as many "
            f"trials; the descent gains {gmean(gains):.2f}x over its start; evolutionary@4T's "
            f"last 3T trials gain {gmean(tails):.2f}x over its best after T.",
        ]
    return lines


def ab_main(args, target, setup, env):
    """Droplet of the code at hand against an earlier result set (see the module docstring)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    with open(args.ab, encoding="utf-8") as f:
        earlier = json.load(f)
    old = earlier["setup"]
    pairs = sorted({(r["kernel"], r["seed"]) for r in earlier["results"]}, key=str)
    order = {k: i for i, k in enumerate(dict.fromkeys(r["kernel"] for r in earlier["results"]))}
    pairs.sort(key=lambda p: (order[p[0]], p[1]))
    scratch = tempfile.mkdtemp(prefix="bench_ab_")
    results = []
    try:
        for kernel, seed in pairs:
            name, index = kernel.split(":")
            mod = te_kernel(kernel)
            print(f"[{kernel} seed {seed}] droplet@T (this code) ...", flush=True)
            work_dir = os.path.join(scratch, f"{name}_{index}_{seed}")
            _, wall, curve, _, reports = tune_one(
                mod, target, work_dir, "droplet", old["budget_T"], old["trials_per_iter"], seed
            )
            entries = [
                {
                    "kernel": kernel,
                    "seed": seed,
                    "run": "droplet@T (this code)",
                    "tuning_s": wall,
                    "trials_used": curve.trials,
                    "droplet_reports": reports,
                    "curve": curve.points,
                    "_spec": {"work_dir": work_dir, "first": None},
                }
            ]
            for label, first, src in [
                ("droplet@T", None, "droplet@T"),
                ("evolutionary@T", old["budget_T"], "evolutionary@T"),
                ("postopt@T", None, "evolutionary@T"),
                ("evolutionary@4T", None, "evolutionary@4T"),
            ]:
                kept = os.path.join(args.keep, f"{name}_{index}_{seed}_{src}")
                if not os.path.isdir(kept):
                    continue
                earlier_run = next(
                    (
                        r
                        for r in earlier["results"]
                        if (r["kernel"], r["seed"], r["run"]) == (kernel, seed, label)
                    ),
                    {},
                )
                entries.append(
                    {
                        "kernel": kernel,
                        "seed": seed,
                        "run": label,
                        "tuning_s": earlier_run.get("tuning_s"),
                        "trials_used": earlier_run.get("trials_used"),
                        "_spec": {"work_dir": kept, "first": first},
                    }
                )
            measured = measure_fresh(kernel, [e.pop("_spec") for e in entries], args.rounds)
            for entry, fields in zip(entries, measured):
                entry.update(fields)
            for e in entries:
                e["flop"] = float(estimate_tir_flops(mod))
                print(f"    {e['run']:22s} {e.get('median_us') or math.nan:9.2f} us", flush=True)
            results.extend(entries)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {}
    from scipy.stats import gmean

    for who in ("droplet@T (this code)", "droplet@T"):
        for baseline in ("evolutionary@T", "evolutionary@4T", "postopt@T", "droplet@T"):
            if baseline == who:
                continue
            ratios = []
            for kernel, seed in pairs:
                runs = {r["run"]: r for r in results if (r["kernel"], r["seed"]) == (kernel, seed)}
                a, b = runs.get(who), runs.get(baseline)
                if a and b and a.get("median_us") and b.get("median_us") and a["correct"]:
                    ratios.append(b["median_us"] / a["median_us"])
            if ratios:
                summary[f"{who} vs {baseline}"] = {
                    "geomean_speedup": float(gmean(ratios)),
                    "min": float(min(ratios)),
                    "faster": sum(r > 1 for r in ratios),
                    "pairs": len(ratios),
                }
    doc = {"setup": setup, "earlier": args.ab, "results": results, "summary": summary}
    write_json(os.path.join(args.out, "ab.json"), doc, env)
    machine = describe({"environment": env})
    lines = [
        "# Droplet of this code against an earlier result set, re-measured side by side",
        "",
        f"{env['date']}, target `{machine['target']}`, earlier set `{args.ab}` "
        f"(T={old['budget_T']}, seeds {old['seeds']}), {args.rounds} interleaved rounds.",
        "",
        "| kernel | seed | run | tuning s | median us | IQR us | correct |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        med = r.get("median_us")
        lines.append(
            f"| {r['kernel']} | {r['seed']} | {r['run']} | "
            f"{r['tuning_s'] if r['tuning_s'] is None else round(r['tuning_s'], 1)} | "
            f"{'-' if not med else f'{med:.2f}'} | "
            f"{'-' if not med else format(r['iqr_us'], '.2f')} | {r['correct']} |"
        )
    lines += [
        "",
        "| comparison | geomean speed-up | min | faster in | pairs |",
        "|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        lines.append(
            f"| {key} | {s['geomean_speedup']:.3f} | {s['min']:.3f} | {s['faster']} | "
            f"{s['pairs']} |"
        )
    lines += droplet_table([r for r in results if r.get("droplet_reports")])
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "ab.md"), text)
    print(text)
    return 1 if any(r["correct"] is False for r in results) else 0


def remeasure_main(args, env):
    """Re-measure every run of an earlier result set from its kept work_dirs (fresh processes)."""
    with open(args.remeasure, encoding="utf-8") as f:
        doc = json.load(f)
    results = doc["results"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["kernel"], r["seed"]), []).append(r)
    for (kernel, seed), entries in groups.items():
        name, index = kernel.split(":")
        specs = []
        for e in entries:
            src = "evolutionary@T" if e["run"] == "postopt@T" else e["run"]
            first = e["trials_used"] if e["run"].startswith("evolutionary") else None
            specs.append(
                {
                    "work_dir": os.path.join(args.keep, f"{name}_{index}_{seed}_{src}"),
                    "first": first,
                }
            )
        print(f"[{kernel} seed {seed}] re-measuring {len(entries)} runs ...", flush=True)
        for entry, fields in zip(entries, measure_fresh(kernel, specs, args.rounds)):
            entry["in_tuning_process_us"] = entry.get("median_us")
            entry.update(fields)
            print(
                f"    {entry['run']:16s} {entry.get('median_us') or math.nan:9.2f} us "
                f"(in the tuning process: {entry['in_tuning_process_us'] or math.nan:.2f})",
                flush=True,
            )
    ceilings = doc.setdefault("numpy_ceiling_us", {})
    for kernel in dict.fromkeys(r["kernel"] for r in results):
        name, index = kernel.split(":")
        if ceilings.get(kernel) is None and name == "GMM":
            mod = te_kernel(kernel)
            inputs = random_args(mod["main"], np.random.default_rng(0))
            ceilings[kernel] = numpy_ceiling(name, inputs, args.rounds)
    doc["setup"]["remeasured"] = {
        "date": env["date"],
        "how": "fresh process per kernel and seed, from the kept work_dirs",
        "rounds": args.rounds,
        "environment": env,
    }
    if "environment" in doc:  # the tuning's record; the file's becomes this process's
        doc["setup"]["tuned_in"] = doc["environment"]
    doc["summary"] = summarize(results)
    return doc


MEASURED_FIELDS = ("correct", "median_us", "iqr_us", "remeasured_us", "in_tuning_process_us")


def load_resume(paths):
    """{(kernel, seed, run): entry} of earlier result files; later files win."""
    earlier = {}
    for path in paths.split(",") if paths else []:
        with open(path, encoding="utf-8") as f:
            for r in json.load(f)["results"]:
                earlier[(r["kernel"], r["seed"], r["run"])] = dict(r, reused_from=path)
    return earlier


def reuse_entries(earlier, kernel, seed, label, work_dir):
    """Entries of an earlier run (and its post-pass) to re-measure from its kept work_dir.

    Empty when the earlier results lack the run or its work_dir is gone.
    """
    entry = earlier.get((kernel, seed, label))
    if entry is None or not os.path.isdir(work_dir):
        return []
    out = []
    runs = [label] + (["postopt@T"] if label == "evolutionary@T" else [])
    for run in runs:
        e = earlier.get((kernel, seed, run))
        if e is None:
            continue
        e = {k: v for k, v in e.items() if k not in MEASURED_FIELDS}
        # Evolutionary runs are read from their own first records: the post-pass appends.
        first = e["trials_used"] if run.startswith("evolutionary") else None
        e["_spec"] = {"work_dir": work_dir, "first": first}
        print(f"[{kernel} seed {seed}] {run}: re-measured from {e['reused_from']}", flush=True)
        out.append(e)
    return out


def write_outputs(doc, stem, env):
    """JSON (with the environment record ``env``), Markdown and PNG of a result set."""
    doc = write_json(stem + ".json", doc, env)
    text = markdown(doc)
    for kernel, ceiling in (doc.get("numpy_ceiling_us") or {}).items():
        if ceiling:
            text += f"\nnumpy (OpenBLAS, OPENBLAS_CORETYPE unset) {kernel}: {ceiling:.2f} us\n"
    write_text(stem + ".md", text)
    plot_curves(doc["results"], stem + ".png")
    print(text)


def main(argv=None):
    args = parse_args(argv)
    if args.measure_spec:
        return measure_spec_main(args.measure_spec)
    import logging

    import tvm.s_tir.tensor_intrin  # noqa: F401 - pay this one-time ~12 s import before any clock
    from tvm.s_tir.analysis import estimate_tir_flops

    from ms_droplet.target import host_target

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = host_target()
    env = environment(target)
    setup = run_settings(args)
    os.makedirs(args.out, exist_ok=True)
    if (args.ab or args.remeasure) and not args.keep:
        raise SystemExit("--ab and --remeasure need --keep: the folder of the earlier work_dirs")
    if args.ab:
        return ab_main(args, target, setup, env)
    if args.remeasure:
        doc = remeasure_main(args, env)
        write_outputs(doc, os.path.join(args.out, "kernels"), env)
        return 1 if any(r["correct"] is False for r in doc["results"]) else 0
    scratch = args.keep or tempfile.mkdtemp(prefix="bench_kernels_")
    earlier = load_resume(args.resume)
    if args.resume:
        setup["resumed_from"] = args.resume.split(",")
        setup["tuned_here"] = args.runs or "all runs not found in --resume"
    results = []
    ceilings = {}
    try:
        for kernel in args.kernels.split(","):
            name, index = kernel.split(":")
            mod = te_kernel(kernel)
            flop = float(estimate_tir_flops(mod))
            inputs = random_args(mod["main"], np.random.default_rng(0))
            expected, reference = reference_output(name, mod, target, inputs)
            for seed in setup["seeds"]:
                entries = []
                for label, strategy, budget, postopt in runs_for(
                    args.trials, args.with_8x, not args.no_postopt
                ):
                    work_dir = os.path.join(scratch, f"{name}_{index}_{seed}_{label}")
                    if args.runs is None or label not in args.runs:
                        reused = reuse_entries(earlier, kernel, seed, label, work_dir)
                        if reused or args.runs is not None:
                            entries.extend(reused)
                            continue
                    if os.path.exists(work_dir):
                        raise SystemExit(
                            f"{work_dir} exists: tuning {label} there would mix its records "
                            "with an earlier run's. Move it away, or pass the earlier results "
                            "file with --resume to re-measure that run instead."
                        )
                    print(f"[{kernel} seed {seed}] {label} ({budget} trials) ...", flush=True)
                    _, wall, curve, profile, reports = tune_one(
                        mod, target, work_dir, strategy, budget, args.trials_per_iter, seed
                    )
                    entry = {
                        "kernel": kernel,
                        "seed": seed,
                        "run": label,
                        "budget": budget,
                        "trials_used": curve.trials,
                        "failed_trials": curve.failed,
                        "tuning_s": wall,
                        "profile_s": profile,
                        "droplet_reports": reports,
                        "flop": flop,
                        "reference": reference,
                        "curve": curve.points,
                        # Its own records only: the post-pass appends to this work_dir.
                        "_spec": {"work_dir": work_dir, "first": curve.trials},
                    }
                    entries.append(entry)
                    if postopt:
                        print(f"[{kernel} seed {seed}] postopt@T (post-pass) ...", flush=True)
                        post_wall, _, added = run_post_pass(work_dir, target)
                        entries.append(
                            dict(
                                entry,
                                run="postopt@T",
                                tuning_s=wall + post_wall,
                                post_pass_s=post_wall,
                                post_pass_records=added,
                                curve=[],
                                _spec={"work_dir": work_dir, "first": None},
                            )
                        )
                if not entries:
                    continue
                measured = measure_fresh(kernel, [e.pop("_spec") for e in entries], args.rounds)
                for entry, fields in zip(entries, measured):
                    entry.update(fields)
                results.extend(entries)
                partial = {"setup": setup, "results": results}
                write_json(os.path.join(args.out, "kernels.partial.json"), partial, env)
                for e in entries:
                    print(
                        f"    {e['run']:16s} {e.get('median_us') or float('nan'):9.2f} us  "
                        f"tuning {e['tuning_s']:7.1f} s  correct={e['correct']}",
                        flush=True,
                    )
            ceilings[kernel] = numpy_ceiling(name, inputs, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize(results)
    doc = {"setup": setup, "numpy_ceiling_us": ceilings, "results": results, "summary": summary}
    write_outputs(doc, os.path.join(args.out, "smoke" if args.smoke else "kernels"), env)
    bad = [r for r in results if r["correct"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
