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
"""How candidates are timed by default: the evaluator settings, the local runner, CPU affinity.

The library (``tune_model``, ``rpc_runner``, the pipeline route), the CLI and the benchmarks
take their defaults from here. The rule for a valid time is :mod:`ms_droplet._samples`
(re-exported here). :func:`respect_cpu_affinity` keeps TVM's runtime threads on the CPUs the
process may use (``taskset``, a container's cpuset).
"""

from __future__ import annotations

import logging
import os

from ._samples import FAILED_RUN_SECS, mean_run_secs, result_run_secs, valid_run_secs

__all__ = [
    "FAILED_RUN_SECS",
    "affinity_settings",
    "default_evaluator_config",
    "default_runner",
    "mean_run_secs",
    "physical_core_count",
    "respect_cpu_affinity",
    "result_run_secs",
    "valid_run_secs",
]

logger = logging.getLogger(__name__)

NUM_THREADS = "TVM_NUM_THREADS"
BIND_THREADS = "TVM_BIND_THREADS"
# TVM's runtime takes its thread count from OMP_NUM_THREADS when TVM_NUM_THREADS is unset, so a
# user's OMP_NUM_THREADS is a choice to keep too.
_THREAD_COUNT_VARS = (NUM_THREADS, "OMP_NUM_THREADS")

# What respect_cpu_affinity() put into os.environ, as "NAME=value,..." in os.environ itself, so
# that a child process (restricted further, say) inherits the knowledge with the values. A
# variable still holding the value recorded here is ours, not the user's: a later call may
# change it (the affinity changed) and calling again is harmless.
APPLIED = "MS_DROPLET_AFFINITY_SET"


def default_evaluator_config():
    """The runner settings of the library, the CLI and the benchmarks: three timings per call.

    Chosen from ``docs/benchmarks/build.md`` (``scripts/bench_build.py``, 6 kernels x 10 calls):
    ``number=3, repeat=3, min_repeat_ms=20`` cost 0.12 s a candidate against 0.22 s for
    MetaSchedule's default ``repeat=1, min_repeat_ms=100``, and their spread between calls was
    no larger (3.4 % against 9.4 % median coefficient of variation in that run).
    """
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # pylint: disable=import-outside-toplevel

    return EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


def default_runner(evaluator_config=None, *, ignore_ctrl_c=True):
    """The local runner of the library, the CLI and the benchmarks: an ``InterleavedRunner``.

    It takes :func:`default_evaluator_config`'s timings of every candidate in rounds over the
    batch instead of back to back (:class:`ms_droplet.runner.InterleavedRunner`): on the CPUs
    of ``docs/benchmarks/fidelity.md`` that cut the spread of a tuning number's error against
    the same schedule timed in a fresh process to about two thirds, for about 1.08x the time.

    Parameters
    ----------
    evaluator_config : EvaluatorConfig, optional
        Default :func:`default_evaluator_config`.
    ignore_ctrl_c : bool
        The worker processes ignore Ctrl-C, so that the tuning process stops after the batch
        in flight (see :mod:`ms_droplet.interrupt`); False leaves MetaSchedule's behaviour to
        the workers of the ``LocalRunner`` that measures a failed batch one by one. The
        runner's own worker never sees Ctrl-C (it runs in a session of its own); a Ctrl-C that
        interrupts the runner in the tuning process kills it.

    :func:`respect_cpu_affinity` runs first: the workers inherit the environment when they
    are spawned.
    """
    # pylint: disable=import-outside-toplevel
    from .interrupt import ignore_interrupts
    from .runner import InterleavedRunner

    # pylint: enable=import-outside-toplevel
    respect_cpu_affinity()
    return InterleavedRunner(
        evaluator_config=evaluator_config or default_evaluator_config(),
        initializer=ignore_interrupts if ignore_ctrl_c else None,
    )


def physical_core_count(cpus) -> int | None:
    """How many physical cores the logical CPUs ``cpus`` lie on, from Linux's sysfs topology.

    Parameters
    ----------
    cpus : Iterable[int]
        Logical CPU ids (e.g. ``os.sched_getaffinity(0)``).

    Returns
    -------
    int or None
        The number of distinct sibling sets (``topology/core_cpus_list``, or the older
        ``thread_siblings_list``) among ``cpus``; ``None`` when one of them cannot be read (not
        Linux, a sysfs hidden from a container), so that the caller does not guess.
    """
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{int(cpu)}/topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                with open(os.path.join(topology, name), encoding="ascii") as file:
                    cores.add(file.read().strip())
                break
            except OSError:
                continue
        else:
            return None
    return len(cores) or None


def affinity_settings(
    allowed, machine_cpus: int, environ, physical_cores: int | None = None
) -> dict[str, str]:
    """The TVM runtime variables a process restricted to ``allowed`` CPUs needs.

    TVM's CPU thread pool (``src/runtime/threading_backend.cc``) sizes itself from the whole
    machine (``hardware_concurrency() / 2`` on x86) and pins its threads to the machine's first
    cores (``TVM_BIND_THREADS`` unset or 1), whatever the process's affinity. Jobs restricted to
    disjoint cores then all run their kernels on the same first cores. Both are left alone when
    the process may use every CPU: that is TVM's default setting, and the one a deployed
    kernel meets.

    Parameters
    ----------
    allowed : Collection[int]
        The CPUs the process may run on (``os.sched_getaffinity(0)``).
    machine_cpus : int
        The machine's online CPUs (what TVM's ``std::thread::hardware_concurrency`` counts).
    environ : Mapping[str, str]
        The environment; a variable set there is kept (``OMP_NUM_THREADS`` counts as a thread
        count: TVM falls back to it).
    physical_cores : int or None
        Physical cores among ``allowed`` (:func:`physical_core_count`); ``None``: unknown, one
        thread per allowed CPU.

    Returns
    -------
    dict
        ``{"TVM_NUM_THREADS": ..., "TVM_BIND_THREADS": "0"}`` or a part of it; empty when the
        process may use the whole machine or the user set both.
    """
    count = len(allowed)
    if count == 0 or count >= machine_cpus:
        return {}
    settings = {}
    if not any(name in environ for name in _THREAD_COUNT_VARS):
        # One thread per physical core, as TVM's own default intends (its "/ 2" assumes
        # two hyper-threads per core): two threads on sibling hyper-threads share one core's
        # vector units, and TVM's static split waits for the slower. Logical CPUs when the
        # topology cannot be read.
        threads = physical_cores if physical_cores else count
        settings[NUM_THREADS] = str(max(1, min(threads, count)))
    if BIND_THREADS not in environ:
        # Unpinned threads inherit the process's affinity, so the kernel stays on its cores.
        settings[BIND_THREADS] = "0"
    return settings


def respect_cpu_affinity() -> dict[str, str]:
    """Make TVM's runtime threads respect this process's CPU affinity, through ``os.environ``.

    When ``os.sched_getaffinity(0)`` is smaller than the machine, sets ``TVM_NUM_THREADS`` to
    the physical cores among the allowed CPUs (the allowed CPUs when sysfs does not tell) and
    ``TVM_BIND_THREADS=0``; see :func:`affinity_settings`. A variable the user set (or
    ``OMP_NUM_THREADS`` for the thread count) is never overridden.

    It acts on processes started afterwards and on thread pools not yet created: LocalRunner's
    worker inherits ``os.environ`` when it is spawned (in the runner's constructor, again
    after a timeout), and TVM reads ``TVM_NUM_THREADS`` at every parallel launch but sizes and
    pins a thread's pool once, when that thread first runs a parallel kernel. Hence calls at
    the start of :func:`default_runner`, ``tune_kernel``, ``tune_model`` and the CLI. The
    tuning process's search threads (feature extraction, evolutionary search, XGBoost) are
    not pinned; these variables do not size them.

    Calling it again is harmless: values it set earlier (recorded in
    ``MS_DROPLET_AFFINITY_SET``, which child processes inherit) are its own and follow the
    current affinity.

    Returns
    -------
    dict
        The variables that hold a value set here (empty: nothing to do, or the user chose).
    """
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux: TVM's pinning is Linux-only too
        return {}
    try:
        machine = os.sysconf("SC_NPROCESSORS_ONLN")
    except (AttributeError, ValueError, OSError):
        machine = os.cpu_count() or len(allowed)
    earlier = dict(
        item.split("=", 1) for item in os.environ.get(APPLIED, "").split(",") if "=" in item
    )
    # Values set by an earlier call (here or in a parent process) do not count as the user's.
    ours = {k: v for k, v in earlier.items() if os.environ.get(k) == v}
    user_env = {k: v for k, v in os.environ.items() if k not in ours}
    wanted = affinity_settings(allowed, machine, user_env, physical_core_count(allowed))
    for name in ours.keys() - wanted.keys():
        del os.environ[name]  # the affinity widened to the whole machine since
    changed = {k: v for k, v in wanted.items() if os.environ.get(k) != v}
    os.environ.update(wanted)
    if wanted:
        os.environ[APPLIED] = ",".join(f"{k}={v}" for k, v in sorted(wanted.items()))
    else:
        os.environ.pop(APPLIED, None)
    if changed:
        logger.info(
            "CPU affinity: %s (this process may use CPUs %s of %d)",
            " ".join(f"{k}={v}" for k, v in sorted(changed.items())),
            _cpu_list(allowed),
            machine,
        )
    return wanted


def _cpu_list(cpus) -> str:
    """``{0, 1, 2, 5}`` as ``"0-2,5"``, as ``taskset`` writes it."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
