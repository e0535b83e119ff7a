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
"""Helpers shared by the tests and the benchmarks (not needed for tuning)."""

from __future__ import annotations


def random_schedules(mod, target, count: int, seed: int = 0) -> list:
    """``count`` distinct postprocessed random schedules of ``mod``, as ReplayTrace samples them.

    Parameters
    ----------
    mod : IRModule
        The workload (one function named ``main``).
    target : Target
        The target whose design space and postprocessors are used.
    count : int
        How many distinct modules to return.
    seed : int
        Seed of the sampling.

    Returns
    -------
    mods : List[IRModule]
        The scheduled modules.
    """
    # pylint: disable=import-outside-toplevel
    import tvm
    from tvm.s_tir import Trace
    from tvm.s_tir import meta_schedule as ms

    context = ms.TuneContext(
        mod=mod,
        target=target,
        space_generator="post-order-apply",
        task_name="sample",
        rand_state=seed + 1,
    )
    spaces = context.generate_design_space()
    postprocs = context.space_generator.postprocs
    mods, seen = [], set()
    attempt = 0
    while len(mods) < count and attempt < 50 * count:
        attempt += 1
        space = spaces[attempt % len(spaces)]
        sch = tvm.s_tir.Schedule(mod, seed=seed * 100003 + attempt, debug_mask=0)
        Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()
        if not all(proc.apply(sch) for proc in postprocs):
            continue
        key = tvm.ir.save_json(sch.mod)
        if key not in seen:
            seen.add(key)
            mods.append(sch.mod)
    if len(mods) < count:
        raise RuntimeError(
            f"random_schedules: only {len(mods)} distinct schedules after {attempt} attempts"
        )
    return mods


# ----------------------------------------------------------------------------- fault injection
# Deterministic faults for the reliability tests: a candidate is chosen by the structural hash of
# its module (builds) or by the number of the call in the runner's worker process (runs).
# Module-level functions, so that ``functools.partial`` of them pickles by reference into the
# builder's and the runner's worker processes.
_run_calls = 0


def faulty_build(mod, target, params, *, fail_every: int = 0, hang_every: int = 0, hang_sec=60.0):
    """A build function that fails or hangs for some modules, else builds like FastBuilder.

    A module whose structural hash is divisible by ``fail_every`` raises; one whose hash leaves
    remainder 1 modulo ``hang_every`` sleeps ``hang_sec`` first (a build time-out).
    """
    # pylint: disable=import-outside-toplevel
    import time

    import tvm_ffi

    from .builder import default_build

    shash = int(tvm_ffi.structural_hash(mod))
    if fail_every and shash % fail_every == 0:
        raise RuntimeError(f"injected build failure (module hash {shash})")
    if hang_every and shash % hang_every == 1:
        time.sleep(hang_sec)
    return default_build(mod, target, params)


def faulty_run_evaluator(
    rt_mod,
    device,
    evaluator_config,
    repeated_args,
    *,
    fail_call: int = 0,
    hang_call: int = 0,
    period: int = 0,
    hang_sec: float = 60.0,
):
    """A run evaluator that raises on call ``fail_call`` and hangs on call ``hang_call``.

    Calls are counted per runner worker process, modulo ``period``; a time-out kills the worker,
    and its successor counts from zero again. Other calls evaluate like MetaSchedule's default.
    """
    # pylint: disable=import-outside-toplevel,global-statement
    import time

    from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator

    global _run_calls
    _run_calls += 1
    call = _run_calls % period if period else _run_calls
    if fail_call and call == fail_call:
        raise RuntimeError(f"injected run-time failure (call {_run_calls})")
    if hang_call and call == hang_call:
        time.sleep(hang_sec)
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)
