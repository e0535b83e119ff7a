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
around it and its per-candidate curve condensed to the scripts' per-batch one. The A/B
scripts' variants (:func:`parse_variants`) and a run that continues a shared exploration
(:func:`continue_exploration`) are here too, for ``ab_droplet.py`` (CPU) and ``bench_gpu.py``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
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


class Variant(NamedTuple):
    """One variant of an A/B: what :func:`tune_one` is given for it."""

    strategy: str
    """``"droplet"`` or a MetaSchedule strategy name."""
    trials: int
    """Its whole budget, a shared exploration included."""
    options: dict
    """``DropletSearch`` options (empty for other strategies)."""


_PATH_SAFE = re.compile(r"^[A-Za-z0-9_.@=+-]+$")


def parse_variants(text: str, trials: int, shared: int = 0, path_safe: bool = False) -> dict:
    """The ``--variants`` argument of the A/B scripts, checked.

    Parameters
    ----------
    text : str
        A JSON object: variant name -> ``DropletSearch`` options, where ``"strategy"`` (a
        MetaSchedule strategy name instead of droplet) and ``"trials"`` (the variant's own
        budget instead of ``trials``) may appear among them.
    trials : int
        The budget T of a variant that names none.
    shared : int
        Trials of a shared exploration, which every variant's budget must exceed.
    path_safe : bool
        Names become folder names: only letters, digits and ``_ . @ = + -``.

    Returns
    -------
    dict
        name -> :class:`Variant`, in the order given (the first is the one compared with the
        others).

    Raises
    ------
    ValueError
        Naming ``--variants``, the rule broken, what was received and how to fix it.
    """
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--variants must be a JSON object name -> options, got {text!r} ({err}); e.g. "
            '\'{"droplet": {}, "step1": {"max_step": 1}}\''
        ) from None
    if not isinstance(variants, dict) or not variants:
        raise ValueError(
            f"--variants must be a non-empty JSON object name -> options, got {text!r}"
        )
    plan = {}
    for name, options in variants.items():
        if path_safe and not _PATH_SAFE.match(name):
            raise ValueError(
                f"--variants: the name {name!r} becomes a folder name; use only letters, "
                "digits and _ . @ = + -"
            )
        if not isinstance(options, dict):
            raise ValueError(
                f"--variants: variant {name!r} must map to an object of options, got {options!r}"
            )
        options = dict(options)
        strategy = options.pop("strategy", "droplet")
        budget = options.pop("trials", trials)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget <= shared:
            raise ValueError(
                f'--variants: variant {name!r} must be an object whose optional "trials" is an '
                f"integer above --shared-exploration ({shared}); got {variants[name]!r}"
            )
        if not isinstance(strategy, str) or (strategy != "droplet" and options):
            raise ValueError(
                f"--variants: variant {name!r} names the strategy {strategy!r} and the options "
                f'{sorted(options)}; options other than "strategy" and "trials" are '
                "DropletSearch's, for droplet variants only"
            )
        plan[name] = Variant(strategy, budget, options)
    return plan


def continue_exploration(explored_dir, work_dir, mod, target, cores, warm_model):
    """Prepare ``work_dir`` for a run that continues a shared exploration.

    The exploration's database (not its logs) is copied into ``work_dir``, which must not
    exist; its records then count toward the run (droplet's resume rule). Returns the cost
    model for :func:`tune_one`: XGBoost trained on every valid copied record when
    ``warm_model`` (as the exploration's own model had been), else ``"xgb"`` (a new one).
    """
    shutil.copytree(explored_dir, work_dir, ignore=shutil.ignore_patterns("logs"))
    return warm_cost_model(mod, target, work_dir, cores) if warm_model else "xgb"


def warm_cost_model(mod, target, work_dir, cores):
    """An XGBoost cost model trained on every valid record of ``work_dir``'s database."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.runner import RunnerResult
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

    from ms_droplet.measure import valid_run_secs

    model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores)
    context = ms.TuneContext(mod=mod, target=target, task_name="warm", num_threads=cores)
    database = ms.database.JSONDatabase(work_dir=work_dir)
    candidates, results = [], []
    for record in database.get_all_tuning_records():
        if not valid_run_secs(record.run_secs):
            continue
        sch = tvm.s_tir.Schedule(mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        args = ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        candidates.append(MeasureCandidate(sch, args))
        results.append(RunnerResult(run_secs=record.run_secs, error_msg=None))
    model.update(context, candidates, results)
    return model
