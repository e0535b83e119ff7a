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
"""Measurement fidelity: does the time the tuner optimises predict the time a deployed kernel
runs in?

The schedules of a finished run (its best distinct records and a random sample of the rest)
are timed in several *modes*, each in a fresh process of its own, one after the other:

- ``runner``: as tuning timed them. Built by the tuning builder (``FastBuilder``), run by the
  package's default runner (:func:`ms_droplet.measure.default_runner`; ``"runner": "local"``:
  MetaSchedule's ``LocalRunner``, the default before) in batches of 16, each schedule once
  per runner call; its number is the mean of the call's samples, as the database records it.
- ``interleaved``: the default runner's rounds in the measuring process itself (how its
  prototype was measured).
- ``fresh``: as deployed. Built with ``tvm.compile(sch.mod, target)`` (what a user does with
  ``compile_tir``'s schedule), all schedules loaded in one process and timed in interleaved
  rounds (A B C A B C ...) by ``time_evaluator``; its number is the median over rounds.

Both take settings (the runner's ``EvaluatorConfig``, environment variables, busy processes
beside the measurement, how arguments are filled, which build): the ablations of
``scripts/fidelity.py`` are modes with one setting changed. The pure parts (record selection,
statistics) are tested in ``tests/test_benchlib.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile

from .kernels import random_arrays
from .records import read_record_lines
from .runs import evaluator_settings

FIDELITY_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fidelity.py"
)
"""The script whose ``--child SPEC`` runs :func:`child_main` (one mode, one fresh process)."""

TUNING_BATCH = 16
"""Candidates per runner call in the ``runner`` mode, as in a tuning run's batches."""


# --------------------------------------------------------------------------------------------
# Which records
# --------------------------------------------------------------------------------------------


def distinct_schedules(lines):
    """Group a database's record lines by schedule (equal traces), valid ones only.

    Parameters
    ----------
    lines : list
        ``[workload index, [trace, run_secs, target, args_info]]`` lines
        (:func:`benchlib.records.read_record_lines`).

    Returns
    -------
    list of dict
        One per distinct trace with a valid time, fastest first: ``line`` (the index of its
        fastest record), ``recorded_us`` (that record's mean, what the database ranks by),
        ``records`` (how many records it has) and ``recorded_samples_us`` (the samples of
        that record).
    """
    from ms_droplet.measure import valid_run_secs

    groups: dict[str, dict] = {}
    for index, (_, record) in enumerate(lines):
        secs = valid_run_secs(record[1])
        if not secs:
            continue
        mean_us = 1e6 * sum(secs) / len(secs)
        key = json.dumps(record[0], sort_keys=True)
        group = groups.get(key)
        if group is None:
            groups[key] = group = {"line": index, "recorded_us": mean_us, "records": 0}
            group["recorded_samples_us"] = [1e6 * s for s in secs]
        group["records"] += 1
        if mean_us < group["recorded_us"]:
            group.update(line=index, recorded_us=mean_us)
            group["recorded_samples_us"] = [1e6 * s for s in secs]
    return sorted(groups.values(), key=lambda g: g["recorded_us"])


def select_schedules(lines, top, sample, seed):
    """The ``top`` fastest distinct schedules and ``sample`` others drawn at random.

    Parameters
    ----------
    lines : list
        Record lines, as for :func:`distinct_schedules`.
    top, sample : int
    seed : int
        Of the random draw.

    Returns
    -------
    list of dict
        The groups of :func:`distinct_schedules`, each with ``role`` ``"top"`` or
        ``"sample"``; top ones first, fastest first.
    """
    groups = distinct_schedules(lines)
    chosen = [dict(g, role="top") for g in groups[:top]]
    rest = groups[top:]
    drawn = random.Random(seed).sample(rest, min(sample, len(rest)))
    chosen += [dict(g, role="sample") for g in sorted(drawn, key=lambda g: g["recorded_us"])]
    return chosen


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def spearman(a, b):
    """Spearman's rank correlation of two equally long sequences (None below 3 values)."""
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return None if math.isnan(value) else float(value)


def within(ratios, tolerance):
    """The share of ``ratios`` within ``1 +- tolerance`` (None when empty)."""
    if not ratios:
        return None
    return sum(abs(r - 1) <= tolerance for r in ratios) / len(ratios)


def _sd(values):
    return statistics.stdev(values) if len(values) >= 2 else None


def _geomean(values):
    return statistics.geometric_mean(values) if values else None


def compare(schedules, tuning, fresh, fresh_again, tolerance=0.10):
    """How well the ``tuning`` numbers of ``schedules`` predict their ``fresh`` ones.

    Parameters
    ----------
    schedules : list of dict
        With ``role`` and a number per mode label (``schedule["us"][label]``; None: not timed).
    tuning, fresh, fresh_again : str
        Mode labels (``"recorded"`` is the database's own number); ``fresh_again`` may be None.
    tolerance : float
        For ``within``: the share of schedules whose tuning number is within
        ``1 +- tolerance`` of the fresh one.

    Returns
    -------
    dict
        Over the top schedules (``top``) and over all (``all``): ``n``, ``spearman``
        (tuning, fresh), ``spearman_fresh_again`` (fresh, fresh again), ``spearman_ratio``
        (their quotient, the target's measure), ``ratio_geomean`` (tuning / fresh), ``ratio_min``,
        ``ratio_max``, ``within``, ``log_ratio_sd`` (the spread of the ratios: the error of a
        single schedule's number beyond a shift common to all), ``pick_line`` (the tuning's
        fastest schedule), ``fresh_best_line`` and ``pick_regret`` (how much slower, fresh, the
        tuning's pick is than the fresh best; 1.0 when it is the best).
    """
    out = {"tuning": tuning, "fresh": fresh, "fresh_again": fresh_again, "tolerance": tolerance}
    for part in ("top", "all"):
        rows = [
            s
            for s in schedules
            if (part == "all" or s["role"] == "top")
            and s["us"].get(tuning)
            and s["us"].get(fresh)
            and (fresh_again is None or s["us"].get(fresh_again))
        ]
        t = [s["us"][tuning] for s in rows]
        f = [s["us"][fresh] for s in rows]
        ratios = [a / b for a, b in zip(t, f)]
        res = {
            "n": len(rows),
            "spearman": spearman(t, f),
            "ratio_geomean": _geomean(ratios),
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "within": within(ratios, tolerance),
            "log_ratio_sd": _sd([math.log(r) for r in ratios]),
        }
        if fresh_again is not None:
            again = spearman(f, [s["us"][fresh_again] for s in rows])
            res["spearman_fresh_again"] = again
            res["spearman_ratio"] = (
                res["spearman"] / again if res["spearman"] is not None and again else None
            )
        if rows:
            pick = min(range(len(rows)), key=lambda i: t[i])
            best = min(range(len(rows)), key=lambda i: f[i])
            res["pick_line"] = rows[pick]["line"]
            res["fresh_best_line"] = rows[best]["line"]
            res["pick_regret"] = f[pick] / f[best]
        out[part] = res
    return out


def paired_report(docs, first, second):
    """Pair the repetitions of modes ``first`` and ``second`` over result sets; compare them.

    The n-th timing of ``first`` in a run (``first``, ``first again``, ``first #3``...) is paired
    with the n-th of ``second``: measured minutes apart in the same study. Per pair, over the
    top schedules: the spread of log(mode / fresh), the Spearman quotient and the share within
    the tolerance.

    Parameters
    ----------
    docs : list of dict
        Result sets of ``scripts/fidelity.py`` (``fidelity.json``).
    first, second : str
        Mode names.

    Returns
    -------
    dict
        ``pairs`` (each with ``run``, ``n`` and both modes' values) and ``summary``: pairs,
        ``second_better_spread`` (count), ``spread_ratio_geomean`` (second / first),
        ``wilcoxon_p`` (two-sided, on the log spread ratios), mean quotients and shares within.
    """
    from scipy.stats import wilcoxon

    def reps(labels, mode):
        return [lab for lab in labels if lab == mode or lab.startswith(mode + " ")]

    pairs = []
    for doc in docs:
        for run in doc["runs"]:
            by_label = {c["tuning"]: c["top"] for c in run["comparisons"]}
            labels = list(by_label)
            for a, b in zip(reps(labels, first), reps(labels, second)):
                pairs.append(
                    {
                        "run": os.path.basename(run["work_dir"].rstrip("/")),
                        "labels": [a, b],
                        "spread": [by_label[a]["log_ratio_sd"], by_label[b]["log_ratio_sd"]],
                        # No quotient without a second fresh process in the plan.
                        "quotient": [
                            by_label[a].get("spearman_ratio"),
                            by_label[b].get("spearman_ratio"),
                        ],
                        "within": [by_label[a]["within"], by_label[b]["within"]],
                    }
                )
    logs = [math.log(p["spread"][1] / p["spread"][0]) for p in pairs if all(p["spread"])]

    def mean(key, i):
        values = [p[key][i] for p in pairs if p[key][i] is not None]
        return sum(values) / len(values) if values else None

    summary = {
        "modes": [first, second],
        "pairs": len(pairs),
        "second_better_spread": sum(x < 0 for x in logs),
        "spread_ratio_geomean": math.exp(statistics.fmean(logs)) if logs else None,
        "wilcoxon_p": float(wilcoxon(logs).pvalue) if len(logs) >= 5 else None,
        "quotient_mean": [mean("quotient", 0), mean("quotient", 1)],
        "within_mean": [mean("within", 0), mean("within", 1)],
    }
    return {"pairs": pairs, "summary": summary}


# --------------------------------------------------------------------------------------------
# Measuring, one mode in a fresh process
# --------------------------------------------------------------------------------------------

FRESH_DEFAULTS = {"number": 10, "min_repeat_ms": 50, "rounds": 10}
"""The ``fresh`` mode's ``time_evaluator(number, repeat=1, min_repeat_ms)`` and rounds."""


def measure_mode(work_dir, lines, mode, timeout=1800):
    """Time the records ``lines`` of ``work_dir`` in ``mode``, in a fresh process.

    Parameters
    ----------
    work_dir : str
    lines : list of int
        Indices of record lines of its ``database_tuning_record.json``.
    mode : dict
        ``kind`` (``"runner"``, ``"interleaved"`` or ``"fresh"``) and its settings:
        ``evaluator`` (runner, interleaved), ``runner`` (``"local"``: ``LocalRunner``, with
        ``alloc_repeat``; ``"rpc"``/``"rpc-ms"``: ``rpc_runner``, interleaved or MetaSchedule's
        ``RPCRunner``, through a tracker and one server started on this machine),
        ``number``/``min_repeat_ms``/``rounds`` (fresh), ``env`` (variables set for the
        process), ``load`` (busy processes running beside the measurement), ``fill``
        (``"uniform"``: floats in [-1, 1); ``"measure"``: TVM's ``random_fill_for_measure``,
        as the runner fills them), ``build`` (fresh: ``"compile"``, ``tvm.compile``; or
        ``"builder"``, the tuning builder's exported library), ``calls`` (runner calls),
        ``seed`` (the order schedules are sent in).

    Returns
    -------
    list of list of float
        Per line, its samples in microseconds: per runner call the call's mean (``runner``),
        or per round one time (``fresh``); an empty list where it failed.
    """
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (mode.get("env") or {}).items()})
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump({"work_dir": work_dir, "lines": lines, "mode": mode}, f)
        command = [sys.executable, FIDELITY_SCRIPT, "--child", spec_path]
        busy = [_busy_process() for _ in range(int(mode.get("load", 0)))]
        try:
            out = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
        if out.returncode != 0:
            raise RuntimeError(f"mode {mode} failed:\n{out.stderr[-3000:]}")
        with open(spec_path + ".out", encoding="utf-8") as f:
            return json.load(f)


def _busy_process():
    """A process that keeps one CPU busy until killed (work beside a measurement)."""
    return subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _schedules(work_dir, lines):
    """The scheduled modules, their target and the workload of ``lines`` of ``work_dir``."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    with open(os.path.join(work_dir, "database_workload.json"), encoding="utf-8") as f:
        workloads = [ms.database.Workload.from_json(json.loads(x)) for x in f if x.strip()]
    all_lines = read_record_lines(work_dir)
    mods, target = [], None
    for line in lines:
        index, raw = all_lines[line]
        record = ms.database.TuningRecord.from_json(raw, workloads[index])
        sch = tvm.s_tir.Schedule(workloads[index].mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        mods.append(sch.mod)
        target = record.target
    return mods, target


def _fill(arrays_info, dev, fill, rng):
    """Arguments for ``arrays_info`` (``ArgInfo``) on ``dev``: ``"uniform"``, the benchmarks'
    rule (:func:`benchlib.kernels.random_arrays`), or ``"measure"``, as the runner fills them."""
    import tvm

    if fill != "measure":
        return [tvm.runtime.tensor(a, dev) for a in random_arrays(arrays_info, rng)]
    fill_for_measure = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    args = []
    for info in arrays_info:
        arr = tvm.runtime.empty([int(x) for x in info.shape], str(info.dtype), dev)
        fill_for_measure(arr)
        args.append(arr)
    return args


def _order(n, seed):
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


class _RoundsHere:
    """The ``interleaved`` mode's runner: :class:`ms_droplet.runner.InterleavedRunner`'s rounds
    (:func:`ms_droplet.runner.time_in_rounds`) run in the measuring process itself, as the
    prototype did before the runner existed."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def run(self, runner_inputs):
        from ms_droplet.runner import batch_futures, batch_inputs, time_in_rounds

        inputs = batch_inputs(runner_inputs)
        return batch_futures(time_in_rounds(None, None, self.evaluator, inputs))


def _mode_runner(mode, evaluator, stack):
    """The runner of a ``runner`` or ``interleaved`` mode (``stack``: an ``ExitStack`` that
    holds what the runner needs while it runs: an RPC cluster)."""
    from ms_droplet.measure import default_runner

    if mode["kind"] == "interleaved":
        return _RoundsHere(evaluator)
    if mode.get("runner") in ("rpc", "rpc-ms"):
        from ms_droplet.rpc import rpc_runner
        from ms_droplet.testing import local_rpc_cluster

        cluster = stack.enter_context(local_rpc_cluster(1, key="fidelity"))
        return rpc_runner(
            cluster.tracker,
            cluster.key,
            evaluator_config=evaluator,
            interleaved=mode["runner"] == "rpc",
        )
    if mode.get("runner") == "local":
        from tvm.s_tir.meta_schedule.runner import LocalRunner

        from ms_droplet.interrupt import ignore_interrupts

        return LocalRunner(
            evaluator_config=evaluator,
            alloc_repeat=int(mode.get("alloc_repeat", 1)),
            initializer=ignore_interrupts,
        )
    return default_runner(evaluator)


def _run_runner(mods, target, mode):
    """``runner`` and ``interleaved`` modes: the tuning builder and the mode's runner, batches of
    16, ``calls`` times; a schedule's number per call is the mean of its timings."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RunnerInput

    from ms_droplet.builder import FastBuilder
    from ms_droplet.measure import result_run_secs

    evaluator = EvaluatorConfig(**dict(evaluator_settings(), **(mode.get("evaluator") or {})))
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    samples: list[list[float]] = [[] for _ in mods]
    with contextlib.ExitStack() as stack, FastBuilder() as builder:
        runner = _mode_runner(mode, evaluator, stack)
        for call in range(int(mode.get("calls", 1))):
            order = _order(len(mods), int(mode.get("seed", 0)) + call)
            for start in range(0, len(order), TUNING_BATCH):
                batch = order[start : start + TUNING_BATCH]
                built = builder.build([BuilderInput(mods[i], target) for i in batch])
                inputs, sent = [], []
                for i, b in zip(batch, built):
                    if b.error_msg is None:
                        info = ArgInfo.from_entry_func(mods[i], remove_preproc=True)
                        inputs.append(RunnerInput(b.artifact_path, device, info))
                        sent.append(i)
                for i, future in zip(sent, runner.run(inputs)):
                    secs = result_run_secs(future.result())
                    if secs:
                        samples[i].append(1e6 * sum(secs) / len(secs))
    return samples


def _run_fresh(mods, target, mode):
    """``fresh`` mode: every schedule built and loaded, then timed in interleaved rounds."""
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    settings = dict(FRESH_DEFAULTS, **{k: mode[k] for k in FRESH_DEFAULTS if k in mode})
    dev = tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu()
    rng = np.random.default_rng(0)
    fill, realloc = mode.get("fill", "uniform"), bool(mode.get("realloc", True))
    timers = []
    keep = []  # exported libraries of the "builder" build, kept until timed
    for mod in mods:
        if mode.get("build", "compile") == "builder":
            func, lib = _builder_module(mod, target, keep)
        else:
            lib = tvm.compile(mod, target=target)
            func = lib.jit() if hasattr(lib, "jit") else lib
        info = ArgInfo.from_entry_func(mod, remove_preproc=True)
        evaluator = func.time_evaluator(
            func.entry_name if mode.get("build") == "builder" else "main",
            dev,
            number=settings["number"],
            repeat=1,
            min_repeat_ms=settings["min_repeat_ms"],
        )
        timers.append((evaluator, info, _fill(info, dev, fill, rng)))
    samples: list[list[float]] = [[] for _ in mods]
    for round_ in range(int(settings["rounds"])):
        for i in _order(len(mods), int(mode.get("seed", 0)) + round_):
            evaluator, info, args = timers[i]
            if realloc and round_:
                # New arguments (new addresses) each round, the old ones freed after.
                args = _fill(info, dev, fill, rng)
            samples[i].append(1e6 * evaluator(*args).mean)
    return samples


def _builder_module(mod, target, keep):
    """Build ``mod`` as tuning does (``FastBuilder``'s build and export) and load the library."""
    import tvm

    from ms_droplet.builder import default_build

    export = tvm.get_global_func("s_tir.meta_schedule.builder.default_export")
    path = export(default_build(mod, target, None))
    keep.append(path)
    lib = tvm.runtime.load_module(path)
    return lib, lib


def child_main(spec_path):
    """Measure one mode (the spec of :func:`measure_mode`) and write ``<spec>.out``."""
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if any("tensorize" in json.dumps(raw) for _, raw in read_record_lines(spec["work_dir"])):
        # Replaying a tensorized schedule needs the intrinsics registered (10-45 s to import).
        import tvm.s_tir.tensor_intrin  # noqa: F401

    mode = spec["mode"]
    mods, target = _schedules(spec["work_dir"], spec["lines"])
    run = _run_fresh if mode["kind"] == "fresh" else _run_runner
    samples = run(mods, target, mode)
    with open(spec_path + ".out", "w", encoding="utf-8") as f:
        json.dump(samples, f)
