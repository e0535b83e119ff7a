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
"""Relax's tuning passes routed to droplet (or any strategy): :func:`pipeline_strategy`.

``relax.get_pipeline("static_shape_tuning", ...)`` tunes through the pass
``MetaScheduleTuneIRMod``, which calls the global function ``tvm.s_tir.meta_schedule.tune_relax``
without a strategy argument. Inside a ``with pipeline_strategy():`` block that pass (and
``MetaScheduleTuneTIR``, which calls ``tvm.s_tir.meta_schedule.tune_tir``) tunes with the given
strategy, through the same steps as :func:`ms_droplet.relax.tune_model`
(:mod:`ms_droplet.relax.tune`).

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
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..workdir import lock_work_dir
from .tune import TaskRow, _Tally, _tune_extracted

TUNE_RELAX_GLOBAL = "tvm.s_tir.meta_schedule.tune_relax"
TUNE_TIR_GLOBAL = "tvm.s_tir.meta_schedule.tune_tir"
# Registry names that keep the dispatchers alive (see _register_dispatchers); the prefix is the
# one used when ms_droplet.relax was a single module, so the registered names did not change.
_KEEPALIVE_PREFIX = "ms_droplet.relax.dispatch_"


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
                from ..builder import FastBuilder  # pylint: disable=import-outside-toplevel

                self._builder = FastBuilder()
            else:
                self._builder = self._builder_spec
        return self._builder

    def _runner_object(self):
        if self._runner is None:
            from ..measure import default_runner  # pylint: disable=import-outside-toplevel

            self._runner = default_runner(ignore_ctrl_c=False)
        return self._runner

    def _tune(self, name: str, args: tuple):
        """Run a routed ``tune_relax`` / ``tune_tir`` call holding its ``work_dir``'s lock.

        Like ``tune_model`` and the CLI: a second process tuning into the same ``work_dir`` is
        refused with ``WorkDirBusyError`` before anything is extracted or measured.
        """
        work_dir = args[3] if name == TUNE_RELAX_GLOBAL else args[2]
        with lock_work_dir(str(work_dir)):
            return self._tune_locked(name, args)

    def _tune_locked(self, name: str, args: tuple):
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
        ``None``: the runner of :func:`ms_droplet.measure.default_runner`.
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
        from ..strategy import DropletSearch  # pylint: disable=import-outside-toplevel

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
