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
"""Does the time the tuner optimises predict the time a deployed kernel runs in?

For each finished run (a ``work_dir``), takes its ``--top`` fastest distinct schedules and
``--sample`` others at random and times them in the modes of ``--plan``, each in a fresh
process, one after the other (see :mod:`benchlib.fidelity`): ``runner`` (as tuning times them:
the tuning builder, the package's default runner, batches of 16) and ``fresh`` (as deployed:
``tvm.compile``, one process, interleaved rounds of ``time_evaluator``). The default plan,
``runner,fresh,runner,fresh``, gives the tuning numbers' rank correlation with a fresh
process against the fresh process's own with itself (the target:
``Spearman(tuning, fresh) >= 0.9 x Spearman(fresh, fresh again)`` over the top 20), the ratio
tuning / fresh per schedule, the share within +-10 % and whether the top pick changes, for
the database's own numbers (``recorded``) and the runner timing them again now.

``--ablate`` adds modes with one setting changed (see ``--list-modes``), each compared with
the first ``fresh``. ``--tune KERNELS`` makes the runs first (``--strategy``, ``--trials``).

Examples::

    python scripts/fidelity.py --tune GMM:1,C2D:1 --trials 64 --out /tmp/fid
    python scripts/fidelity.py /path/to/work_dir --ablate runner-flush,fresh-builder --out /tmp/f2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchlib import fidelity
from benchlib.cli import parse_with_smoke
from benchlib.env import describe, environment
from benchlib.records import read_record_lines
from benchlib.results import write_json, write_text
from benchlib.runs import evaluator_settings

MODES = {
    "runner": (
        {"kind": "runner"},
        "as tuning times it: FastBuilder, the package's default runner and evaluator",
    ),
    "runner-local": (
        {"kind": "runner", "runner": "local"},
        "as tuning timed it before: MetaSchedule's LocalRunner (timings back to back)",
    ),
    "runner-rpc": (
        {"kind": "runner", "runner": "rpc"},
        "runner through an RPC tracker with one server on this machine: ms_droplet.rpc.rpc_runner "
        "(InterleavedRPCRunner: rounds on the server)",
    ),
    "runner-rpc-ms": (
        {"kind": "runner", "runner": "rpc-ms"},
        "runner-rpc with MetaSchedule's RPCRunner (a session per candidate, timings back to back)",
    ),
    "fresh": (
        {"kind": "fresh"},
        "as deployed: tvm.compile, one process, interleaved rounds, new arguments each round",
    ),
    "runner-flush": (
        {"kind": "runner", "evaluator": {"enable_cpu_cache_flush": True}},
        "runner with the CPU cache flushed before each repeat",
    ),
    "runner-ms-default": (
        {"kind": "runner", "evaluator": {"number": 3, "repeat": 1, "min_repeat_ms": 100}},
        "runner with MetaSchedule's default EvaluatorConfig (one sample of >= 100 ms)",
    ),
    "runner-more": (
        {"kind": "runner", "evaluator": {"number": 3, "repeat": 10, "min_repeat_ms": 20}},
        "runner with 10 samples instead of 3",
    ),
    "runner-short": (
        {"kind": "runner", "evaluator": {"number": 1, "repeat": 3, "min_repeat_ms": 0}},
        "runner timing single calls (no min_repeat_ms): the evaluator's own overhead",
    ),
    "runner-load": (
        {"kind": "runner", "load": 1},
        "runner with one busy process beside it (other work on the machine)",
    ),
    "runner-threads1": (
        {"kind": "runner", "env": {"TVM_NUM_THREADS": 1}},
        "runner with one runtime thread",
    ),
    "runner-threads-all": (
        {"kind": "runner", "env": {"TVM_NUM_THREADS": os.cpu_count()}},
        "runner with a runtime thread per logical CPU",
    ),
    "runner-unbound": (
        {"kind": "runner", "env": {"TVM_BIND_THREADS": 0}},
        "runner with unpinned runtime threads",
    ),
    "fresh-fill": (
        {"kind": "fresh", "fill": "measure"},
        "fresh with the arguments filled as the runner fills them (random_fill_for_measure)",
    ),
    "fresh-builder": (
        {"kind": "fresh", "build": "builder"},
        "fresh with the library the tuning builder exports (its build function and export)",
    ),
    "runner-alloc3": (
        {
            "kind": "runner",
            "runner": "local",
            "evaluator": {"number": 3, "repeat": 1, "min_repeat_ms": 20},
            "alloc_repeat": 3,
        },
        "LocalRunner with 3 argument sets of one timing each (same time as 1 x 3 timings)",
    ),
    "interleaved": (
        {"kind": "interleaved"},
        "the prototype of the default runner in the measuring process: LocalRunner's timings "
        "(3 of >= 20 ms) taken in rounds over each batch of 16 instead of back to back",
    ),
    "fresh-one-alloc": (
        {"kind": "fresh", "realloc": False},
        "fresh with one set of arguments per schedule for every round (not new ones per round)",
    ),
    "fresh-load": ({"kind": "fresh", "load": 1}, "fresh with one busy process beside it"),
    "fresh-threads1": (
        {"kind": "fresh", "env": {"TVM_NUM_THREADS": 1}},
        "fresh with one runtime thread",
    ),
}
"""Named modes: ``(mode, what it changes)``."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("work_dirs", nargs="*", help="finished runs (MetaSchedule work_dirs)")
    parser.add_argument("--tune", default=None, help="tune these kernels first (NAME:INDEX,...)")
    parser.add_argument("--trials", type=int, default=64, help="--tune: budget (default 64)")
    parser.add_argument("--strategy", default="droplet", help="--tune: strategy (droplet)")
    parser.add_argument("--seed", type=int, default=0, help="--tune seed and the sample's draw")
    parser.add_argument("--top", type=int, default=20, help="fastest distinct schedules (20)")
    parser.add_argument("--sample", type=int, default=10, help="other schedules at random (10)")
    parser.add_argument("--plan", default="runner,fresh,runner,fresh", help="modes, in order")
    parser.add_argument("--ablate", default="", help="more modes, each compared with fresh")
    parser.add_argument("--rounds", type=int, default=10, help="fresh: interleaved rounds (10)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="'within' (0.10: +-10 %%)")
    parser.add_argument("--out", default="fidelity_out", help="folder for JSON, MD and PNG")
    parser.add_argument("--list-modes", action="store_true", help="print the named modes")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        default=None,
        help="compare two modes over earlier fidelity.json files (see --compare) and exit",
    )
    parser.add_argument(
        "--compare",
        default="runner-local,runner",
        help="--report: the two modes A,B (their repetitions are paired in order)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parse_with_smoke(
        parser,
        argv,
        "CI: tune GMM:0 for 16 trials, time 5 + 3 schedules in the default plan, 3 rounds",
        tune="GMM:0",
        trials=16,
        top=5,
        sample=3,
        rounds=3,
    )
    if args.child or args.list_modes or args.report:
        return args
    args.modes = [m for m in args.plan.split(",") + args.ablate.split(",") if m]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"--plan/--ablate: unknown modes {unknown}; known: {sorted(MODES)}")
    plan = args.plan.split(",")
    if "fresh" not in plan:
        parser.error(f"--plan needs a 'fresh' mode (the reference), got {args.plan!r}")
    for name in ("top", "rounds", "trials"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.sample < 0:
        parser.error(f"--sample must be >= 0, got {args.sample}")
    if not args.work_dirs and not args.tune:
        parser.error("give work_dirs of finished runs, or --tune KERNELS to make them")
    return args


def labelled_plan(names, rounds):
    """``(label, mode)`` per mode name: the second of a name is "<name> again", and so on."""
    out, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        label = {1: name, 2: f"{name} again"}.get(seen[name], f"{name} #{seen[name]}")
        mode = dict(MODES[name][0], seed=len(out))
        if mode["kind"] == "fresh":
            mode.setdefault("rounds", rounds)
        out.append((label, mode))
    return out


def tune_runs(args):
    """Tune ``--tune``'s kernels into ``<out>/runs``; their work_dirs."""
    from benchlib.kernels import te_kernel
    from benchlib.runs import tune_one

    from ms_droplet.target import host_target

    target = host_target()
    work_dirs = []
    for kernel in args.tune.split(","):
        work_dir = os.path.join(
            args.out, "runs", f"{kernel.replace(':', '_')}_{args.strategy}_s{args.seed}"
        )
        if not os.path.exists(os.path.join(work_dir, "database_tuning_record.json")):
            run = tune_one(
                te_kernel(kernel), target, work_dir, args.strategy, args.trials, 16, args.seed
            )
            print(f"{kernel}: tuned {run.curve.trials} trials in {run.wall:.0f} s", flush=True)
        work_dirs.append(work_dir)
    return work_dirs


def study(work_dir, args, plan):
    """Select, time in every mode of ``plan``, compare: one work_dir's result."""
    lines = read_record_lines(work_dir)
    schedules = fidelity.select_schedules(lines, args.top, args.sample, args.seed)
    for s in schedules:
        s["us"] = {"recorded": s["recorded_us"]}
        s["samples_us"] = {}
    modes = []
    for label, mode in plan:
        print(f"{work_dir}: {label} ({len(schedules)} schedules)", flush=True)
        start = time.perf_counter()
        samples = fidelity.measure_mode(work_dir, [s["line"] for s in schedules], mode)
        seconds = time.perf_counter() - start
        for s, times in zip(schedules, samples):
            s["samples_us"][label] = times
            s["us"][label] = statistics.median(times) if times else None
        modes.append({"label": label, **mode, "seconds": round(seconds, 1)})
    labels = [label for label, _ in plan]
    fresh_again = "fresh again" if "fresh again" in labels else None
    comparisons = [
        fidelity.compare(schedules, tuning, "fresh", fresh_again, args.tolerance)
        for tuning in ["recorded"] + [label for label in labels if label != "fresh"]
    ]
    return {
        "work_dir": work_dir,
        "records": len(lines),
        "distinct_valid": len(fidelity.distinct_schedules(lines)),
        "modes": modes,
        "schedules": schedules,
        "comparisons": comparisons,
    }


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def _commit(doc):
    commit = doc["environment"].get("commit") or {}
    return f"{commit.get('sha', '?')[:10]}{' (dirty)' if commit.get('dirty') else ''}"


def markdown(doc):
    env = describe(doc)
    lines = [
        "# Measurement fidelity: tuning numbers against a fresh process",
        "",
        f"{env['date']}, commit {_commit(doc)}, CPU {env['cpu']}, target `{env['target']}`.",
        f"Command: `{doc['environment']['command']}`",
        "",
        "Per run and mode, over the top schedules (`top`) and all timed (`all`, with the random "
        "sample): Spearman of the mode's numbers with the first fresh process's, the fresh "
        "process's with itself again, their quotient (target >= 0.9), the geometric mean and "
        f"range of mode / fresh, the share within +-{100 * doc['setup']['tolerance']:.0f} % "
        "(target >= 90 %), and how much slower (fresh) the mode's pick is than the fresh best.",
        "",
        "| run | mode | part | n | Spearman | fresh/fresh again | quotient | ratio geomean "
        "| ratio range | log-ratio sd | within | pick regret |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in doc["runs"]:
        name = os.path.basename(run["work_dir"].rstrip("/"))
        for comp in run["comparisons"]:
            for part in ("top", "all"):
                r = comp[part]
                lines.append(
                    f"| {name} | {comp['tuning']} | {part} | {r['n']} | {_fmt(r['spearman'])} "
                    f"| {_fmt(r.get('spearman_fresh_again'))} | {_fmt(r.get('spearman_ratio'))} "
                    f"| {_fmt(r['ratio_geomean'], '.3f')} "
                    f"| {_fmt(r['ratio_min'])}-{_fmt(r['ratio_max'])} "
                    f"| {_fmt(r.get('log_ratio_sd'), '.3f')} "
                    f"| {_fmt(None if r['within'] is None else 100 * r['within'], '.0f')} % "
                    f"| {_fmt(r.get('pick_regret'), '.3f')} |"
                )
    lines += ["", "Modes:", ""]
    for name in doc["setup"]["mode_names"]:
        lines.append(f"- `{name}`: {MODES[name][1]}")
    return "\n".join(lines) + "\n"


def plot(doc, path):
    """Per run: each tuning number against the fresh time (log-log), and fresh against itself."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: pip install 'ms-droplet[plot]' to get the plot")
        return False
    runs = doc["runs"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 4 * len(runs)), squeeze=False)
    tol = doc["setup"]["tolerance"]
    for row, run in zip(axes, runs):
        name = os.path.basename(run["work_dir"].rstrip("/"))
        for ax, labels in ((row[0], ["recorded", "runner"]), (row[1], ["fresh again"])):
            xs_all = []
            for label in labels:
                pts = [
                    (s["us"]["fresh"], s["us"][label])
                    for s in run["schedules"]
                    if s["us"].get("fresh") and s["us"].get(label)
                ]
                if pts:
                    xs, ys = zip(*pts)
                    ax.scatter(xs, ys, s=14, label=label)
                    xs_all += list(xs) + list(ys)
            if xs_all:
                lo, hi = min(xs_all) * 0.9, max(xs_all) * 1.1
                ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
                ax.fill_between(
                    [lo, hi],
                    [lo * (1 - tol), hi * (1 - tol)],
                    [lo * (1 + tol), hi * (1 + tol)],
                    color="0.85",
                )
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="fresh process (us)",
                ylabel="us",
                title=f"{name}: {' / '.join(labels)} vs fresh",
            )
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        first, second = args.compare.split(",")
        docs = []
        for path in args.report:
            with open(path, encoding="utf-8") as f:
                docs.append(json.load(f))
        print(json.dumps(fidelity.paired_report(docs, first, second), indent=1))
        return 0
    if args.child:
        fidelity.child_main(args.child)
        return 0
    if args.list_modes:
        for name, (mode, what) in MODES.items():
            print(f"{name:20s} {what}: {json.dumps(mode)}")
        return 0
    from ms_droplet.target import host_target

    work_dirs = list(args.work_dirs) + (tune_runs(args) if args.tune else [])
    for work_dir in work_dirs:
        if not os.path.exists(os.path.join(work_dir, "database_tuning_record.json")):
            print(
                f"error: {work_dir} has no database_tuning_record.json (not a finished run)",
                file=sys.stderr,
            )
            return 2
    plan = labelled_plan(args.modes, args.rounds)
    runs = [study(w, args, plan) for w in work_dirs]
    doc = {
        "setup": {
            "top": args.top,
            "sample": args.sample,
            "seed": args.seed,
            "rounds": args.rounds,
            "tolerance": args.tolerance,
            "plan": [label for label, _ in plan],
            "mode_names": list(dict.fromkeys(args.modes)),
            "runner_evaluator": evaluator_settings(),
            "fresh_evaluator": dict(fidelity.FRESH_DEFAULTS, rounds=args.rounds),
            "tuning_batch": fidelity.TUNING_BATCH,
        },
        "runs": runs,
    }
    out = write_json(
        os.path.join(args.out, "fidelity.json"), doc, environment(host_target(), gpu=True)
    )
    text = markdown(out)
    write_text(os.path.join(args.out, "fidelity.md"), text)
    plot(out, os.path.join(args.out, "fidelity.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
