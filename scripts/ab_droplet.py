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
"""A/B of DropletSearch option sets on te_workload kernels, for algorithm work.

Every (kernel, seed, variant) is its own droplet@T tuning run in its own process, several at
once on disjoint CPU cores (``--jobs`` x ``--cores``: on a many-core machine this makes a
variant comparison take minutes). Once a kernel and seed's variants are tuned, their winners
are re-measured side by side, interleaved, in one fresh process on its own cores
(``bench_kernels.py --measure-spec``), while other jobs go on. This is a development tool: its
jobs share memory bandwidth and caches, so its tuning times are not the benchmark's, and its
latencies compare the variants of one kernel and seed (timed together) rather than machines.

Example (the default variants: the default options, then cost-model ranking of neighbors)::

    python scripts/ab_droplet.py --kernels GMM:1,C2D:1,DEP:1 --seeds 1,2,3 --jobs 6

With ``--shared-exploration N`` the variants share their exploration: per kernel and seed one
evolutionary run of N trials is tuned first, and every variant descends from a copy of its
database for the remaining ``--trials - N`` trials (``DropletSearch`` counts the known records
toward its exploration). The variants then differ in their descent alone, which removes the
largest source of variance between droplet runs (what the exploration happened to find) from a
comparison of descent options; the exploration's own best is timed beside them as
``exploration``. The cost model starts untrained in each descent process, unless
``--warm-model`` first trains it on the copied records (as a run that had explored them would
have). A variant may name ``"strategy": "evolutionary"`` among its options: it then spends
the remaining trials on MetaSchedule's evolutionary search instead (with ``--warm-model``: the
paired comparison of descent against more exploration). A variant may also name
``"trials"``: its own budget instead of ``--trials`` (for instance evolutionary search at four
times droplet's budget, the benchmark's comparison, run as many jobs at once). The longest
runs start first.

``--work-root DIR`` keeps every run under DIR with fixed names; a second invocation with the
same arguments skips the runs and timings already done (a killed run is tuned again from
scratch), so an A/B can span several time-limited calls. The work root keeps the environment
record of the machine that tunes (``environment.json``, written by its first invocation, is
every result file's ``environment``; each file's ``invocation`` holds its own start date,
command and commit).
``--collect`` with the same arguments starts nothing: it writes the result file from the runs
and timings done so far (for an A/B whose machine was taken back before the end), with that
record; the pairs not done are named.

The winners' re-measurement runs beside the other jobs by default, and some schedules are
slowed by other work on the machine far more than others (``docs/benchmarks/fidelity.md``,
"Schedules that the machine's episodes slow"). ``--quiet-timing`` holds every timing until
all runs are tuned and then times one kernel and seed at a time with nothing else running.
``--retime`` (with ``--work-root``) times the winners of the runs there again, after moving
the earlier timings aside as ``time_*.json.out.N``: with ``--quiet-timing``, a quiet timing
of an A/B that was timed beside its jobs.

Results: ``<out>/ab_droplet.json`` (per run: the re-measured winner, the tuning time, the
best-so-far curve as ``[trials, seconds, best us]`` per batch, and droplet's report) and a table
on stdout; ``--smoke`` runs one tiny pair (CI).
``--report FILES`` prints the tables of earlier result files (pooled when several), with what
the pairs can say: the spread of their log ratios, a bootstrap interval, the effect they see
at 80 % power, the pairs 1.05x needs, and a table per kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib.cli import parse_with_smoke
from benchlib.env import environment
from benchlib.kernels import te_kernel
from benchlib.remeasure import fresh_command
from benchlib.results import write_json
from benchlib.runs import continue_exploration, parse_variants, run_settings, tune_one

DEFAULT_VARIANTS = '{"default": {}, "ranked": {"rank_neighbors": true}}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default="GMM:1,C2D:1,DEP:1")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="JSON: name -> DropletSearch options"
    )
    parser.add_argument("--jobs", type=int, default=1, help="tuning runs at once")
    parser.add_argument("--cores", type=int, default=2, help="cores per run (and per timing)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="ab_out")
    parser.add_argument(
        "--shared-exploration",
        type=int,
        default=0,
        metavar="N",
        help="explore N trials once per kernel and seed; every variant descends from a copy",
    )
    parser.add_argument(
        "--warm-model",
        action="store_true",
        help="with --shared-exploration: train each run's cost model on the copied records first",
    )
    parser.add_argument(
        "--work-root",
        default=None,
        help="keep runs here under fixed names and skip those already done (default: a new "
        "folder under --out)",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="with --work-root: start nothing, write the results of the runs done there",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        default=None,
        help="print Markdown tables of earlier ab_droplet.json files and exit",
    )
    parser.add_argument(
        "--quiet-timing",
        action="store_true",
        help="time the winners only after every run is tuned, one kernel and seed at a time, "
        "with nothing else running (default: each as soon as its runs are tuned, beside "
        "the other jobs)",
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="with --work-root: time the winners of the runs done there again (the earlier "
        "timings are kept as time_*.json.out.N); runs not done yet are tuned first",
    )
    parser.add_argument("--tune-one", default=None, help=argparse.SUPPRESS)
    smoke = {"kernels": "GMM:0", "seeds": "1", "trials": 24, "trials_per_iter": 8, "rounds": 3}
    smoke_help = "GMM:0, one seed, 24 trials, one job (for CI)"
    args = parse_with_smoke(parser, argv, smoke_help, **smoke, jobs=1, cores=1)
    if args.collect and not args.work_root:
        parser.error("--collect needs --work-root: the folder of the runs to collect")
    if args.retime and (args.collect or not args.work_root):
        parser.error("--retime needs --work-root (the runs to time again) and no --collect")
    if not 0 <= args.shared_exploration < args.trials:
        parser.error(
            f"--shared-exploration must be in [0, --trials), got {args.shared_exploration} "
            f"with --trials {args.trials}; the descent needs trials left after the exploration"
        )
    try:
        parse_variants(args.variants, args.trials, args.shared_exploration)
    except ValueError as err:
        parser.error(str(err))
    args.variants = json.loads(args.variants)
    return args


def tune_one_main(path):
    """Child: one droplet run; writes ``<path>.out``."""
    import logging

    import tvm.s_tir.tensor_intrin  # noqa: F401

    from ms_droplet.target import host_target

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    mod = te_kernel(spec["kernel"])
    target = host_target(num_cores=spec["cores"])
    cost_model = "xgb"
    if spec.get("copy_from"):
        cost_model = continue_exploration(
            spec["copy_from"], spec["work_dir"], mod, target, spec["cores"], spec.get("warm_model")
        )
    _, wall, curve, _, reports = tune_one(
        mod,
        target,
        spec["work_dir"],
        spec.get("strategy", "droplet"),
        spec["trials"],
        spec["per_iter"],
        spec["seed"],
        options=spec["options"],
        workers=spec["cores"],
        cost_model=cost_model,
    )
    with open(path + ".out", "w", encoding="utf-8") as f:
        points = [
            [trials, secs, best if math.isfinite(best) else None]
            for trials, secs, best in curve.points
        ]
        done = {"tuning_s": wall, "trials_used": curve.trials, "curve": points, "reports": reports}
        json.dump(done, f)


def _wilcoxon_p(ratios):
    """Two-sided Wilcoxon signed-rank p-value of ``log(ratios)`` (None under 6 pairs)."""
    if len(ratios) < 6:
        return None
    import numpy as np
    from scipy.stats import wilcoxon

    return float(wilcoxon(np.log(ratios)).pvalue)


def report(paths):
    """Markdown tables of ``ab_droplet.json`` files: every run, then the paired comparisons
    (and, for several files, the comparisons pooled over all their pairs)."""
    from benchlib.pairs import cell, evidence_lines

    lines, pooled, datas = [], {}, []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        datas.append(data)
        lines += [
            f"## `{os.path.basename(path)}`",
            "",
            "| kernel | seed | variant | re-measured us | IQR us | descent start us "
            "| best in tuning us | moves | re-measurements | restarts | tuning s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]

        for r in data["results"]:
            rep = (r.get("reports") or [{}])[0]
            lines.append(
                f"| {r['kernel']} | {r['seed']} | {r['variant']} | {cell(r.get('median_us'))} "
                f"| {cell(r.get('iqr_us'))} | {cell(rep.get('descent_start_secs'), 1e6)} "
                f"| {cell(rep.get('best_secs'), 1e6)} | {rep.get('moves', '')} "
                f"| {rep.get('remeasured', '')} | {rep.get('restarts', '')} "
                f"| {cell(r.get('tuning_s'), digits=0)} |"
            )
        lines += [
            "",
            "| comparison | geomean speed-up of the first | first faster in | pairs | Wilcoxon p "
            "| tuning time of the first (ratio) |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in data["summary"].items():
            p = entry.get("wilcoxon_p", _wilcoxon_p(entry["ratios"]))
            lines.append(
                f"| {name} | {entry['geomean_speedup']:.3f} | {entry['faster_in']} "
                f"| {entry['pairs']} | {cell(p, digits=3)} "
                f"| {cell(entry.get('tuning_time_ratio'), digits=2)} |"
            )
        lines.append("")
        file_pairs = _pairs(data)
        lines += evidence_lines(file_pairs)
        for name, (speed, secs, kernels) in file_pairs.items():
            pooled.setdefault(name, ([], [], []))
            pooled[name][0].extend(speed)
            pooled[name][1].extend(secs)
            pooled[name][2].extend(kernels)
    lines += case_lines(datas)
    if len(paths) > 1 and pooled:
        from scipy.stats import gmean

        lines += [
            f"## Pooled over {len(paths)} files",
            "",
            "| comparison | geomean speed-up of the first | first faster in | pairs | Wilcoxon p "
            "| tuning time of the first (ratio) |",
            "|---|---|---|---|---|---|",
        ]
        for name, (speed, secs, _) in pooled.items():
            lines.append(
                f"| {name} | {gmean(speed):.3f} | {sum(r > 1 for r in speed)} | {len(speed)} "
                f"| {cell(_wilcoxon_p(speed), digits=3)} "
                f"| {cell(gmean(secs) if secs else None, digits=2)} |"
            )
        lines.append("")
        lines += evidence_lines(pooled)
    return "\n".join(lines)


def case_lines(datas):
    """Markdown: one row per kernel and seed over all result files ``datas`` (a later file's
    case replaces an earlier one's): each variant's re-measured time, the first variant's
    speed-up over each other, and what the first variant's descent did (its start as recorded
    in tuning, moves, restarts, duplicates, its own search seconds), with every run's tuning
    seconds."""
    from benchlib.pairs import cell

    cases, names = {}, []
    for data in datas:
        for name in data["args"]["variants"]:
            if name not in names:
                names.append(name)
        for r in data["results"]:
            cases.setdefault((r["kernel"], r["seed"]), {})[r["variant"]] = r
    if not cases or not names:
        return []
    first, others = names[0], names[1:]
    lines = [
        "## Per kernel and seed",
        "",
        "| kernel | seed | "
        + " | ".join(f"{n} us" for n in names)
        + "".join(f" | vs {n}" for n in others)
        + " | descent start us | moves | restarts | duplicates | descent search s | tuning s ("
        + " / ".join(names)
        + ") |",
        "|---" * (2 + len(names) + len(others) + 6) + "|",
    ]
    for (kernel, seed), by in sorted(cases.items()):
        mine = by.get(first, {})
        rep = (mine.get("reports") or [{}])[0]
        ratios = []
        for other in others:
            a, b = mine.get("median_us"), by.get(other, {}).get("median_us")
            ratios.append(cell(b / a if a and b else None, digits=3))
        tuning = " / ".join(cell(by.get(n, {}).get("tuning_s"), digits=0) for n in names)
        lines.append(
            f"| {kernel} | {seed} | "
            + " | ".join(cell(by.get(n, {}).get("median_us")) for n in names)
            + "".join(f" | {r}" for r in ratios)
            + f" | {cell(rep.get('descent_start_secs'), 1e6)} | {rep.get('moves', '')} "
            f"| {rep.get('restarts', '')} | {rep.get('duplicates', '')} "
            f"| {cell(rep.get('descent_search_secs'))} | {tuning} |"
        )
    return lines + [""]


def _pairs(data):
    """Per comparison of a result file (``args`` and ``results``): speed-ups of its first
    variant over the other, and its tuning-time ratios, pair by pair."""
    names = list(data["args"]["variants"])
    others = names[1:] + (["exploration"] if data["args"].get("shared_exploration") else [])
    cases = {}
    for r in data["results"]:
        cases.setdefault((r["kernel"], r["seed"]), {})[r["variant"]] = r
    pairs = {}
    for other in others:
        speed, secs, kernels = [], [], []
        for (kernel, _), by in cases.items():
            a, b = by.get(names[0], {}), by.get(other, {})
            if a.get("median_us") and b.get("median_us"):
                speed.append(b["median_us"] / a["median_us"])
                kernels.append(kernel)
                if other != "exploration" and a.get("tuning_s") and b.get("tuning_s"):
                    secs.append(a["tuning_s"] / b["tuning_s"])
        pairs[f"{names[0]} vs {other}"] = (speed, secs, kernels)
    return pairs


def main(argv=None):  # noqa: C901 - one scheduling loop, kept in one place
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.tune_one:
        return tune_one_main(args.tune_one)
    os.makedirs(args.out, exist_ok=True)
    if args.work_root:
        runs_dir = os.path.abspath(args.work_root)
        os.makedirs(runs_dir, exist_ok=True)
    else:
        runs_dir = tempfile.mkdtemp(prefix="runs_", dir=args.out)
    from ms_droplet.target import host_target

    # This invocation's start, command and commit: the work root's record below is its first
    # invocation's, which later ones (more seeds into the same root) keep.
    invoked = environment(host_target(num_cores=args.cores))
    invocation = {k: invoked[k] for k in ("date", "command", "commit")}
    env_path = os.path.join(runs_dir, "environment.json")
    if os.path.exists(env_path):  # the machine that tuned (a first invocation wrote it)
        with open(env_path, encoding="utf-8") as f:
            tuned_on = json.load(f)
    elif args.collect:
        sys.exit(f"--collect: {env_path} is missing: no invocation tuned in --work-root")
    else:
        tuned_on = invoked
        with open(env_path, "w", encoding="utf-8") as f:
            json.dump(tuned_on, f, indent=1)
    if args.retime:
        # Nothing measured is lost: the earlier timings move aside, numbered.
        for name in sorted(os.listdir(runs_dir)):
            if name.startswith("time_") and name.endswith(".json.out"):
                old_out = os.path.join(runs_dir, name)
                n = 1
                while os.path.exists(f"{old_out}.{n}"):
                    n += 1
                os.replace(old_out, f"{old_out}.{n}")
    seeds = [int(s) for s in args.seeds.split(",")]
    kernels = args.kernels.split(",")
    names = list(args.variants)
    shared = args.shared_exploration
    # Jobs: (with --shared-exploration) an exploration run per (kernel, seed); a tuning run per
    # (kernel, seed, variant); a timing job per (kernel, seed), which starts once its variants
    # are tuned. Each job gets its own cores.
    if shared:
        # Seed-major: a run cut short leaves whole seeds of every kernel, not whole kernels.
        todo = [("explore", (kernel, seed)) for seed in seeds for kernel in kernels]
    else:
        # Seed-major, as above.
        todo = [("tune", (k, s, v)) for s in seeds for k in kernels for v in names]
        # The longest runs first: a 4x-budget run started last would end alone, cores idle.
        todo.sort(key=lambda job: -args.variants[job[1][2]].get("trials", args.trials))
    free = [set(range(i * args.cores, (i + 1) * args.cores)) for i in range(args.jobs)]
    running, runs, timed, explored = [], {}, {}, {}
    held = []  # with --quiet-timing: timings waiting until nothing else runs
    start = time.perf_counter()
    # TVM pins its worker threads to the first cores of the machine unless told not to: jobs
    # would then share cores 0..n-1 whatever their affinity (timings 10-50x off).
    env = dict(os.environ, TVM_NUM_THREADS=str(args.cores), TVM_BIND_THREADS="0")

    def tag_of(kernel, seed):
        return f"{kernel.replace(':', '_')}_{seed}"

    def spec_of(kind, key):
        if kind == "explore":
            kernel, seed = key
            return os.path.join(runs_dir, f"explore_{tag_of(kernel, seed)}.json"), {
                "kernel": kernel,
                "seed": seed,
                "strategy": "evolutionary",
                "trials": shared,
                "per_iter": args.trials_per_iter,
                "options": None,
                "cores": args.cores,
                "work_dir": os.path.join(runs_dir, f"explore_{tag_of(kernel, seed)}"),
            }
        if kind == "tune":
            kernel, seed, variant = key
            tag = f"{tag_of(kernel, seed)}_v{names.index(variant)}"
            options = dict(args.variants[variant])
            strategy = options.pop("strategy", "droplet")
            trials = options.pop("trials", args.trials)
            if shared and strategy == "droplet":
                options = {"exploration_trials": shared, **options}
            return os.path.join(runs_dir, tag + ".json"), {
                "kernel": kernel,
                "seed": seed,
                "strategy": strategy,
                "warm_model": args.warm_model,
                "trials": trials - shared,
                "per_iter": args.trials_per_iter,
                "options": options,
                "cores": args.cores,
                "work_dir": os.path.join(runs_dir, tag),
                "copy_from": explored[(kernel, seed)]["work_dir"] if shared else None,
            }
        kernel, seed = key
        dirs = [runs[(kernel, seed, v)]["spec"]["work_dir"] for v in names]
        if shared:
            dirs.append(explored[(kernel, seed)]["work_dir"])
        return os.path.join(runs_dir, f"time_{tag_of(kernel, seed)}.json"), {
            "kernel": kernel,
            "rounds": args.rounds,
            "runs": [{"work_dir": d, "first": None} for d in dirs],
        }

    def finished(kind, key, spec, done):
        if kind == "explore":
            explored[key] = {**spec, **(done or {}), "ok": done is not None}
            if done is not None:
                todo[0:0] = [("tune", (*key, v)) for v in names]
        elif kind == "tune":
            runs[key] = {"spec": spec, **(done or {}), "over": True}
            kernel, seed, _ = key
            if all(runs.get((kernel, seed, v), {}).get("over") for v in names):
                if args.quiet_timing:
                    held.append(("time", (kernel, seed)))
                else:
                    todo.insert(0, ("time", (kernel, seed)))
        else:
            timed[key] = done

    while todo or running or held:
        if held and not todo and not running:
            todo.append(held.pop(0))  # one at a time, the machine otherwise idle
        while todo and free:
            kind, key = todo.pop(0)
            path, spec = spec_of(kind, key)
            if os.path.exists(path + ".out"):  # done by an earlier invocation
                with open(path + ".out", encoding="utf-8") as f:
                    finished(kind, key, spec, json.load(f))
                print(f"{time.perf_counter() - start:7.1f} s  {kind} {key} done before", flush=True)
                continue
            if args.collect:  # not done: left out of the results
                finished(kind, key, spec, None)
                print(f"{time.perf_counter() - start:7.1f} s  {kind} {key} not done", flush=True)
                continue
            if kind == "time":
                command = fresh_command(path)
            else:
                command = [sys.executable, os.path.abspath(__file__), "--tune-one", path]
                if os.path.exists(spec["work_dir"]):  # left by a killed invocation
                    shutil.rmtree(spec["work_dir"])
            with open(path, "w", encoding="utf-8") as f:
                json.dump(spec, f)
            cores = free.pop(0)
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(log := open(path + ".log", "w", encoding="utf-8")),  # noqa: SIM115
                preexec_fn=lambda c=cores: os.sched_setaffinity(0, c),
            )
            running.append((proc, cores, kind, key, path, spec, log))
        time.sleep(1)
        for item in list(running):
            proc, cores, kind, key, path, spec, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            free.append(cores)
            done = None
            if proc.returncode == 0 and os.path.exists(path + ".out"):
                with open(path + ".out", encoding="utf-8") as f:
                    done = json.load(f)
            print(
                f"{time.perf_counter() - start:7.1f} s  {kind} {key} rc={proc.returncode}",
                flush=True,
            )
            finished(kind, key, spec, done)
    results = []
    for kernel in kernels:
        for seed in seeds:
            measured = timed.get((kernel, seed)) or [{} for _ in range(len(names) + bool(shared))]
            for variant, fields in zip(names, measured):
                key = (kernel, seed, variant)
                entry = {"kernel": kernel, "seed": seed, "variant": variant, **fields}
                for field in ("tuning_s", "trials_used", "curve", "reports"):
                    entry[field] = runs.get(key, {}).get(field)
                results.append(entry)
                rep = (entry["reports"] or [{}])[0]
                print(
                    f"{kernel} s{seed} {variant:14s} {entry.get('median_us') or math.nan:9.2f} us"
                    f"  start {1e6 * rep.get('descent_start_secs', math.nan):9.2f} us"
                    f"  moves {rep.get('moves')}  remeasured {rep.get('remeasured')}"
                    f"  restarts {rep.get('restarts')}  rank {rep.get('rank_secs', 0):.2f} s"
                    f"  tuning {entry['tuning_s'] or math.nan:.1f} s"
                    f"  correct {entry.get('correct')}",
                    flush=True,
                )
            if shared:
                fields = measured[len(names)] if len(measured) > len(names) else {}
                start_entry = {"kernel": kernel, "seed": seed, "variant": "exploration", **fields}
                start_entry["tuning_s"] = explored.get((kernel, seed), {}).get("tuning_s")
                start_entry["trials_used"] = explored.get((kernel, seed), {}).get("trials_used")
                results.append(start_entry)
                print(
                    f"{kernel} s{seed} {'exploration':14s} "
                    f"{start_entry.get('median_us') or math.nan:9.2f} us"
                    f"  (the shared start, {shared} trials)",
                    flush=True,
                )
    from scipy.stats import gmean

    summary = {}
    for name, (ratios, times, _) in _pairs({"args": vars(args), "results": results}).items():
        if ratios:
            summary[name] = {
                "geomean_speedup": float(gmean(ratios)),
                "tuning_time_ratio": float(gmean(times)) if times else None,
                "faster_in": sum(r > 1 for r in ratios),
                "pairs": len(ratios),
                "wilcoxon_p": _wilcoxon_p(ratios),
                "ratios": ratios,
            }
    print(json.dumps(summary, indent=1))
    doc = {
        "args": vars(args),
        "setup": run_settings(args),
        "invocation": invocation,
        "results": results,
        "summary": summary,
    }
    if args.collect:  # the record is the tuning machine's; say when and where it was collected
        here = environment(host_target(num_cores=args.cores))
        doc["collected"] = {k: here[k] for k in ("date", "command", "commit", "cpu")}
    write_json(os.path.join(args.out, "ab_droplet.json"), doc, tuned_on)
    bad = [r for r in results if not r.get("median_us") or r.get("correct") is not True]
    if args.work_root:
        print(f"runs kept in {runs_dir}")
    for r in bad:
        print(f"FAILED: {r['kernel']} seed {r['seed']} {r['variant']}: not tuned, timed or correct")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
