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
"""How optimistic is the recorded time of the best of N measured schedules?

For each kept work_dir, takes its first ``--first`` records (in the order they were measured:
an exploration), and measures again, with the tuning runner and ``--calls`` runner calls, the
fastest of them and ``--others`` others drawn at random. If the best's recorded time is biased
low by its selection (the winner's curse), its ratio fresh / recorded is larger than the
others' (which share any drift of the machine between the two measurements). Prints both
geometric means and a one-sided Mann-Whitney test; ``--out`` writes every ratio as JSON.

Example (the kept droplet runs of a ``bench_kernels.py --keep`` run)::

    python scripts/winners_curse.py /tmp/set2/keep/*_droplet@T --first 32 --out curse.json

``--picks``: per work_dir, compares MetaSchedule's final pick (the record
with the lowest mean, what ``compile_tir`` builds) with the schedule whose measurements, pooled
over all its records, have the lowest mean. A search that measures a schedule more than once
(droplet's re-measurements) gives that schedule several draws at the pick. ``--measure``
then times both again where they differ, interleaved, in ``--calls`` runner calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from benchlib.env import environment
from benchlib.records import read_record_lines, records_in_order
from benchlib.results import write_json

from ms_droplet.measure import valid_run_secs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", help="MetaSchedule work_dirs (JSON databases)")
    parser.add_argument("--first", type=int, default=32, help="records counted, in file order")
    parser.add_argument("--others", type=int, default=3, help="random others measured again")
    parser.add_argument("--calls", type=int, default=3, help="runner calls per schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the ratios here (JSON)")
    parser.add_argument(
        "--picks",
        action="store_true",
        help="compare each database's pick with its best pooled schedule (from the records)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="with --picks: where they differ, measure both again (--calls interleaved calls)",
    )
    args = parser.parse_args(argv)
    for name in ("first", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.others < args.first:
        parser.error(f"--others must be in [1, --first), got {args.others}")
    return args


def workload_mod(work_dir):
    """The module of the (first) workload in ``work_dir``'s database."""
    from tvm.s_tir import meta_schedule as ms

    with open(os.path.join(work_dir, "database_workload.json"), encoding="utf-8") as f:
        return ms.database.Workload.from_json(json.loads(f.readline())).mod


def compare_picks(work_dirs, calls=0):
    """Per work_dir: the database's pick against the schedule with the best pooled mean.

    With ``calls``, where the two differ, both are measured again, interleaved, in ``calls``
    runner calls (``fresh_pick_over_best``: above 1 when the pooled best is really faster).
    """
    from statistics import mean

    from scipy.stats import gmean

    rows = []
    for work_dir in work_dirs:
        pooled, single, first_line = {}, [], {}
        for index, (_, record) in enumerate(read_record_lines(work_dir)):
            # record: [trace, run_secs, target, args_info]
            secs = valid_run_secs(record[1])
            if not secs:
                continue
            key = json.dumps(record[0])  # the trace: equal for measurements of one schedule
            pooled.setdefault(key, []).append(secs)
            first_line.setdefault(key, index)
            single.append((mean(secs), key))
        if not single:
            continue
        pick_secs, pick = min(single)
        means = {k: mean(x for secs in v for x in secs) for k, v in pooled.items()}
        best = min(means, key=means.get)
        row = {
            "work_dir": work_dir,
            "pick_record_us": 1e6 * pick_secs,
            "pick_pooled_us": 1e6 * means[pick],
            "pick_records": len(pooled[pick]),
            "best_pooled_us": 1e6 * means[best],
            "best_records": len(pooled[best]),
            "measured_again": sum(len(v) > 1 for v in pooled.values()),
        }
        if calls and best != pick:
            mod = workload_mod(work_dir)
            records = records_in_order(work_dir, mod)
            fresh = measure_again(
                mod, [records[first_line[k]][0].trace for k in (pick, best)], calls
            )
            if fresh:
                row["fresh_pick_us"], row["fresh_best_us"] = (1e6 * mean(x) for x in fresh)
                row["fresh_pick_over_best"] = row["fresh_pick_us"] / row["fresh_best_us"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    differ = [r for r in rows if r["pick_pooled_us"] > r["best_pooled_us"]]
    fresh = [r["fresh_pick_over_best"] for r in rows if "fresh_pick_over_best" in r]
    summary = {
        "work_dirs": len(rows),
        "pick_is_not_best_pooled": len(differ),
        "pick_measured_again": sum(r["pick_records"] > 1 for r in rows),
        "pick_over_best_pooled_geomean": float(
            gmean([r["pick_pooled_us"] / r["best_pooled_us"] for r in rows])
        )
        if rows
        else None,
        "fresh_pick_over_best_geomean": float(gmean(fresh)) if fresh else None,
        "fresh_pick_slower_in": sum(x > 1 for x in fresh),
        "fresh_pairs": len(fresh),
    }
    print(json.dumps(summary, indent=1))
    return rows, summary


def measure_again(mod, traces, calls):
    """Per trace, the mean run seconds of each of ``calls`` runner calls that run every trace
    once (interleaved), with the tuning runner and the host target; None if one fails."""
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from ms_droplet.builder import FastBuilder
    from ms_droplet.measure import default_runner, result_run_secs
    from ms_droplet.target import host_target

    target = host_target()
    runner = default_runner()
    mods = []
    for trace in traces:
        sch = tvm.s_tir.Schedule(mod)
        trace.apply_to_schedule(sch, remove_postproc=False)
        mods.append(sch.mod)
    fresh = [[] for _ in mods]
    with FastBuilder() as builder:
        for _ in range(calls):
            built = builder.build([BuilderInput(m, target) for m in mods])
            inputs = [
                RunnerInput(b.artifact_path, "cpu", ArgInfo.from_entry_func(m, remove_preproc=True))
                for b, m in zip(built, mods)
            ]
            for samples, future in zip(fresh, runner.run(inputs)):
                secs = result_run_secs(future.result())
                if secs:
                    samples.append(float(np.mean(secs)))
    return fresh if all(len(x) == calls for x in fresh) else None


def write_out(args, rows, summary):
    """Write the rows and summary to ``--out`` (if given), with the environment record."""
    if not args.out:
        return
    from ms_droplet.target import host_target

    doc = {"args": vars(args), "rows": rows, "summary": summary}
    write_json(args.out, doc, environment(host_target()))


def main(argv=None):
    args = parse_args(argv)
    if args.picks:
        rows, summary = compare_picks(args.work_dirs, args.calls if args.measure else 0)
        write_out(args, rows, summary)
        return 0
    import numpy as np
    from scipy.stats import gmean, mannwhitneyu

    rng = np.random.default_rng(args.seed)
    rows = []
    for work_dir in args.work_dirs:
        mod = workload_mod(work_dir)
        records = records_in_order(work_dir, mod, args.first)
        finite = [i for i, (_, mean) in enumerate(records) if np.isfinite(mean)]
        if len(finite) <= args.others:
            print(f"{work_dir}: only {len(finite)} valid records, skipped", file=sys.stderr)
            continue
        best = min(finite, key=lambda i: records[i][1])
        rest = [i for i in finite if i != best]
        picks = [best] + [int(i) for i in rng.choice(rest, args.others, replace=False)]
        fresh = measure_again(mod, [records[i][0].trace for i in picks], args.calls)
        if fresh is None:
            print(f"{work_dir}: a schedule failed to run again, skipped", file=sys.stderr)
            continue
        ratio = [float(np.mean(x) / records[i][1]) for i, x in zip(picks, fresh)]
        row = {"work_dir": work_dir, "best_ratio": ratio[0], "other_ratios": ratio[1:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    best = [r["best_ratio"] for r in rows]
    others = [x for r in rows for x in r["other_ratios"]]
    summary = {
        "best_fresh_over_recorded": float(gmean(best)),
        "others_fresh_over_recorded": float(gmean(others)),
        "selection_bias": float(gmean(best) / gmean(others)),
        "mannwhitney_p": float(mannwhitneyu(best, others, alternative="greater").pvalue),
        "work_dirs": len(rows),
    }
    print(json.dumps(summary, indent=1))
    write_out(args, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
