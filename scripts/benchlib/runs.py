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
"""One tuning run: one kernel, one strategy, budget and seed, in its own ``work_dir``.

Built on the package's :func:`ms_droplet.kernel.tune_kernel` (``FastBuilder``, the runner of
:mod:`ms_droplet.measure`, the work_dir checked and locked), with MetaSchedule's profiler
around it and its per-candidate curve condensed to the scripts' per-batch one.
"""

from __future__ import annotations

import math
from typing import NamedTuple


def evaluator_settings():
    """The package's default runner settings as a JSON object.

    From :func:`ms_droplet.measure.default_evaluator_config`.

    Returns
    -------
    dict
        ``number``, ``repeat``, ``min_repeat_ms``, ``enable_cpu_cache_flush``.
    """
    from ms_droplet.measure import default_evaluator_config

    config = default_evaluator_config()
    return {
        "number": config.number,
        "repeat": config.repeat,
        "min_repeat_ms": config.min_repeat_ms,
        "enable_cpu_cache_flush": config.enable_cpu_cache_flush,
    }


class Curve:
    """Best-so-far latency against trials and seconds, one point per measured batch.

    Parameters
    ----------
    candidates : sequence
        One point per measured candidate, in measurement order, with ``trial``,
        ``wall_secs`` (equal within a batch), ``secs`` (None: failed) and ``best_secs`` (None
        before the first valid time): ``KernelTuneResult.curve``.

    Attributes
    ----------
    points : list of tuple
        ``(trials so far, seconds since the start, best us)`` after each batch (``inf`` before
        the first valid time).
    trials, failed : int
        Candidates measured, and those without a valid time.
    best : float
        Best mean seconds (``inf`` without a valid time).
    """

    def __init__(self, candidates=()):
        self.points: list[tuple[int, float, float]] = []
        self.trials = self.failed = 0
        self.best = math.inf
        candidates = list(candidates)
        for i, point in enumerate(candidates):
            self.trials = point.trial
            self.failed += point.secs is None
            if point.best_secs is not None:
                self.best = min(self.best, point.best_secs)
            last_of_batch = (
                i + 1 == len(candidates) or candidates[i + 1].wall_secs != point.wall_secs
            )
            if last_of_batch:
                self.points.append((point.trial, point.wall_secs, self.best * 1e6))


class TuneRun(NamedTuple):
    """What :func:`tune_one` returns."""

    result: object
    """``ms_droplet.kernel.KernelTuneResult`` of the run."""
    wall: float
    """Wall seconds of the tuning (``KernelTuneResult.wall_secs``)."""
    curve: Curve
    profile: dict
    """MetaSchedule's profiler, seconds per scope."""
    reports: list
    """Droplet's ``DropletReport`` of each task as dicts (empty for other strategies)."""


def tune_one(
    mod,
    target,
    work_dir,
    strategy,
    budget,
    per_iter,
    seed,
    options=None,
    workers=None,
    cost_model="xgb",
):
    """One real tuning run of ``mod`` in ``work_dir``, by :func:`ms_droplet.kernel.tune_kernel`.

    Parameters
    ----------
    mod : tvm.IRModule
    target : tvm.target.Target
    work_dir : str
        The run's own (an earlier run's records there would count toward this one).
    strategy : str
        ``"droplet"`` (a ``DropletSearch(**options)``) or a MetaSchedule strategy name.
    budget, per_iter : int
        ``max_trials`` and ``num_trials_per_iter``.
    seed : int
    options : dict, optional
        ``DropletSearch`` options (droplet only).
    workers : int, optional
        ``FastBuilder`` processes (its default when None); shut down after the run.
    cost_model : str or CostModel
        Passed to ``tune_tir``.

    Returns
    -------
    TuneRun
        Its records are in ``work_dir`` (``JSONDatabase(work_dir=work_dir)``).
    """
    from tvm.s_tir import meta_schedule as ms

    from ms_droplet import DropletSearch
    from ms_droplet.builder import FastBuilder
    from ms_droplet.kernel import tune_kernel

    strat = DropletSearch(**(options or {})) if strategy == "droplet" else strategy
    builder = FastBuilder(max_workers=workers)
    try:
        with ms.Profiler() as profiler:
            result = tune_kernel(
                mod,
                target,
                work_dir,
                max_trials=budget,
                strategy=strat,
                num_trials_per_iter=per_iter,
                seed=seed,
                builder=builder,
                cost_model=cost_model,
            )
    finally:
        builder.shutdown()
    reports = [r.__dict__ for r in result.reports] if strategy == "droplet" else []
    profile = {k: float(v) for k, v in profiler.get().items()}
    return TuneRun(result, result.wall_secs, Curve(result.curve), profile, reports)


def run_settings(args):
    """The settings of a kernels x seeds comparison at budget T, for its result file.

    Parameters
    ----------
    args : argparse.Namespace
        With ``trials``, ``trials_per_iter``, ``seeds`` and ``kernels`` (comma-separated) and
        ``rounds``.

    Returns
    -------
    dict
        ``evaluator_config``, ``builder``, ``runner`` (the class of
        ``ms_droplet.measure.default_runner()``, which :func:`tune_one` uses), ``budget_T``,
        ``trials_per_iter``, ``seeds``, ``kernels``, ``rounds``.
    """
    from ms_droplet.measure import default_runner

    runner = type(default_runner())
    return {
        "evaluator_config": evaluator_settings(),
        "builder": "ms_droplet.builder.FastBuilder",
        "runner": f"{runner.__module__}.{runner.__name__}",
        "budget_T": args.trials,
        "trials_per_iter": args.trials_per_iter,
        "seeds": [int(s) for s in args.seeds.split(",")],
        "kernels": args.kernels.split(","),
        "rounds": args.rounds,
    }
