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
"""Jobs restricted to their own cores: times measured two at once against one alone.

Builds a few kernels once (a random, postprocessed MetaSchedule candidate with a parallel
loop each), then times them through ``ms_droplet.measure.default_runner()`` in ``--jobs`` job
processes restricted to ``--cores-per-job`` cores each (``os.sched_setaffinity``; job ``i`` on
cores ``i*C .. i*C+C-1``): job 0 alone, then all jobs at the same time (released together),
repeated ``--reps`` times alternately. Two environments:

``fix``
    No TVM variable set; ``respect_cpu_affinity()`` (inside ``default_runner()``) sets
    ``TVM_NUM_THREADS`` to the job's cores and ``TVM_BIND_THREADS=0``.
``pinned``
    ``TVM_NUM_THREADS=max(2, CPUs / 2) TVM_BIND_THREADS=1``, kept by ``respect_cpu_affinity()``
    as a user's choice: what TVM does by default (half the logical CPUs as threads, pinned to
    the machine's first cores), i.e. the behaviour without the fix. On a 2-CPU machine TVM's
    default is one thread, which runs inline and pins nothing; 2 emulates a larger machine.

Usage::

    python scripts/affinity.py --json docs/benchmarks/affinity.json          # 2 jobs x 1 core
    python scripts/affinity.py --jobs 8 --cores-per-job 2 --json out.json    # a 16-CPU machine
    python scripts/affinity.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENVIRONMENTS = {
    "fix": {},
    "pinned": {
        "TVM_NUM_THREADS": str(max(2, (os.cpu_count() or 2) // 2)),
        "TVM_BIND_THREADS": "1",
    },
}
_TVM_VARS = ("TVM_NUM_THREADS", "TVM_BIND_THREADS", "OMP_NUM_THREADS", "MS_DROPLET_AFFINITY_SET")


def build_kernels(specs, folder):
    """Export one parallel candidate of each ``NAME:INDEX`` kernel to ``folder``.

    Returns
    -------
    list of dict
        ``spec``, ``path`` (a shared library) and ``args`` (``ArgInfo`` JSON) per kernel.
    """
    # pylint: disable=import-outside-toplevel
    import tvm
    from benchlib.kernels import te_kernel
    from tvm.s_tir import meta_schedule as ms

    from ms_droplet.target import host_target
    from ms_droplet.testing import random_schedules

    target = host_target()
    kernels = []
    for spec in specs:
        mod = te_kernel(spec)
        # The first candidate with a parallel loop: only those start TVM's thread pool.
        for sch in random_schedules(mod, target, 8, seed=0):
            if "T.parallel" in sch.script():
                break
        else:
            raise RuntimeError(f"{spec}: no candidate with a parallel loop among 8")
        path = os.path.join(folder, spec.replace(":", "_") + ".so")
        tvm.compile(sch, target=target).export_library(path)
        args = [info.as_json() for info in ms.arg_info.ArgInfo.from_prim_func(sch["main"])]
        kernels.append({"spec": spec, "path": path, "args": args})
    return kernels


def job(argv):
    """One restricted job (run in its own process): time every kernel ``rounds`` times."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", required=True, help="comma-separated core ids")
    parser.add_argument("--kernels", required=True, help="JSON file of build_kernels()")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--ready", required=True, help="file written once the runner is up")
    parser.add_argument("--go", required=True, help="file to wait for before timing")
    args = parser.parse_args(argv)
    cores = {int(c) for c in args.cores.split(",")}
    os.sched_setaffinity(0, cores)
    # pylint: disable=import-outside-toplevel
    import psutil
    from tvm.s_tir import meta_schedule as ms

    from ms_droplet.measure import default_runner, mean_run_secs, result_run_secs

    with open(args.kernels, encoding="utf-8") as f:
        kernels = json.load(f)
    runner = default_runner()
    inputs = [
        ms.runner.RunnerInput(
            k["path"], "cpu", [ms.arg_info.ArgInfo.from_json(a) for a in k["args"]]
        )
        for k in kernels
    ]
    runner.run(inputs)  # warm-up: the worker loads TVM and each library once
    with open(args.ready, "w", encoding="utf-8"):
        pass
    while not os.path.exists(args.go):
        time.sleep(0.01)
    times = {k["spec"]: [] for k in kernels}
    for _ in range(args.rounds):
        for kernel, future in zip(kernels, runner.run(inputs)):
            times[kernel["spec"]].append(mean_run_secs(result_run_secs(future.result())))
    # The CPUs the runner worker's threads may use after running the kernels: TVM's pinning
    # shows here (a thread moved outside the job's core).
    worker_cpus = set()
    for child in psutil.Process().children(recursive=True):
        if "popen_worker" in " ".join(child.cmdline()):
            for thread in child.threads():
                worker_cpus |= os.sched_getaffinity(thread.id)
    print(
        json.dumps(
            {
                "cores": sorted(cores),
                "times": times,
                "worker_cpus": sorted(worker_cpus),
                "env": {k: os.environ.get(k) for k in _TVM_VARS},
            }
        )
    )
    return 0


def run_jobs(jobs, kernels_file, rounds, env, folder):
    """Start one job per core set of ``jobs``, release them together, return their results."""
    go = os.path.join(folder, "go")
    if os.path.exists(go):
        os.remove(go)
    procs, ready = [], []
    for index, cores in enumerate(jobs):
        ready.append(os.path.join(folder, f"ready-{index}-{time.monotonic_ns()}"))
        command = [sys.executable, __file__, "job", "--cores", ",".join(map(str, cores))]
        command += ["--kernels", kernels_file, "--rounds", str(rounds)]
        command += ["--ready", ready[-1], "--go", go]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    while not all(os.path.exists(r) for r in ready):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a job failed before timing")
        time.sleep(0.05)
    with open(go, "w", encoding="utf-8"):
        pass
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a job exited with {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv=None):
    """Measure both environments; print a table; write ``--json``."""
    # pylint: disable=import-outside-toplevel
    from benchlib.cli import parse_with_smoke
    from benchlib.env import environment
    from benchlib.results import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default="GMM:1,C2D:0,T2D:0")
    parser.add_argument("--rounds", type=int, default=5, help="timings of each kernel per job")
    parser.add_argument("--reps", type=int, default=3, help="alone/together alternations")
    parser.add_argument("--jobs", type=int, default=2, help="restricted jobs at once")
    parser.add_argument("--cores-per-job", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parse_with_smoke(parser, argv, "one kernel, 1 rep, 2 rounds", kernels="GMM:0")
    if args.smoke:
        args.rounds, args.reps = 2, 1
    from ms_droplet.target import host_target

    env_record = environment(host_target())
    env_record["load_before"] = os.getloadavg()
    base = {k: v for k, v in os.environ.items() if k not in _TVM_VARS}
    doc = {"kernels": args.kernels.split(","), "rounds": args.rounds, "reps": args.reps}
    per = args.cores_per_job
    jobs = [list(range(i * per, (i + 1) * per)) for i in range(args.jobs)]
    if jobs[-1][-1] not in os.sched_getaffinity(0):
        parser.error(f"--jobs {args.jobs} x --cores-per-job {per} needs CPUs 0..{jobs[-1][-1]}")
    doc.update(jobs=jobs)
    with tempfile.TemporaryDirectory() as folder:
        kernels_file = os.path.join(folder, "kernels.json")
        with open(kernels_file, "w", encoding="utf-8") as f:
            json.dump(build_kernels(doc["kernels"], folder), f)
        runs = {name: {"alone": [], "together": []} for name in ENVIRONMENTS}
        for _ in range(args.reps):
            for name, extra in ENVIRONMENTS.items():
                env = {**base, **extra}
                runs[name]["alone"] += run_jobs(jobs[:1], kernels_file, args.rounds, env, folder)
                runs[name]["together"] += run_jobs(jobs, kernels_file, args.rounds, env, folder)
    env_record["load_after"] = os.getloadavg()
    summary = {}
    print(f"{'env':8} {'kernel':8} {'alone us':>10} {'together us':>12} {'ratio':>6}  worker CPUs")
    for name, by_mode in runs.items():
        summary[name] = {}
        for spec in doc["kernels"]:
            med = {
                mode: statistics.median(t for job_ in jobs for t in job_["times"][spec])
                for mode, jobs in by_mode.items()
            }
            cpus = sorted({tuple(j["worker_cpus"]) for j in by_mode["together"]})
            summary[name][spec] = {
                "alone_secs": med["alone"],
                "together_secs": med["together"],
                "ratio": med["together"] / med["alone"],
                "worker_cpus_together": cpus,
            }
            print(
                f"{name:8} {spec:8} {med['alone'] * 1e6:10.1f} {med['together'] * 1e6:12.1f} "
                f"{med['together'] / med['alone']:6.2f}  {cpus}"
            )
    doc.update(environments=ENVIRONMENTS, summary=summary, runs=runs)
    if args.json:
        write_json(args.json, doc, env_record)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        sys.exit(job(sys.argv[2:]))
    sys.exit(main())
