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
"""A MetaSchedule builder that keeps its worker processes warm.

:class:`FastBuilder` is a drop-in replacement for MetaSchedule's ``LocalBuilder``
(``builder=FastBuilder()`` in ``tune_tir``, ``tune_relax`` or ``tune_tasks``). Its artifacts are
made exactly like ``LocalBuilder``'s: the module goes through
``RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)`` and
``tvm.tirx.build(mod, target, pipeline="default")`` (what ``tvm.driver.build`` calls), and is
exported by TVM's own ``s_tir.meta_schedule.builder.default_export`` (a ``.tar`` of object files
in a fresh temporary directory), so every runner loads them unchanged.

Why it is faster
----------------
``LocalBuilder`` starts a new ``PopenPoolExecutor`` for every batch, and its default build
function imports ``tvm.s_tir.tensor_intrin`` in every new worker (12-17 s on 2 cores, counted in
the first candidate's 30 s timeout, which it sometimes exceeds when two workers import at once),
while building and exporting a small CPU kernel takes 0.1-0.2 s. FastBuilder starts its workers
once (lazily, on the first batch), reuses them across batches, and does not import the tensor
intrinsics unless a build needs them.

Tensor intrinsics at build time
-------------------------------
No CPU build needs ``tvm.s_tir.tensor_intrin`` (tensorizing happens at schedule time, in the
tuning process); CUDA tensor-core (``mma``) builds do, for two index-map functions the compiler
looks up. By default (``tensor_intrin="lazy"``) a worker imports the intrinsics only when the
module mentions one of those consumers (``tirx.mma_store*`` calls or an ``m16n8k8.*`` buffer
scope), or when a build fails with a message about a missing registration, and then builds
that candidate again; the import is not charged to the candidate's timeout. The experiments
behind this are in ``docs/builder.md`` ("Tensor intrinsics at build time").

Worker processes
----------------
Builds run in warm ``python -c`` worker processes (:mod:`ms_droplet._worker`, where the reasons
for that design are written down): a build that times out or kills its worker costs only its
candidate. Workers are recycled after ``max_builds_per_worker`` builds or when their resident
memory exceeds ``max_worker_rss_mb``. ``shutdown()``, the end of a ``with`` block, garbage
collection, an exception (``KeyboardInterrupt``) during ``build`` and interpreter exit all stop
them; a worker whose parent died exits on its own (at once if idle, else within a second).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import Literal

import psutil
import tvm
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.runtime import Module, Tensor, load_param_dict, save_param_dict
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.logging import get_logger
from tvm.target import Target

from ._worker import _Worker, worker_env

__all__ = ["FastBuilder", "default_build"]

logger = get_logger(__name__)  # pylint: disable=invalid-name

T_BUILD = Callable[[IRModule, Target, dict[str, Tensor] | None], Module]  # pylint: disable=invalid-name
T_EXPORT = Callable[[Module], str]  # pylint: disable=invalid-name

_DEFAULT_EXPORT = "s_tir.meta_schedule.builder.default_export"
_TENSOR_INTRIN_MODULE = "tvm.s_tir.tensor_intrin"
# Strings whose presence in a module's JSON means that the compiler will look up a global
# function that only ``tvm.s_tir.tensor_intrin`` registers (see the module docstring).
_INTRIN_MARKERS = ("tirx.mma_store", "m16n8k8.matrix")
# Error messages of a lookup that failed because something was not registered.
_MISSING_REGISTRATION = re.compile(r"has_value\(\)|not registered|global function", re.IGNORECASE)
_NEEDS_INTRIN = "needs_tensor_intrin"
_ARTIFACT = "artifact"


def default_build(mod: IRModule, target: Target, _params: dict[str, Tensor] | None) -> Module:
    """Build like MetaSchedule's default build function, without importing tensor intrinsics.

    Parameters
    ----------
    mod : IRModule
        The IRModule to be built.
    target : Target
        The target to be built for.
    _params : Optional[Dict[str, Tensor]]
        The parameters of a Relax build. Unused, as in ``LocalBuilder``.

    Returns
    -------
    rt_mod : Module
        The built module.
    """
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    # pylint: enable=import-outside-toplevel
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target, pipeline="default")


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _resolve(func: None | str | Callable, default: Callable) -> Callable:
    if func is None:
        return default
    if isinstance(func, str):
        return tvm.get_global_func(func)
    return func


def _tensor_intrin_loaded() -> bool:
    return _TENSOR_INTRIN_MODULE in sys.modules


def _import_tensor_intrin() -> float:
    """Import every tensor intrinsic in this worker; return the seconds it took."""
    start = time.perf_counter()
    __import__(_TENSOR_INTRIN_MODULE)
    return time.perf_counter() - start


def _mentions_intrin_consumer(mod: IRModule) -> bool:
    text = tvm.ir.save_json(mod)
    return any(marker in text for marker in _INTRIN_MARKERS)


def _build_candidate(
    f_build: None | str | T_BUILD,
    f_export: None | str | T_EXPORT,
    mod: IRModule,
    target: Target,
    params: bytearray | None,
    lazy_intrin: bool,
) -> tuple[str, str]:
    """Build and export one candidate inside a worker.

    Returns ``("artifact", path)``, or ``("needs_tensor_intrin", reason)`` when the default build
    needs ``tvm.s_tir.tensor_intrin`` and the caller should import it and ask again.
    """
    export = _resolve(f_export, tvm.get_global_func(_DEFAULT_EXPORT))
    param_dict = None if params is None else load_param_dict(params)
    if f_build is not None or not lazy_intrin or _tensor_intrin_loaded():
        rt_mod = _resolve(f_build, default_build)(mod, target, param_dict)
        return _ARTIFACT, export(rt_mod)
    # Only CUDA code generation looks the registrations up: skip serializing other modules.
    if target.kind.name == "cuda" and _mentions_intrin_consumer(mod):
        return _NEEDS_INTRIN, "the module uses a tensor-core intrinsic"
    try:
        rt_mod = default_build(mod, target, param_dict)
    except Exception as err:  # noqa: BLE001 - any build error may be a missing registration
        if _MISSING_REGISTRATION.search(str(err)):
            return _NEEDS_INTRIN, str(err).strip().splitlines()[-1]
        raise
    return _ARTIFACT, export(rt_mod)


def _worker_init(initializer: Callable[[], None] | None, preload_intrin: bool) -> int:
    if initializer is not None:
        initializer()
    if preload_intrin:
        _import_tensor_intrin()
    return os.getpid()


class _WorkerPool:
    """Warm workers, one thread per worker; safe to shut down from a finalizer."""

    def __init__(
        self,
        max_workers: int,
        initializer: Callable[[], None] | None,
        preload_intrin: bool,
        startup_timeout_sec: float,
    ) -> None:
        self.max_workers = max_workers
        self.initializer = initializer
        self.preload_intrin = preload_intrin
        self.startup_timeout_sec = startup_timeout_sec
        self.stats = dict.fromkeys(
            ("workers_started", "builds", "timeouts", "crashes", "recycled", "intrin_imports"), 0
        )
        self.env = worker_env()
        self.lock = threading.Lock()
        self.closed = False
        self.workers: set[_Worker] = set()
        self.idle: SimpleQueue[_Worker] = SimpleQueue()
        self.threads = ThreadPoolExecutor(max_workers, thread_name_prefix="FastBuilder")
        for _ in range(max_workers):
            self.idle.put(self._spawn())

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    def _spawn(self) -> _Worker:
        with self.lock:
            if self.closed:
                raise RuntimeError("FastBuilder: the worker pool was shut down")
            worker = _Worker(self.env)
            self.workers.add(worker)
            self.stats["workers_started"] += 1
        return worker

    def _replace(self, worker: _Worker, graceful: bool) -> _Worker:
        with self.lock:
            self.workers.discard(worker)
        if graceful:
            worker.close()
        else:
            worker.kill()
        return self._spawn()

    def ensure_ready(self, worker: _Worker) -> str | None:
        """Finish a worker's start-up; return an error message if it failed."""
        if worker.ready:
            return None
        outcome = worker.call(
            _worker_init, (self.initializer, self.preload_intrin), self.startup_timeout_sec
        )
        if outcome.status != "ok":
            worker.kill()
            detail = outcome.value if outcome.status == "error" else outcome.status
            return f"a worker failed to start ({detail})"
        worker.ready = True
        return None

    def _build(self, worker: _Worker, payload: tuple, timeout: float) -> tuple:
        """Build one candidate on ``worker``; return ``(artifact_path, error_msg)``."""
        error = self.ensure_ready(worker)
        if error is not None:
            return None, f"FastBuilder: {error}"
        outcome = worker.call(_build_candidate, payload, timeout)
        if outcome.status == "ok" and outcome.value[0] == _NEEDS_INTRIN:
            logger.info("FastBuilder: importing tensor intrinsics (%s)", outcome.value[1])
            self.preload_intrin = True  # workers started from now on import them at start-up
            imported = worker.call(_import_tensor_intrin, (), self.startup_timeout_sec)
            if imported.status != "ok":
                return None, f"FastBuilder: importing tensor intrinsics failed: {imported.value}"
            self.count("intrin_imports")
            outcome = worker.call(_build_candidate, payload[:-1] + (False,), timeout)
        worker.builds += 1
        self.count("builds")
        if outcome.status == "ok":
            return outcome.value[1], None
        if outcome.status == "error":
            return None, "FastBuilder: An exception occurred\n" + str(outcome.value)
        if outcome.status == "timeout":
            self.count("timeouts")
            return None, f"FastBuilder: Timeout, killed after {timeout} seconds"
        self.count("crashes")
        return None, (
            f"FastBuilder: the worker process died while building (exit code {outcome.value}); "
            "it was replaced"
        )

    def submit(self, payload: tuple, timeout: float, max_builds: int | None, max_rss_mb):
        """Build one candidate on the next idle worker, in a pool thread."""
        return self.threads.submit(self._task, payload, timeout, max_builds, max_rss_mb)

    def _task(self, payload, timeout, max_builds, max_rss_mb) -> tuple:
        worker = self.idle.get()
        try:
            if not worker.alive():  # its start-up failed, or it was killed
                worker = self._replace(worker, graceful=False)
            return self._build(worker, payload, timeout)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable payload; the batch goes on
            return None, "FastBuilder: An exception occurred\n" + traceback.format_exc()
        finally:
            self.idle.put(self._recycle(worker, max_builds, max_rss_mb))

    def _recycle(self, worker: _Worker, max_builds: int | None, max_rss_mb) -> _Worker:
        """Return ``worker``, or a fresh one if it died or wore out."""
        if self.closed:
            return worker
        alive = worker.alive()
        worn = (max_builds is not None and worker.builds >= max_builds) or (
            max_rss_mb is not None and alive and worker.rss_mb() > max_rss_mb
        )
        if alive and not worn:
            return worker
        if alive:
            self.count("recycled")
        try:
            return self._replace(worker, graceful=alive)
        except RuntimeError:  # shut down meanwhile
            return worker

    def warm_up(self) -> list[str]:
        """Start every idle worker now; return the error messages."""
        workers = [self.idle.get() for _ in range(self.max_workers)]
        try:
            errors = list(self.threads.map(self.ensure_ready, workers))
        finally:
            for worker in workers:
                self.idle.put(worker)
        return [error for error in errors if error is not None]

    def pids(self) -> list[int]:
        with self.lock:
            return sorted(w.pid for w in self.workers if w.alive())

    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            workers = list(self.workers)
            self.workers.clear()
        for worker in workers:
            worker.kill()
        self.threads.shutdown(wait=False, cancel_futures=True)


def _shutdown_pool(pool: _WorkerPool) -> None:
    pool.shutdown()


@derived_object
class FastBuilder(PyBuilder):
    """A local builder whose worker processes stay warm across batches.

    Parameters
    ----------
    max_workers : Optional[int]
        The number of worker processes. Defaults to the number of physical cores.
    timeout_sec : float
        The time limit of one candidate's build and export, enforced by the tuning process.
    max_builds_per_worker : Optional[int]
        Recycle a worker after this many builds (``None``: never), to bound memory.
    max_worker_rss_mb : Optional[float]
        Also recycle a worker whose resident memory exceeds this many MiB (``None``: no limit).
    tensor_intrin : Literal["lazy", "always", "never"]
        When workers import ``tvm.s_tir.tensor_intrin``: ``"lazy"`` only for a build that needs
        it (see the module docstring), ``"always"`` at start-up like ``LocalBuilder``,
        ``"never"``. Ignored by a custom ``f_build``.
    f_build : Union[None, str, T_BUILD]
        The build function, or the name of a global function; ``None`` is
        :func:`ms_droplet.builder.default_build`. A callable must be picklable with
        ``cloudpickle`` (a module-level function is sent by reference).
    f_export : Union[None, str, T_EXPORT]
        The export function, or the name of a global function; ``None`` is MetaSchedule's
        ``s_tir.meta_schedule.builder.default_export``.
    initializer : Optional[Callable[[], None]]
        Run once in every worker at start-up (to register functions, for instance).
    startup_timeout_sec : float
        The time limit of a worker's start-up, and of a lazy import of the tensor intrinsics.

    Notes
    -----
    The pool starts on the first :meth:`build` (or :meth:`warm_up`) and stops on
    :meth:`shutdown`, at the end of a ``with`` block, when the builder is garbage-collected, or
    at interpreter exit.
    """

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        timeout_sec: float = 30.0,
        max_builds_per_worker: int | None = 256,
        max_worker_rss_mb: float | None = 2048.0,
        tensor_intrin: Literal["lazy", "always", "never"] = "lazy",
        f_build: None | str | T_BUILD = None,
        f_export: None | str | T_EXPORT = None,
        initializer: Callable[[], None] | None = None,
        startup_timeout_sec: float = 120.0,
    ) -> None:
        super().__init__()
        if max_workers is None:
            max_workers = _physical_cores()
        if max_workers < 1:
            raise ValueError(f"FastBuilder: max_workers must be >= 1, got {max_workers}")
        if timeout_sec <= 0:
            raise ValueError(f"FastBuilder: timeout_sec must be > 0, got {timeout_sec}")
        if max_builds_per_worker is not None and max_builds_per_worker < 1:
            raise ValueError(
                f"FastBuilder: max_builds_per_worker must be >= 1, got {max_builds_per_worker}"
            )
        if tensor_intrin not in ("lazy", "always", "never"):
            raise ValueError(f"FastBuilder: unknown tensor_intrin mode {tensor_intrin!r}")
        for name, func in (("f_build", f_build), ("f_export", f_export)):
            if func is not None and not isinstance(func, str) and not callable(func):
                raise TypeError(f"FastBuilder: {name} must be None, a name or a callable")
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.max_builds_per_worker = max_builds_per_worker
        self.max_worker_rss_mb = max_worker_rss_mb
        self.tensor_intrin = tensor_intrin
        self.f_build = f_build
        self.f_export = f_export
        self.initializer = initializer
        self.startup_timeout_sec = startup_timeout_sec
        self._pool: _WorkerPool | None = None
        self._finalizer: weakref.finalize | None = None
        logger.info("FastBuilder: max_workers = %d", max_workers)

    def _get_pool(self) -> _WorkerPool:
        if self._pool is None or self._pool.closed:
            self._pool = _WorkerPool(
                self.max_workers,
                self.initializer,
                self.tensor_intrin == "always",
                self.startup_timeout_sec,
            )
            # Not a bound method: the finalizer must not keep the builder alive.
            self._finalizer = weakref.finalize(self, _shutdown_pool, self._pool)
        return self._pool

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        """Build the given inputs on the warm workers.

        Parameters
        ----------
        build_inputs : List[BuilderInput]
            The inputs to be built.

        Returns
        -------
        build_results : List[BuilderResult]
            One result per input, in order: an artifact path or an error message.
        """
        pool = self._get_pool()
        lazy = self.tensor_intrin == "lazy"
        futures = []
        try:
            for build_input in build_inputs:
                params = build_input.params
                payload = (
                    self.f_build,
                    self.f_export,
                    build_input.mod,
                    build_input.target,
                    None if params is None else save_param_dict(params),
                    lazy,
                )
                futures.append(
                    pool.submit(
                        payload,
                        self.timeout_sec,
                        self.max_builds_per_worker,
                        self.max_worker_rss_mb,
                    )
                )
            return [BuilderResult(*future.result()) for future in futures]
        except BaseException:
            # e.g. KeyboardInterrupt: do not leave builds running (interpreter exit would wait
            # for them); the next build starts a new pool.
            self.shutdown()
            raise

    def warm_up(self) -> list[int]:
        """Start the workers now (they otherwise start on the first build).

        Returns
        -------
        pids : List[int]
            The process ids of the workers.
        """
        pool = self._get_pool()
        errors = pool.warm_up()
        if errors:
            raise RuntimeError("FastBuilder: " + "; ".join(errors))
        return pool.pids()

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (empty before the first build)."""
        return [] if self._pool is None else self._pool.pids()

    def stats(self) -> dict[str, int]:
        """Counters of the current pool: workers started, builds, timeouts, crashes, ..."""
        return {} if self._pool is None else dict(self._pool.stats)

    def shutdown(self) -> None:
        """Stop every worker process. The next build starts a new pool."""
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown_pool once and detaches the finalizer
            self._finalizer = None
        self._pool = None


def _enter(self):
    return self


def _exit(self, *exc_info) -> None:
    self.shutdown()


# ``with`` looks these up on the class, which ``derived_object`` generates.
FastBuilder.__enter__ = _enter
FastBuilder.__exit__ = _exit
