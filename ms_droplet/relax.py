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
"""Tune and compile whole Relax models with droplet (or any MetaSchedule strategy).

Two routes:

* :func:`tune_model`: one call from a Relax module to a runnable executable. It prepares the
  module exactly as ``compile_relax`` will (so the extracted tasks are the functions that
  ``compile_relax`` looks up), tunes every task under one global budget, compiles with the
  database, and reports per task the trials it received, how many were valid and the best
  latency, naming every task that got no valid trial.
* :func:`pipeline_strategy`: an opt-in context manager for users of
  ``relax.get_pipeline("static_shape_tuning", ...)``, whose tuning pass calls the global
  function ``tvm.s_tir.meta_schedule.tune_relax`` without a strategy argument. Inside the
  ``with`` block that pass (and ``MetaScheduleTuneTIR``, which calls
  ``tvm.s_tir.meta_schedule.tune_tir``) tunes with droplet (or the strategy given).

How the pipeline route works (TVM 0.27, verified)
--------------------------------------------------
``MetaScheduleTuneIRMod`` and ``MetaScheduleTuneTIR`` look their global function up once per
process and keep it in a C++ function-local ``static``: re-registering the global function after
a pass has run changes nothing for that pass. So on its first entry :func:`pipeline_strategy`
registers, for both names, a *dispatcher* that forwards every call to the function that was
registered before it, unless a route is active in the calling thread, and then runs one
(cheap, nothing-tuning) call of each pass to check that the C++ side now holds the dispatcher.
If a pass had already run in this process, the check fails and entering raises
``RuntimeError`` instead of silently tuning with evolutionary search. When the last route (of
any thread) exits, the original functions are registered again: ``tvm.get_global_func(name)``
then returns the original function object, and the passes, which keep the dispatcher, get the
original behaviour from it. The dispatcher stays registered under a private name too: a Python
function that only the C++ static holds is freed after Python's finalization, which crashes the
process at exit ("double free or corruption").
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ._samples import mean_run_secs, result_run_secs

logger = logging.getLogger(__name__)

TUNE_RELAX_GLOBAL = "tvm.s_tir.meta_schedule.tune_relax"
TUNE_TIR_GLOBAL = "tvm.s_tir.meta_schedule.tune_tir"
_KEEPALIVE_PREFIX = "ms_droplet.relax.dispatch_"
_SCHEDULED_ATTR = "tirx.is_scheduled"

# --------------------------------------------------------------------------------------------
# Preparing a module
# --------------------------------------------------------------------------------------------


def _as_target(target) -> Target:
    if target is None:
        from .target import host_target  # pylint: disable=import-outside-toplevel

        return host_target()
    return target if isinstance(target, Target) else Target(target)


def _relax_functions(mod) -> list[str]:
    return sorted(
        gv.name_hint for gv, func in mod.functions_items() if isinstance(func, relax.Function)
    )


def canonicalize_model(
    mod,
    target=None,
    params: Mapping[str, object] | None = None,
    entry: str | None = None,
    decompose: bool = True,
):
    """The Relax module that :func:`tune_model` tunes and compiles.

    Binds ``params`` (name -> array) as constants of the function ``entry`` and, with
    ``decompose``, runs ``DecomposeOpsForInference`` and ``CanonicalizeBindings``: the two passes
    that ``static_shape_tuning`` runs before fusion (inference batch norm becomes arithmetic that
    fuses into the preceding convolution).

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module.
    target : Target, str, dict or None
        The target (``None``: the host CPU).
    params : Optional[Mapping[str, array]]
        Weights to bind as constants (numpy arrays or ``tvm.runtime.Tensor``).
    entry : Optional[str]
        The function to bind them to; default ``"main"``, or the module's only Relax function.
    decompose : bool
        Whether to decompose inference-only operators.
    """
    target = _as_target(target)
    if params:
        functions = _relax_functions(mod)
        if entry is None:
            entry = "main" if "main" in functions or len(functions) != 1 else functions[0]
        if entry not in functions:
            raise ValueError(
                f"entry: the module has no Relax function {entry!r} to bind params to; its "
                f"Relax functions are {functions}; pass entry=<one of them>"
            )
        tensors = {
            name: value if isinstance(value, tvm.runtime.Tensor) else tvm.runtime.tensor(value)
            for name, value in params.items()
        }
        mod = relax.transform.BindParams(entry, tensors)(mod)
    if decompose:
        with target:
            mod = tvm.transform.Sequential(
                [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
            )(mod)
    return mod


def prepare_for_tuning(mod, target=None):
    """``mod`` after the passes ``compile_relax`` runs before it applies a database.

    Library dispatch (the target's ``library_dispatch_passes``), ``LegalizeOps``,
    ``AnnotateTIROpPattern``, ``FoldConstant``, ``FuseOps`` and ``FuseTIR``, under the target and
    ``PassContext(opt_level=3)`` as ``compile_relax`` runs them. Tasks extracted from the result
    are exactly the fused functions ``compile_relax`` looks up in the database.
    """
    # pylint: disable=import-outside-toplevel
    from tvm.relax import pipeline as relax_pipeline

    target = _as_target(target)
    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):  # compile_relax skips dispatch for such targets too
        dispatch = []
    passes = dispatch + [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def extract_model_tasks(
    mod,
    target=None,
    params: Mapping[str, object] | None = None,
    entry: str | None = None,
    decompose: bool = True,
    module_equality: str = "structural",
) -> list:
    """The MetaSchedule tasks of a Relax model, as :func:`tune_model` tunes them.

    :func:`canonicalize_model`, then :func:`prepare_for_tuning`, then
    ``meta_schedule.relax_integration.extract_tasks``. Returns ``ExtractedTask`` objects
    (``task_name``, ``weight``: how many call sites share the function, ``dispatched``).
    """
    target = _as_target(target)
    mod = canonicalize_model(mod, target, params, entry, decompose)
    return list(
        ms.relax_integration.extract_tasks(
            prepare_for_tuning(mod, target), target, module_equality=module_equality
        )
    )


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
        ``None``: ``LocalRunner`` with the CLI's settings
        (:func:`ms_droplet.measure.default_evaluator_config`).
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
    """
    # pylint: disable=import-outside-toplevel,too-many-locals
    from .builder import FastBuilder
    from .measure import default_evaluator_config
    from .strategy import DropletSearch, default_exploration_trials

    if int(max_trials_global) < 1:
        raise ValueError(f"max_trials_global must be >= 1, got {max_trials_global}")
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
        runner = ms.runner.LocalRunner(evaluator_config=default_evaluator_config())
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


def compile_untuned(mod, target=None):
    """``mod`` compiled as ``compile_relax`` would with an empty database.

    The same passes as the tuned build (fusion included), with every TIR function left as
    ``LegalizeOps`` wrote it: the baseline that isolates what tuning changed. (For ``llvm``,
    ``tvm.compile``'s default Relax pipeline does not fuse operators, so it would measure fusion
    as well.)
    """
    target = _as_target(target)
    return ms.relax_integration.compile_relax(ms.database.MemoryDatabase(), mod, target, None)


# --------------------------------------------------------------------------------------------
# Running, timing and comparing builds
# --------------------------------------------------------------------------------------------


def _tensors(arrays: Sequence[np.ndarray], device) -> list:
    return [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]


def _flatten(value) -> list[np.ndarray]:
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return [array for item in value for array in _flatten(item)]
    return [np.asarray(value)]


def run_model(executable, entry: str, arguments: Sequence[np.ndarray], device=None) -> list:
    """Run ``entry`` of a compiled Relax executable; its outputs as numpy arrays."""
    device = device or tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    return _flatten(vm[entry](*_tensors(arguments, device)))


@dataclass(frozen=True)
class OutputComparison:
    """How far one build's outputs are from another's (:func:`compare_outputs`)."""

    max_abs_diff: float
    max_rel_diff: float
    rtol: float
    atol: float
    ok: bool


def compare_outputs(
    reference,
    candidate,
    entry: str,
    arguments: Sequence[np.ndarray],
    rtol: float = 1e-4,
    atol: float = 1e-4,
    device=None,
) -> OutputComparison:
    """Run two executables on the same arguments and compare their outputs elementwise.

    ``ok`` is ``numpy.allclose(candidate, reference, rtol, atol)`` for every output. Default
    tolerances are for float32: tuned schedules reorder the sums of reductions (tiling,
    vectorized partial sums), which changes results by a few units in the last place of the
    partial sums, well below ``1e-4`` relative.
    """
    expected = run_model(reference, entry, arguments, device)
    actual = run_model(candidate, entry, arguments, device)
    if len(expected) != len(actual):
        raise ValueError(f"the builds return {len(expected)} and {len(actual)} outputs")
    max_abs, max_rel, ok = 0.0, 0.0, True
    for ref, out in zip(expected, actual):
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {ref.shape} and {out.shape}")
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        scale = np.abs(ref.astype(np.float64))
        rel = diff / np.where(scale > 0, scale, 1.0)
        max_rel = max(max_rel, float(rel.max(initial=0.0)))
        ok = ok and bool(np.allclose(out, ref, rtol=rtol, atol=atol))
    return OutputComparison(max_abs, max_rel, rtol, atol, ok)


@dataclass(frozen=True)
class Latency:
    """End-to-end latency samples of one build (seconds)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))


def measure_latency(
    executables: Mapping[str, object],
    entry: str,
    arguments: Sequence[np.ndarray],
    device=None,
    rounds: int = 7,
    min_repeat_ms: int = 100,
) -> dict[str, Latency]:
    """Time several builds side by side: rounds of one ``time_evaluator`` call per build.

    In each round every build is timed once (``repeat=1``, ``number`` grown until a run lasts
    ``min_repeat_ms``, after one warm-up run), the builds taking turns in alternating order, so
    that machine-wide drift touches all of them alike. Compare the medians.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = device or tvm.cpu()
    evaluators = {}
    for label, executable in executables.items():
        vm = relax.VirtualMachine(executable, device)
        timer = vm.time_evaluator(entry, device, number=1, repeat=1, min_repeat_ms=min_repeat_ms)
        evaluators[label] = (vm, timer)
    args = _tensors(arguments, device)
    samples: dict[str, list[float]] = {label: [] for label in executables}
    labels = list(executables)
    for index in range(rounds):
        for label in labels if index % 2 == 0 else reversed(labels):
            samples[label].append(float(evaluators[label][1](*args).mean))
    return {label: Latency(tuple(values)) for label, values in samples.items()}


# --------------------------------------------------------------------------------------------
# The static_shape_tuning route
# --------------------------------------------------------------------------------------------


@dataclass
class RoutedCall:
    """One call of a Relax tuning pass that a :class:`PipelineRoute` tuned.

    ``kind`` is ``"tune_relax"`` (``MetaScheduleTuneIRMod``, used by ``static_shape_tuning``) or
    ``"tune_tir"`` (``MetaScheduleTuneTIR``); ``tasks`` has one :class:`TaskRow` per task (no
    database columns).
    """

    kind: str
    work_dir: str
    max_trials_global: int
    max_trials_per_task: int | None
    tasks: list[TaskRow] = field(default_factory=list)


class _RouteState(threading.local):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[PipelineRoute] = []
        self.probing = False


_LOCK = threading.RLock()
_STATE = _RouteState()
_ORIGINALS: dict[str, object] = {}  # global name -> the function registered before ours
_DISPATCHERS: dict[str, object] = {}
_ACTIVE_ROUTES = 0  # routes entered and not exited, all threads together
_VERIFIED = False  # both C++ passes were seen calling the dispatchers


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _make_dispatcher(name: str):
    def dispatch(*args):
        if _STATE.probing:
            return args[0]
        if _STATE.stack:
            return _STATE.stack[-1]._tune(name, args)  # pylint: disable=protected-access
        return _ORIGINALS[name](*args)

    dispatch.__name__ = f"ms_droplet_dispatch_{name.rsplit('.', 1)[-1]}"
    return dispatch


def _register_dispatchers() -> None:
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    for name in (TUNE_RELAX_GLOBAL, TUNE_TIR_GLOBAL):
        if name not in _ORIGINALS:
            _ORIGINALS[name] = tvm_ffi.get_global_func(name)
            dispatcher = tvm_ffi.convert(_make_dispatcher(name))
            # A second, permanent registration keeps a reference to the dispatcher in TVM's
            # registry. Without it, once the original is registered again, the C++ pass's
            # static would hold the only reference and free it after Python's finalization
            # (seen: "double free or corruption" at interpreter exit).
            tvm_ffi.register_global_func(
                f"{_KEEPALIVE_PREFIX}{name.rsplit('.', 1)[-1]}", dispatcher, override=True
            )
            _DISPATCHERS[name] = dispatcher
        tvm_ffi.register_global_func(name, _DISPATCHERS[name], override=True)


def _restore_originals() -> None:
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    for name, original in _ORIGINALS.items():
        tvm_ffi.register_global_func(name, original, override=True)


def _probe_passes() -> None:
    """Check that both C++ tuning passes call the dispatchers (they cache the first lookup).

    Each pass runs once on an input that tunes nothing: an empty module for
    ``MetaScheduleTuneIRMod``, a one-element copy function for ``MetaScheduleTuneTIR``, and a
    ``work_dir`` under a regular file, so that an original function, if the pass still holds
    it, fails at once instead of tuning.
    """
    from tvm import te  # pylint: disable=import-outside-toplevel

    stale = []
    with tempfile.TemporaryDirectory(prefix="ms_droplet_probe_") as tmp:
        blocker = os.path.join(tmp, "not_a_directory")
        with open(blocker, "w", encoding="utf-8"):
            pass
        work_dir = os.path.join(blocker, "work")
        a = te.placeholder((1,), name="A")
        b = te.compute((1,), lambda i: a[i], name="B")
        copy_mod = tvm.IRModule({"probe": te.create_prim_func([a, b])})
        checks = [
            (
                "MetaScheduleTuneIRMod",
                TUNE_RELAX_GLOBAL,
                lambda: relax.transform.MetaScheduleTuneIRMod(
                    params={}, work_dir=work_dir, max_trials_global=1
                ),
                tvm.IRModule(),
            ),
            (
                "MetaScheduleTuneTIR",
                TUNE_TIR_GLOBAL,
                lambda: relax.transform.MetaScheduleTuneTIR(work_dir=work_dir, max_trials_global=1),
                copy_mod,
            ),
        ]
        _STATE.probing = True
        try:
            for pass_name, global_name, make, probe_mod in checks:
                try:
                    with Target({"kind": "llvm"}):
                        make()(probe_mod)
                except Exception:  # noqa: BLE001 - any failure means the original ran
                    stale.append(f"{pass_name} (calls {global_name})")
        finally:
            _STATE.probing = False
    if stale:
        raise RuntimeError(
            "pipeline_strategy: "
            + " and ".join(stale)
            + " already ran in this process and keeps the original function (TVM looks it "
            "up once per process), so it cannot be rerouted to droplet. Enter "
            "ms_droplet.relax.pipeline_strategy() (or call "
            "ms_droplet.relax.install_pipeline_route()) before the first "
            "static_shape_tuning run, or run the pipeline in a new process."
        )


def install_pipeline_route() -> None:
    """Make the Relax tuning passes call ms_droplet's dispatchers, and check that they do.

    :func:`pipeline_strategy` does this on entry; call it early (before any
    ``static_shape_tuning`` pipeline runs) if a pipeline may run in this process before the
    first route is entered. Outside a route the dispatchers forward to the original functions.
    Idempotent. Raises ``RuntimeError`` when a pass already holds the original function.
    """
    global _VERIFIED  # pylint: disable=global-statement
    with _LOCK:
        import tvm.s_tir.meta_schedule.relax_integration  # noqa: F401  pylint: disable=import-outside-toplevel
        import tvm.s_tir.meta_schedule.tir_integration  # noqa: F401  pylint: disable=import-outside-toplevel

        _register_dispatchers()
        if not _VERIFIED:
            try:
                _probe_passes()
            finally:
                if _ACTIVE_ROUTES == 0:
                    _restore_originals()
            _VERIFIED = True
        elif _ACTIVE_ROUTES == 0:
            _restore_originals()


def pipeline_route_active() -> bool:
    """Whether a :func:`pipeline_strategy` route is active in the calling thread."""
    return bool(_STATE.stack)


class PipelineRoute(contextlib.AbstractContextManager):
    """The context manager returned by :func:`pipeline_strategy`.

    Attributes
    ----------
    strategy : SearchStrategy
        The strategy every routed call uses (for droplet: ``strategy.reports``, one
        ``DropletReport`` per tuned task).
    calls : list[RoutedCall]
        The calls this route tuned, in order.
    """

    def __init__(
        self,
        strategy,
        builder,
        runner,
        num_trials_per_iter: int,
        seed: int | None,
        cost_model,
        measure_callbacks: Sequence[object],
        task_scheduler,
    ) -> None:
        self.strategy = strategy
        self.calls: list[RoutedCall] = []
        self._builder_spec = builder
        self._builder = None
        self._runner = runner
        self._num_trials_per_iter = int(num_trials_per_iter)
        self._seed = seed
        self._cost_model = cost_model
        self._measure_callbacks = list(measure_callbacks)
        self._task_scheduler = task_scheduler
        self._entered = False

    def __enter__(self) -> PipelineRoute:
        global _ACTIVE_ROUTES  # pylint: disable=global-statement
        if self._entered:
            raise RuntimeError("pipeline_strategy: this route is already entered; make a new one")
        with _LOCK:
            install_pipeline_route()
            _register_dispatchers()
            _ACTIVE_ROUTES += 1
        self._entered = True
        _STATE.stack.append(self)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        global _ACTIVE_ROUTES  # pylint: disable=global-statement
        try:
            if self in _STATE.stack:
                _STATE.stack.remove(self)
        finally:
            with _LOCK:
                _ACTIVE_ROUTES -= 1
                if _ACTIVE_ROUTES == 0:
                    _restore_originals()
            self._entered = False
            if self._builder is not None and self._builder_spec == "fast":
                self._builder.shutdown()
                self._builder = None

    def _builder_object(self):
        if self._builder is None:
            if self._builder_spec == "fast":
                from .builder import FastBuilder  # pylint: disable=import-outside-toplevel

                self._builder = FastBuilder()
            else:
                self._builder = self._builder_spec
        return self._builder

    def _runner_object(self):
        if self._runner is None:
            from .measure import default_evaluator_config  # pylint: disable=import-outside-toplevel

            self._runner = ms.runner.LocalRunner(evaluator_config=default_evaluator_config())
        return self._runner

    def _tune(self, name: str, args: tuple):
        """Run a routed ``tune_relax`` / ``tune_tir`` global call with this route's options."""
        if name == TUNE_RELAX_GLOBAL:
            mod, params, target, work_dir, max_global = args[:5]
            max_task = _int_or_none(args[5]) if len(args) > 5 else None
            op_names = [str(x) for x in args[6]] if len(args) > 6 and args[6] else None
            call = RoutedCall("tune_relax", str(work_dir), int(max_global), max_task)
            self.calls.append(call)
            # What tune_relax does, through _tune_extracted to count every task's trials.
            extracted = ms.relax_integration.extract_tasks(mod, target, dict(params or {}))
            if op_names:
                extracted = [t for t in extracted if any(n in t.task_name for n in op_names)]
            _, contexts, weights, tally = _tune_extracted(
                extracted,
                str(work_dir),
                int(max_global),
                max_trials_per_task=max_task,
                num_trials_per_iter=self._num_trials_per_iter,
                strategy=self.strategy,
                builder=self._builder_object(),
                runner=self._runner_object(),
                database="json",
                cost_model=self._cost_model,
                measure_callbacks=self._measure_callbacks,
                task_scheduler=self._task_scheduler,
                seed=self._seed,
                module_equality="structural",
            )
            call.tasks = [
                tally.row(task_id, str(ctx.task_name), float(weight))
                for task_id, (ctx, weight) in enumerate(zip(contexts, weights))
            ]
            return mod
        mod, target, work_dir, max_global = args[:4]
        call = RoutedCall("tune_tir", str(work_dir), int(max_global), None)
        self.calls.append(call)
        tally = _Tally()
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        callbacks += [tally.callback(), *self._measure_callbacks]
        scheduler = self._task_scheduler
        result = ms.tir_integration.tune_tir(
            mod,
            target,
            str(work_dir),
            int(max_global),
            num_trials_per_iter=self._num_trials_per_iter,
            builder=self._builder_object(),
            runner=self._runner_object(),
            cost_model=self._cost_model,
            measure_callbacks=callbacks,
            task_scheduler="round-robin" if scheduler == "gradient" else scheduler,
            strategy=self.strategy,
            seed=self._seed,
        )
        call.tasks = [
            tally.row(task_id, tally.names[task_id], tally.weights[task_id])
            for task_id in sorted(tally.names)
        ]
        return result


def pipeline_strategy(
    strategy="droplet",
    *,
    builder="fast",
    runner=None,
    num_trials_per_iter: int = 16,
    seed: int | None = None,
    cost_model="xgb",
    measure_callbacks: Sequence[object] = (),
    task_scheduler="gradient",
) -> PipelineRoute:
    """A context manager that makes Relax's tuning passes tune with droplet.

    ``relax.get_pipeline("static_shape_tuning", ...)`` tunes through the pass
    ``MetaScheduleTuneIRMod``, which calls the global function
    ``tvm.s_tir.meta_schedule.tune_relax`` with no strategy (and no builder, runner or batch
    size): evolutionary search, MetaSchedule's ``LocalBuilder``, 64 candidates a batch. Inside
    ``with pipeline_strategy():`` those calls (and ``MetaScheduleTuneTIR``'s calls of
    ``tune_tir``) made from this thread tune with the given strategy and options instead; the
    pass's own arguments (module, params, target, ``work_dir``, budgets, ``op_names``) are kept.

    Example::

        with ms_droplet.relax.pipeline_strategy() as route:
            mod = relax.get_pipeline(
                "static_shape_tuning", target=target, total_trials=256, work_dir="work"
            )(mod)
        print(route.calls[0].tasks, route.strategy.reports)

    Limits: the passes look the function up once per process, so the route must be entered
    (or :func:`install_pipeline_route` called) before the first tuning pipeline runs in the
    process, otherwise entering raises ``RuntimeError``; it affects only the thread that
    entered it (a pipeline run from another thread tunes as usual); the whole budget is the
    pipeline's ``total_trials``, and droplet's per-task exploration is computed from the pass's
    per-task cap (``max_trials_per_task``, default ``total_trials``), so set
    ``max_trials_per_task`` in the pipeline or give a ``DropletSearch(exploration_trials=...)``.
    Routes nest (the innermost wins). On exit, also on an exception, the calling thread's route
    is removed, and when no route is left in the process the original functions are registered
    again.

    Parameters
    ----------
    strategy : str or SearchStrategy
        ``"droplet"`` (a new ``DropletSearch``), another MetaSchedule strategy name, or a
        strategy object (e.g. ``DropletSearch(exploration_trials=32)``).
    builder : "fast", "local" or Builder
        ``"fast"``: a :class:`ms_droplet.FastBuilder` made on first use and shut down on exit.
    runner : Runner or None
        ``None``: ``LocalRunner`` with :func:`ms_droplet.measure.default_evaluator_config`.
    num_trials_per_iter : int
        Candidates per measured batch.
    seed : Optional[int]
        Seed of the tasks' random states.
    cost_model, measure_callbacks, task_scheduler
        As in ``tune_relax`` (``measure_callbacks`` run after MetaSchedule's default ones;
        ``tune_tir`` calls use ``"round-robin"`` when ``task_scheduler`` is ``"gradient"``, as
        ``tune_tir`` itself does).
    """
    if isinstance(strategy, str) and strategy == "droplet":
        from .strategy import DropletSearch  # pylint: disable=import-outside-toplevel

        strategy = DropletSearch()
    if isinstance(builder, str) and builder not in ("fast", "local"):
        raise ValueError(f"builder must be 'fast', 'local' or a Builder, got {builder!r}")
    if int(num_trials_per_iter) < 1:
        raise ValueError(f"num_trials_per_iter must be >= 1, got {num_trials_per_iter}")
    return PipelineRoute(
        strategy,
        builder,
        runner,
        num_trials_per_iter,
        seed,
        cost_model,
        measure_callbacks,
        task_scheduler,
    )
