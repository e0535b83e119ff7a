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
"""Droplet tuning through an RPC tracker: trials per minute with one server vs two.

The same droplet tuning job (kernel, seed, budget, batch size) runs through a real
``tvm.exec.rpc_tracker`` on 127.0.0.1 with 1 and with 2 ``tvm.exec.rpc_server`` processes
(``ms_droplet.rpc.rpc_runner`` with one parallel session per server), in pairs whose order
alternates (1 2, 2 1, ...), after an untimed warm-up run (one batch, one server) that pays the
one-time costs of a first tuning run in the process. Each run gets a fresh tracker and servers
(started before its clock) and its own ``work_dir``; one warm ``FastBuilder`` serves every run.
Clocked: wall seconds of ``tune_tir``, and within it the seconds spent building and measuring
(from ``run()`` to the end of the batch); the rest is search (evolutionary generation, descent,
cost model). Afterwards
the best schedule of every run is built, checked against numpy (matmuls) or the untuned build,
and timed locally, interleaved (``benchlib.remeasure.remeasure``).

Examples::

    python scripts/bench_rpc.py --smoke --out /tmp/bench
    python scripts/bench_rpc.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from benchlib.cli import parse_with_smoke
from benchlib.env import describe, environment
from benchlib.kernels import random_args, reference_output, te_kernel
from benchlib.remeasure import remeasure
from benchlib.results import write_json, write_text
from benchlib.runs import evaluator_settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="GMM:1", help="NAME:INDEX of te_workload")
    parser.add_argument("--trials", type=int, default=64, help="budget of each run")
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=2, help="(1 server, 2 servers) pairs")
    parser.add_argument("--session-timeout", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--out", default="bench_out", help="output folder")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed first run (one batch, one server) that pays one-time costs",
    )
    return parse_with_smoke(
        parser,
        argv,
        "GMM:0, 8 trials, one pair, no warm-up (for CI): ~2 minutes",
        kernel="GMM:0",
        trials=8,
        trials_per_iter=4,
        pairs=1,
        rounds=3,
        no_warmup=True,
    )


def run_order(pairs: int) -> list[int]:
    """Server counts in run order: 1 2, 2 1, 1 2, ..."""
    order = []
    for pair in range(pairs):
        order += [1, 2] if pair % 2 == 0 else [2, 1]
    return order


class Clock:
    """Seconds spent building and measuring in one tuning run, and what was measured."""

    def __init__(self):
        self.build_s = 0.0
        self.run_s = 0.0
        self.run_started = None
        self.trials = 0
        self.failures = 0
        self.errors: list[str] = []
        self.best_s = float("inf")
        self.batches: list[tuple[int, float]] = []
        self.start = time.perf_counter()


def timed(builder, runner, clock):
    """A builder, a runner and a measure callback that fill ``clock``."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner

    from ms_droplet.measure import result_run_secs

    @derived_object
    class TimedBuilder(PyBuilder):
        def build(self, build_inputs):
            start = time.perf_counter()
            try:
                return builder.build(build_inputs)
            finally:
                clock.build_s += time.perf_counter() - start

    @derived_object
    class TimedRunner(PyRunner):
        def run(self, runner_inputs):
            clock.run_started = time.perf_counter()
            return runner.run(runner_inputs)

    @derived_object
    class Tally(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, results):
            now = time.perf_counter()
            if clock.run_started is not None:
                clock.run_s += now - clock.run_started
                clock.run_started = None
            for built, result in zip(builder_results, results):
                clock.trials += 1
                error = built.error_msg or result.error_msg
                secs = result_run_secs(result)
                if error is not None or not secs:
                    clock.failures += 1
                    clock.errors.append((error or "no timing").strip().splitlines()[0][:200])
                    continue
                clock.best_s = min(clock.best_s, sum(secs) / len(secs))
            clock.batches.append((clock.trials, now - clock.start))

    return TimedBuilder(), TimedRunner(), Tally()


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO (.*)$")


def _median(values):
    return statistics.median(values) if values else None


def session_times(log_path):
    """Per session of one server's log: seconds from connection to end, from the last module
    loaded to the end (the timing rounds, cleanup), and from the end to the next connection.

    With the interleaved runner a session is a batch's share of one server (every candidate
    uploaded, loaded and called once, then all timed in rounds); with MetaSchedule's RPCRunner
    it is one candidate."""
    events = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            match = _LOG_TIME.match(line.strip())
            if match:
                stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
                events.append((stamp.timestamp(), match.group(2)))
    out = {"session_s": [], "after_load_s": [], "between_s": []}
    connected = loaded = finished = None
    for stamp, text in events:
        if text.startswith("connected from"):
            if finished is not None:
                out["between_s"].append(stamp - finished)
            connected, loaded = stamp, None
        elif text.startswith("load_module") and connected is not None:
            loaded = stamp
        elif text.startswith("finish serving") and connected is not None:
            out["session_s"].append(stamp - connected)
            if loaded is not None:
                out["after_load_s"].append(stamp - loaded)
            connected, finished = None, stamp
    return out


def tune_through_tracker(mod, target, work_dir, servers, builder, args, trials=None):
    """One tuning run through a fresh tracker with ``servers`` servers; returns its entry."""
    from tvm.s_tir import meta_schedule as ms

    from ms_droplet import DropletSearch
    from ms_droplet.rpc import rpc_runner
    from ms_droplet.testing import local_rpc_cluster

    with local_rpc_cluster(servers, key="bench") as cluster:
        status = cluster.status()
        runner = rpc_runner(cluster.tracker, cluster.key, session_timeout_sec=args.session_timeout)
        clock = Clock()
        builder_, runner_, tally = timed(builder, runner, clock)
        strategy = DropletSearch()
        load_before = os.getloadavg()
        start = clock.start = time.perf_counter()
        database = ms.tune_tir(
            mod,
            target,
            work_dir,
            max_trials_global=trials or args.trials,
            num_trials_per_iter=args.trials_per_iter,
            strategy=strategy,
            builder=builder_,
            runner=runner_,
            measure_callbacks=[tally, *ms.measure_callback.MeasureCallback.create("default")],
            seed=args.seed,
        )
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        sessions = [session_times(server.log_path) for server in cluster.servers]
        runner.shutdown()  # its worker processes and their sessions
    (report,) = strategy.reports
    return {
        "servers": servers,
        "parallel_sessions": status.connected,
        "trials": clock.trials,
        "failures": clock.failures,
        "errors": clock.errors,
        "wall_s": wall,
        "build_s": clock.build_s,
        "run_s": clock.run_s,
        "search_s": wall - clock.build_s - clock.run_s,
        "trials_per_min": 60.0 * clock.trials / wall,
        "run_trials_per_min": 60.0 * clock.trials / clock.run_s if clock.run_s else None,
        "sessions_per_server": [len(times["session_s"]) for times in sessions],
        "session_s_median": _median(sum((t["session_s"] for t in sessions), [])),
        "after_load_s_median": _median(sum((t["after_load_s"] for t in sessions), [])),
        "between_sessions_s_median": _median(sum((t["between_s"] for t in sessions), [])),
        "best_recorded_us": clock.best_s * 1e6 if clock.best_s < float("inf") else None,
        "exploration_trials": report.exploration,
        "descent_trials": report.descent,
        "stop_reason": report.stop_reason,
        "batches": clock.batches,
        "loadavg_1min_before_after": [load_before[0], load_after[0]],
        "_sch": ms.tir_integration.compile_tir(database, mod, target),
    }


def run_settings(args):
    """The settings of the benchmark, for its result file (the machine is in its environment
    record)."""
    import tornado

    from ms_droplet.rpc import CONNECT_MARGIN_SEC

    return {
        "tornado": tornado.version,
        "kernel": args.kernel,
        "strategy": "droplet (DropletSearch(), default exploration)",
        "budget": args.trials,
        "trials_per_iter": args.trials_per_iter,
        "seed": args.seed,
        "pairs": args.pairs,
        "warmup_run": not args.no_warmup,
        "run_order": run_order(args.pairs),
        "evaluator_config": evaluator_settings(),
        "runner": "ms_droplet.rpc.rpc_runner (InterleavedRPCRunner), one parallel session "
        "per server",
        "session_timeout_s": args.session_timeout,
        "candidate_timeout_s": args.session_timeout + CONNECT_MARGIN_SEC,
        "builder": "ms_droplet.FastBuilder (one warm instance for every run)",
        "servers": "python -m tvm.exec.rpc_server on 127.0.0.1, same host as the tuning",
        "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
        "rounds": args.rounds,
    }


def summarize(runs):
    """Median trials per minute per server count, the ratio 2/1, and the per-pair ratios."""
    by = {n: [r for r in runs if r["servers"] == n] for n in (1, 2)}
    out = {}
    for n, rows in by.items():
        out[f"{n}_server"] = {
            "trials_per_min": [r["trials_per_min"] for r in rows],
            "median_trials_per_min": statistics.median(r["trials_per_min"] for r in rows),
            "median_run_trials_per_min": statistics.median(r["run_trials_per_min"] for r in rows),
            "median_share_of_wall_in_run": statistics.median(
                r["run_s"] / r["wall_s"] for r in rows
            ),
            "median_measure_s_per_trial": statistics.median(r["run_s"] / r["trials"] for r in rows),
            "median_session_s": _median([r["session_s_median"] for r in rows]),
            "median_after_load_s": _median([r["after_load_s_median"] for r in rows]),
            "median_between_sessions_s": _median([r["between_sessions_s_median"] for r in rows]),
        }
    one, two = out["1_server"], out["2_server"]
    out["ratio_2_over_1"] = two["median_trials_per_min"] / one["median_trials_per_min"]
    out["run_phase_ratio_2_over_1"] = (
        two["median_run_trials_per_min"] / one["median_run_trials_per_min"]
    )
    pairs = [runs[i : i + 2] for i in range(0, len(runs) - 1, 2)]
    out["pair_ratios"] = [
        next(r for r in p if r["servers"] == 2)["trials_per_min"]
        / next(r for r in p if r["servers"] == 1)["trials_per_min"]
        for p in pairs
    ]
    return out


def _num(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(env, setup, runs, summary):
    ev = setup["evaluator_config"]
    machine = describe({"environment": env})
    lines = [
        "# RPC benchmark: droplet tuning through a tracker, 1 server vs 2",
        "",
        f"`scripts/bench_rpc.py`, {machine['date']}: TVM {machine['tvm']} "
        f"(ffi {machine['tvm_ffi']}, tornado {setup['tornado']}), {machine['cpu']}, "
        f"{machine['physical_cores']} physical / {machine['logical_cores']} logical cores, "
        f"target `{machine['target']}`.",
        f"Kernel `{setup['kernel']}`, {setup['strategy']}, {setup['budget']} trials, "
        f"{setup['trials_per_iter']} a batch, seed {setup['seed']}; evaluator number="
        f"{ev['number']} repeat={ev['repeat']} min_repeat_ms={ev['min_repeat_ms']}; "
        f"`rpc_runner(..., session_timeout_sec={setup['session_timeout_s']:g})` with one "
        "parallel session per server; one warm FastBuilder (2 workers). Tracker and servers on "
        "127.0.0.1, the same host as the tuning process; a fresh tracker and servers for each run, "
        "started before its clock"
        + ("; an untimed warm-up run first (one batch, one server)" if setup["warmup_run"] else "")
        + ". "
        + "Run order: "
        + ", ".join(f"{n} server{'s' if n > 1 else ''}" for n in setup["run_order"])
        + ".",
        "",
        "| # | servers | trials | failed | wall s | trials/min | build s | measure s | search s "
        "| trials/min while measuring | sessions per server | session s | after load s "
        "| between sessions s | best recorded us | best re-measured us | correct "
        "| load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        med = r.get("median_us")
        load = r["loadavg_1min_before_after"]
        lines.append(
            f"| {i} | {r['servers']} | {r['trials']} | {r['failures']} | {r['wall_s']:.1f} | "
            f"**{r['trials_per_min']:.1f}** | {r['build_s']:.1f} | {r['run_s']:.1f} | "
            f"{r['search_s']:.1f} | {r['run_trials_per_min']:.1f} | {r['sessions_per_server']} | "
            f"{_num(r['session_s_median'], 3)} | {_num(r['after_load_s_median'], 3)} | "
            f"{_num(r['between_sessions_s_median'], 3)} | "
            f"{r['best_recorded_us']:.1f} | {med:.1f} | {r['correct']} | "
            f"{load[0]:.2f} / {load[1]:.2f} |"
        )
    one, two = summary["1_server"], summary["2_server"]
    lines += [
        "",
        "| | 1 server | 2 servers | ratio 2/1 |",
        "|---|---|---|---|",
        f"| trials per minute, whole run (median) | {one['median_trials_per_min']:.1f} | "
        f"{two['median_trials_per_min']:.1f} | **{summary['ratio_2_over_1']:.2f}x** |",
        f"| trials per minute while measuring (median) | {one['median_run_trials_per_min']:.1f} | "
        f"{two['median_run_trials_per_min']:.1f} | {summary['run_phase_ratio_2_over_1']:.2f}x |",
        f"| share of wall time measuring (median) | {one['median_share_of_wall_in_run']:.0%} | "
        f"{two['median_share_of_wall_in_run']:.0%} | |",
        "",
        "Per-pair ratios (2 servers / 1 server, whole run): "
        + ", ".join(f"{x:.2f}" for x in summary["pair_ratios"])
        + ".",
        "",
        "Columns: *measure s* runs from the runner's `run()` to the end of the batch's results "
        "(sessions: tracker request, upload, link with g++, load, timing); *session s*, *after "
        "load s* and *between sessions s* are medians from the servers' logs: connection to end"
        " of a session (a session is one batch's share of a server: every candidate uploaded, "
        "loaded and called once, then all timed in rounds), last module loaded to end (the "
        "timing rounds, cleanup), and end of a session to the server's next connection; *search"
        " s* is the rest of the wall time (evolutionary generation, descent, cost-model "
        "updates, task scheduler); *best recorded* is the best mean time the runner recorded "
        "(over RPC); *best re-measured* times every run's best schedule afterwards in the "
        f"benchmark process (no RPC, `time_evaluator` number=10), interleaved, {setup['rounds']}"
        " rounds (median): compare it within its column only; *correct* checks its output "
        f"against {setup['reference']}.",
        "",
        "## What the ratio means here, and what it does not",
        "",
    ]
    cores = machine["logical_cores"]
    share = one["median_share_of_wall_in_run"]
    lines += [
        f"- Everything ran on one {cores}-core machine: the tuning process (search, cost model), "
        "FastBuilder's two workers, the tracker and the servers. Two servers on one host add no "
        "hardware: they time two kernels at once on the same cores, each kernel running "
        f"{cores} threads, so they compete with each other and with the builder. The ratio is "
        "not what a second board or GPU would bring, and the latencies recorded with two "
        "concurrent servers are perturbed by that competition (the re-measured column compares "
        "what each run found, fairly).",
        f"- Measuring ran {summary['run_phase_ratio_2_over_1']:.2f}x faster with two servers "
        "although they share the cores. With one server, measuring took "
        f"{one['median_measure_s_per_trial']:.3f} s a candidate. Each server gets one session "
        "per batch, its share of the batch: in the server's log a session lasted "
        f"{_num(one['median_session_s'], 3)} s from connection to end "
        f"({_num(one['median_after_load_s'], 3)} s of it after its last module was loaded: the "
        f"rounds of timing, each candidate at least {ev['repeat']} x {ev['min_repeat_ms']} ms, "
        f"and cleanup), and {_num(one['median_between_sessions_s'], 3)} s passed between the "
        "end of a session and the next connection (the results going back, the next batch's "
        "search and builds, a new tracker request). Two servers split a batch, so the uploads, "
        "links, loads and timings of its halves run side by side.",
        "- Only measurement overlaps across servers; search and builds do not. With one server, "
        f"measuring took {share:.0%} of the wall time here: halving that part alone would make "
        f"the whole run {1 / (1 - share / 2):.2f}x faster (Amdahl). Search time also varies "
        "between runs of the same job (droplet's path depends on the timings it gets, and it "
        "may stop early at a local optimum), which is the noise of the whole-run ratio.",
        "- Not measured here: remote devices add artifact transfer over the network and their "
        "own speed. Where sessions are slow (seconds per candidate on a board), measurement "
        "dominates and the parallel part grows; the parallelism is still capped by "
        "`num_trials_per_iter`, since MetaSchedule measures a whole batch before it generates "
        "the next one.",
        "- Noise: the machine is shared (load averages in the table); compare the per-pair "
        "ratios with each other before trusting the second digit.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    import logging

    import tvm.s_tir.tensor_intrin  # noqa: F401 - pay this one-time ~12 s import before any clock

    from ms_droplet import FastBuilder
    from ms_droplet.target import host_target

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = host_target()
    env, setup = environment(target), run_settings(args)
    mod = te_kernel(args.kernel)
    inputs = random_args(mod["main"], np.random.default_rng(0))
    expected, reference = reference_output(args.kernel.split(":")[0], mod, target, inputs)
    setup["reference"] = reference
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_rpc_")
    runs = []
    try:
        with FastBuilder() as builder:
            builder.warm_up()
            if not args.no_warmup:
                # The first tuning run of a process pays one-time costs (seen: 34 s of search
                # instead of 10 s for the same job): keep them out of every clock.
                print("warm-up: one batch through one server (not counted) ...", flush=True)
                warmup = os.path.join(scratch, "warmup")
                tune_through_tracker(mod, target, warmup, 1, builder, args, args.trials_per_iter)
            for i, servers in enumerate(run_order(args.pairs)):
                print(f"run {i + 1}: {servers} server(s), {args.trials} trials ...", flush=True)
                work_dir = os.path.join(scratch, f"run{i}_{servers}")
                entry = tune_through_tracker(mod, target, work_dir, servers, builder, args)
                runs.append(entry)
                print(
                    f"    {entry['trials']} trials in {entry['wall_s']:.1f} s = "
                    f"{entry['trials_per_min']:.1f} trials/min (measuring {entry['run_s']:.1f} s, "
                    f"building {entry['build_s']:.1f} s), sessions {entry['sessions_per_server']}",
                    flush=True,
                )
        remeasure(runs, target, args.rounds, inputs, expected)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize(runs)
    doc = {"setup": setup, "runs": runs, "summary": summary}
    stem = os.path.join(args.out, "rpc-smoke" if args.smoke else "rpc")
    write_json(stem + ".json", doc, env)
    text = markdown(env, setup, runs, summary)
    write_text(stem + ".md", text)
    print(text)
    bad = [r for r in runs if r["correct"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
