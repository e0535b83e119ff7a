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
"""Winners re-measured side by side: built, checked against a reference, timed interleaved.

One implementation for the CPU and the GPU scripts. :func:`remeasure` times in this process;
:func:`measure_fresh` in a fresh one (``bench_kernels.py --measure-spec``, which runs
:func:`measure_spec_main`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_interleaved(entries, timers, rounds):
    """Call every timer once per round, in turn (A B C A B C ...); store median and IQR.

    Parameters
    ----------
    entries : list of dict
        Get ``median_us`` (None if not timed), ``iqr_us`` and ``remeasured_us``.
    timers : list
        ``(time_evaluator function, args)`` for ``entries[i]``, or None.
    rounds : int
    """
    samples: list[list[float]] = [[] for _ in entries]
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            if timer is not None:
                func, args = timer
                samples[i].append(func(*args).mean)
    for entry, times in zip(entries, samples):
        if times:
            entry["median_us"] = statistics.median(times) * 1e6
            q = np.percentile(times, [25, 75])
            entry["iqr_us"] = float(q[1] - q[0]) * 1e6
            entry["remeasured_us"] = [t * 1e6 for t in times]
        else:
            entry["median_us"] = None


def remeasure(entries, target, rounds, inputs, expected, *, number=10, atol_scale=1e-3):
    """Build each entry's schedule (``entry.pop("_sch")``); check it; time all interleaved.

    Parameters
    ----------
    entries : list of dict
        Each with ``_sch`` (a schedule, or None for a run without one). Gets ``correct`` (None
        when not built), ``max_abs_err`` and the fields of :func:`time_interleaved`.
    target : tvm.target.Target
        ``cuda`` times on GPU 0, anything else on the CPU.
    rounds : int
        Interleaved rounds.
    inputs : list of numpy.ndarray
        The arguments; the last is the output, zeroed before the check.
    expected : numpy.ndarray
        The reference output.
    number : int
        ``time_evaluator``'s ``number`` (``repeat=1, min_repeat_ms=50``).
    atol_scale : float
        ``correct``: ``allclose(rtol=1e-3, atol=atol_scale * max |expected|)``.
    """
    import tvm

    dev = tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu()
    scale = float(np.abs(expected).max())
    timers = []
    for entry in entries:
        sch = entry.pop("_sch")
        entry["correct"] = None
        if sch is None:
            timers.append(None)
            continue
        lib = tvm.compile(sch.mod, target=target)
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        args[-1] = tvm.runtime.tensor(np.zeros_like(inputs[-1]), dev)
        lib(*args)
        dev.sync()
        out = args[-1].numpy()
        entry["max_abs_err"] = float(np.abs(out - expected).max())
        entry["correct"] = bool(np.allclose(out, expected, rtol=1e-3, atol=atol_scale * scale))
        timers.append(
            (lib.jit().time_evaluator("main", dev, number=number, repeat=1, min_repeat_ms=50), args)
        )
    time_interleaved(entries, timers, rounds)


def fresh_command(spec_path):
    """The command line of a fresh re-measuring process for a spec file (see
    :func:`measure_fresh`).

    Parameters
    ----------
    spec_path : str

    Returns
    -------
    list of str
    """
    return [sys.executable, os.path.join(SCRIPTS, "bench_kernels.py"), "--measure-spec", spec_path]


def measure_fresh(kernel, specs, rounds):
    """Re-measure the best schedules of several work_dirs in a fresh process, interleaved.

    Why a fresh process: timed in the process that had just tuned, some winners ran 1.4-2x
    slower than in tuning and than in a fresh process, run after run, while others did not
    (GMM:1 seeds 2-3 of the first full set); a fresh process is also how a tuned kernel is
    deployed.

    Parameters
    ----------
    kernel : str
        ``NAME:INDEX`` of ``te_workload``.
    specs : list of dict
        One ``{"work_dir": ..., "first": N or None}`` per run (``first``: only the first N
        records count).
    rounds : int

    Returns
    -------
    list of dict
        One per spec: ``median_us``, ``iqr_us``, ``remeasured_us``, ``correct``,
        ``max_abs_err``.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"kernel": kernel, "rounds": rounds, "runs": specs}, f)
        path = f.name
    try:
        out = subprocess.run(fresh_command(path), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"measuring {kernel} failed:\n{out.stderr[-3000:]}")
        with open(path + ".out", encoding="utf-8") as f:
            return json.load(f)
    finally:
        for leftover in (path, path + ".out"):
            if os.path.exists(leftover):
                os.remove(leftover)


def measure_spec_main(path):
    """The child of :func:`measure_fresh`: build, check and time; write ``<path>.out``.

    Parameters
    ----------
    path : str
        A JSON spec: ``kernel``, ``rounds`` and ``runs`` (``work_dir``, ``first``).
    """
    import tvm.s_tir.tensor_intrin  # noqa: F401 - as in tuning: registers the intrinsics

    from ms_droplet.target import host_target

    from .kernels import random_args, reference_output, te_kernel
    from .records import best_of_records

    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    target = host_target()
    mod = te_kernel(spec["kernel"])
    inputs = random_args(mod["main"], np.random.default_rng(0))
    expected, _ = reference_output(spec["kernel"].split(":")[0], mod, target, inputs)
    entries = [
        {"_sch": best_of_records(run["work_dir"], mod, run.get("first"))} for run in spec["runs"]
    ]
    remeasure(entries, target, spec["rounds"], inputs, expected)
    with open(path + ".out", "w", encoding="utf-8") as f:
        json.dump(entries, f)
