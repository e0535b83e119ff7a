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
"""Tuning a whole Relax model under one budget: :func:`tune_model`.

:func:`tune_model` prepares the model (:mod:`ms_droplet.relax.prepare`), tunes every task with
``meta_schedule.tune_tasks`` and compiles with the database. :class:`_Tally`, a measure callback,
counts what each task received; :class:`TaskRow` reports it. The pipeline route
(:mod:`ms_droplet.relax.route`) tunes through :func:`_tune_extracted` and :class:`_Tally` too.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .._samples import mean_run_secs, result_run_secs
from ..workdir import check_work_dir, lock_work_dir
from .prepare import _as_target, canonicalize_model, prepare_for_tuning

# The package's name, not this module's: the records keep the logger name they had before
# ms_droplet.relax became a package, so logging set up for "ms_droplet.relax" still matches.
logger = logging.getLogger(__package__)

_SCHEDULED_ATTR = "tirx.is_scheduled"

# --------------------------------------------------------------------------------------------
# Counting what each task received
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    """What one task received in a tuning run.

    Attributes
    ----------
    name : str
        The task (fused function) name.
    weight : float
        How many call sites of the model run this function.
    trials : int
        Candidates measured for this task in this run, failed ones included: the share of the
        global budget the task scheduler gave it.
    valid : int
        Of those, the ones that built and ran.
    best_secs : float
        Best mean run time among this run's valid trials (``nan`` if none).
    database_best_secs : float
        Best valid record of this workload in the database, earlier runs in the same
        ``work_dir`` included: the schedule ``compile_relax`` applies (``nan`` if none, or if
        unknown).
    applied : Optional[bool]
        Whether the compiled model uses a tuned schedule for this function (``None``: not
        checked).
    """

    name: str
    weight: float
    trials: int
    valid: int
    best_secs: float
    database_best_secs: float = math.nan
    applied: bool | None = None


class _Tally:
    """Per-task counts fed by a MeasureCallback (see :meth:`callback`)."""

    def __init__(self) -> None:
        self.trials: dict[int, int] = {}
        self.valid: dict[int, int] = {}
        self.best: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.weights: dict[int, float] = {}
        self._callback = None

    def callback(self):
        """A ``PyMeasureCallback`` that adds every measured batch to this tally."""
        if self._callback is None:
            # pylint: disable=import-outside-toplevel
            from tvm.ir.utils import derived_object
            from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

            tally = self

            @derived_object
            class TaskTrialCounter(PyMeasureCallback):
                """Counts, per task id, candidates measured and valid, and the best time."""

                def apply(
                    self, task_scheduler, task_id, measure_candidates, builder_results, results
                ):
                    tally.add(task_scheduler, int(task_id), builder_results, results)

            self._callback = TaskTrialCounter()
        return self._callback

    def add(self, task_scheduler, task_id: int, builder_results, runner_results) -> None:
        if task_id not in self.names:
            record = task_scheduler.tasks_[task_id]
            self.names[task_id] = str(record.ctx.task_name)
            self.weights[task_id] = float(record.task_weight)
        self.trials[task_id] = self.trials.get(task_id, 0) + len(runner_results)
        for built, result in zip(builder_results, runner_results):
            secs = _valid_secs(built, result)
            if secs is not None:
                self.valid[task_id] = self.valid.get(task_id, 0) + 1
                self.best[task_id] = min(self.best.get(task_id, math.inf), secs)

    def row(self, task_id: int, name: str, weight: float, **extra) -> TaskRow:
        return TaskRow(
            name=name,
            weight=float(weight),
            trials=self.trials.get(task_id, 0),
            valid=self.valid.get(task_id, 0),
            best_secs=self.best.get(task_id, math.nan),
            **extra,
        )


def _valid_secs(builder_result, runner_result) -> float | None:
    """The mean run time of a valid measurement, ``None`` for a failed one."""
    if builder_result.error_msg is not None:
        return None
    samples = result_run_secs(runner_result)
    return sum(samples) / len(samples) if samples else None


def _record_secs(record) -> float:
    return mean_run_secs(record.run_secs) if record is not None else math.nan


# --------------------------------------------------------------------------------------------
# tune_model
# --------------------------------------------------------------------------------------------


@dataclass
class ModelTuneResult:
    """What :func:`tune_model` returns.

    Attributes
    ----------
    mod : tvm.IRModule
        The Relax module that was tuned and compiled (params bound, decomposed).
    target : Target
        The target.
    executable : relax.VMExecutable
        ``compile_relax``'s result; run it with :meth:`vm`.
    database : meta_schedule.Database
        The database with this run's records (and earlier ones of the same ``work_dir``).
    tasks : list[TaskRow]
        One row per tuned task, in task order.
    strategy : str
        The strategy's name (a class name for a strategy object).
    reports : list
        ``DropletReport`` of each task when the strategy was droplet, else empty.
    work_dir : str
        Where the database and logs are.
    max_trials_global : int
        The global budget.
    tune_secs, compile_secs : float
        Wall time of tuning and of compiling.
    """

    mod: object
    target: Target
    executable: object
    database: object
    tasks: list[TaskRow]
    strategy: str
    reports: list
    work_dir: str
    max_trials_global: int
    tune_secs: float
    compile_secs: float

    @property
    def trials(self) -> int:
        """Candidates measured in this run, all tasks together."""
        return sum(row.trials for row in self.tasks)

    @property
    def no_valid_trial(self) -> list[str]:
        """Names of the tasks that got no valid (built and run) trial in this run."""
        return [row.name for row in self.tasks if row.valid == 0]

    def vm(self, device=None) -> relax.VirtualMachine:
        """A ``relax.VirtualMachine`` over the tuned executable (default device: ``tvm.cpu()``)."""
        return relax.VirtualMachine(self.executable, device or tvm.cpu())


def _holding_work_dir(tune):
    """Make ``tune`` hold its ``work_dir``'s lock for the whole call, like the CLI's ``tune``.

    The lock is taken before anything slow (canonicalizing, task extraction), so that a second
    process on the same ``work_dir`` is refused at once with :class:`ms_droplet.WorkDirBusyError`
    (the CLI's message), and it is held until compiling has read the database, which another
    process must not be writing meanwhile. With the JSON database (``database="json"``), the
    files are then checked under the lock as ``tune_kernel`` does: a torn last line (an
    interrupted run) is recovered instead of failing inside MetaSchedule. The lock is
    re-entrant in this process, so ``DropletSearch`` taking it again is fine.
    """
    signature = inspect.signature(tune)

    @functools.wraps(tune)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        work_dir = str(bound.arguments["work_dir"])
        database = bound.arguments["database"]
        with lock_work_dir(work_dir):
            if isinstance(database, str) and database == "json":
                check_work_dir(work_dir)
            return tune(*args, **kwargs)

    return locked


@_holding_work_dir
def tune_model(
    mod,
    target=None,
    work_dir: str = "ms_droplet_work",
    max_trials_global: int = 256,
    *,
    params: Mapping[str, object] | None = None,
    entry: str | None = None,
    strategy="droplet",
    max_trials_per_task: int | None = None,
    num_trials_per_iter: int = 16,
    op_names: Sequence[str] | None = None,
    builder=None,
    runner=None,
    database="json",
    cost_model="xgb",
    measure_callbacks: Sequence[object] = (),
    task_scheduler="gradient",
    seed: int | None = None,
    decompose: bool = True,
    module_equality: str = "structural",
) -> ModelTuneResult:
    """Tune every task of a Relax model under one budget and compile it with the results.

    Steps: :func:`canonicalize_model` (bind ``params``, decompose inference operators),
    :func:`prepare_for_tuning` (the fusion ``compile_relax`` does) and task extraction;
    ``meta_schedule.tune_tasks`` with MetaSchedule's gradient task scheduler; then
    ``compile_relax(database, mod, target, None)``. The budget: the scheduler first gives every
    task one batch of ``num_trials_per_iter`` candidates in task order, then picks tasks by
    estimated gain; every candidate sent counts against ``max_trials_global`` and a task gets at
    most ``max_trials_per_task`` (MetaSchedule's default: the global budget). So a budget below
    ``num_trials_per_iter`` times the number of tasks leaves the last tasks without trials; they
    are listed in :attr:`ModelTuneResult.no_valid_trial` (and logged) together with tasks whose
    every candidate failed. Such functions are compiled unscheduled, unless the database already
    had a valid record of them (``TaskRow.applied`` tells).

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module (e.g. ``ms_droplet.models.get_model("resnet18").mod``).
    target : Target, str, dict or None
        The target; ``None``: this machine's CPU (:func:`ms_droplet.target.host_target`).
    work_dir : str
        Where the JSON database and the logs go. Rerunning with the same directory resumes.
    max_trials_global : int
        The budget: candidates measured, all tasks together.
    params : Optional[Mapping[str, array]]
        Weights to bind as constants before tuning (``relax.frontend.nn`` exports take their
        weights as inputs; leave this ``None`` and pass them at run time).
    entry : Optional[str]
        The function ``params`` belong to (see :func:`canonicalize_model`).
    strategy : str or SearchStrategy
        ``"droplet"`` (default), any MetaSchedule strategy name, or a strategy object. With
        ``"droplet"`` and no ``max_trials_per_task``, each task explores for
        ``default_exploration_trials(max_trials_global // number of tasks)`` trials: MetaSchedule
        caps every task at the whole global budget, and droplet's default (half the cap,
        at least 16, up to 300) would spend a model's budget on exploration. Pass a
        ``DropletSearch`` object to choose.
    max_trials_per_task : Optional[int]
        Cap of one task (default: the global budget).
    num_trials_per_iter : int
        Candidates per measured batch (16: droplet decides a move per batch).
    op_names : Optional[Sequence[str]]
        Tune only tasks whose name contains one of these (as ``tune_relax``).
    builder : Builder or str or None
        ``None``: a :class:`ms_droplet.FastBuilder`, shut down at the end.
    runner : Runner or str or None
        ``None``: the CLI's runner (:func:`ms_droplet.measure.default_runner`).
    database, cost_model, task_scheduler, module_equality
        As in ``meta_schedule.tune_tasks``. With a ``seed`` and ``task_scheduler="gradient"``,
        the scheduler is seeded too (MetaSchedule's default draws its ties at random).
    measure_callbacks : Sequence[MeasureCallback]
        Run after MetaSchedule's default callbacks.
    seed : Optional[int]
        Seed of the tasks' random states (and of the task scheduler).
    decompose : bool
        See :func:`canonicalize_model`.

    Returns
    -------
    ModelTuneResult

    Raises
    ------
    ms_droplet.WorkDirBusyError
        Another process tunes into ``work_dir`` (checked first, before any work).
    ms_droplet.DatabaseFileError
        A malformed line in the JSON database of ``work_dir`` (a ``ValueError`` that names the
        file, the line and the fix).
    """
    # pylint: disable=import-outside-toplevel,too-many-locals
    from ..builder import FastBuilder
    from ..measure import default_runner, respect_cpu_affinity
    from ..strategy import DropletSearch, default_exploration_trials

    if int(max_trials_global) < 1:
        raise ValueError(f"max_trials_global must be >= 1, got {max_trials_global}")
    # Before the runner's worker is spawned and before the model is timed in this process.
    respect_cpu_affinity()
    target = _as_target(target)
    mod = canonicalize_model(mod, target, params, entry, decompose)
    prepared = prepare_for_tuning(mod, target)
    extracted = ms.relax_integration.extract_tasks(
        prepared, target, module_equality=module_equality
    )
    if op_names:
        extracted = [t for t in extracted if any(name in t.task_name for name in op_names)]
    if not extracted:
        raise ValueError(
            "tune_model: no task to tune"
            + (f" (op_names={list(op_names)} matched none)" if op_names else "")
            + "; the module has no operator that lowers to a TIR function"
        )
    strategy_name = strategy if isinstance(strategy, str) else type(strategy).__name__
    if isinstance(strategy, str) and strategy == "droplet":
        exploration = None
        if max_trials_per_task is None:
            exploration = default_exploration_trials(
                max(1, int(max_trials_global) // len(extracted)), num_trials_per_iter
            )
        strategy = DropletSearch(exploration_trials=exploration)
    own_builder = builder is None
    if own_builder:
        builder = FastBuilder()
    if runner is None:
        runner = default_runner(ignore_ctrl_c=False)
    start = time.perf_counter()
    try:
        db, contexts, weights, tally = _tune_extracted(
            extracted,
            work_dir,
            int(max_trials_global),
            max_trials_per_task=max_trials_per_task,
            num_trials_per_iter=num_trials_per_iter,
            strategy=strategy,
            builder=builder,
            runner=runner,
            database=database,
            cost_model=cost_model,
            measure_callbacks=measure_callbacks,
            task_scheduler=task_scheduler,
            seed=seed,
            module_equality=module_equality,
        )
    finally:
        if own_builder:
            builder.shutdown()
    tune_secs = time.perf_counter() - start

    start = time.perf_counter()
    executable = ms.relax_integration.compile_relax(db, mod, target, params=None)
    compile_secs = time.perf_counter() - start
    applied = _scheduled_functions(prepared, target, db)
    rows = []
    for task_id, (ctx, weight) in enumerate(zip(contexts, weights)):
        name = str(ctx.task_name)
        record = db.query_tuning_record(ctx.mod, target, name)
        rows.append(
            tally.row(
                task_id,
                name,
                float(weight),
                database_best_secs=_record_secs(record),
                applied=name in applied,
            )
        )
    result = ModelTuneResult(
        mod=mod,
        target=target,
        executable=executable,
        database=db,
        tasks=rows,
        strategy=strategy_name,
        reports=list(getattr(strategy, "reports", [])),
        work_dir=work_dir,
        max_trials_global=int(max_trials_global),
        tune_secs=tune_secs,
        compile_secs=compile_secs,
    )
    if result.no_valid_trial:
        logger.warning(
            "tune_model: %d of %d tasks got no valid trial (compiled unscheduled unless the "
            "database already had a record): %s",
            len(result.no_valid_trial),
            len(rows),
            ", ".join(result.no_valid_trial),
        )
    return result


def _tune_extracted(
    extracted: list,
    work_dir: str,
    max_trials_global: int,
    *,
    max_trials_per_task: int | None,
    num_trials_per_iter: int,
    strategy,
    builder,
    runner,
    database,
    cost_model,
    measure_callbacks: Sequence[object],
    task_scheduler,
    seed: int | None,
    module_equality: str,
):
    """``tune_relax``'s steps after extraction, with a per-task tally of the trials.

    Returns the database, the tune contexts and weights (task ``i`` of the tally is
    ``contexts[i]``) and the :class:`_Tally`.
    """
    os.makedirs(work_dir, exist_ok=True)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=extracted, work_dir=work_dir, strategy=strategy, seed=seed
    )
    tally = _Tally()
    callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
    callbacks += [tally.callback(), *measure_callbacks]
    if seed is not None and isinstance(task_scheduler, str) and task_scheduler == "gradient":
        task_scheduler = ms.task_scheduler.GradientBased(seed=seed)
    db = ms.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=work_dir,
        max_trials_global=max_trials_global,
        max_trials_per_task=max_trials_per_task,
        num_trials_per_iter=num_trials_per_iter,
        builder=builder,
        runner=runner,
        database=database,
        cost_model=cost_model,
        measure_callbacks=callbacks,
        task_scheduler=task_scheduler,
        module_equality=module_equality,
    )
    return db, contexts, weights, tally


def _scheduled_functions(prepared, target: Target, database) -> set[str]:
    """Names of the functions of ``prepared`` that ``MetaScheduleApplyDatabase`` schedules."""
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase()(prepared)
    return {
        gv.name_hint
        for gv, func in applied.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc)
        and func.attrs is not None
        and bool(func.attrs.get(_SCHEDULED_ATTR, False))
    }
