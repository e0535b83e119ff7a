"""Shared fixtures: a tiny workload, the host target, a fake-measurement driver."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def host_target():
    from ms_droplet.target import host_target as make

    return make()


class LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def droplet_log():
    """Collects what DropletSearch logs when no per-task logger exists (protocol tests)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    handler = LogCollector()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def synthetic_cost(sch) -> float:
    """A deterministic objective over a schedule's decisions, in seconds.

    Minimal when every perfect tile has innermost factor 4 and the unroll index is 2.
    """
    trace = sch.trace
    cost = 1.0
    for inst in trace.insts:
        decision = trace.get_decision(inst)
        if decision is None:
            continue
        if inst.kind.name == "SamplePerfectTile":
            cost += abs(math.log2(int(decision[-1])) - 2)
        elif inst.kind.name == "SampleCategorical":
            cost += 0.3 * abs(int(decision) - 2)
    return cost * 1e-5


# A process that holds a work_dir's lock (ms_droplet.workdir) until killed; argv[1]: the dir.
HOLD_WORK_DIR = """
import sys, time
from ms_droplet.workdir import lock_work_dir
with lock_work_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_work_dir(tmp_path):
    """A work_dir whose lock another process holds; that process is killed afterwards."""
    work_dir = str(tmp_path / "work")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WORK_DIR, work_dir], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    yield work_dir, holder
    holder.kill()
    holder.wait()


def _matmul(n):
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm import te  # pylint: disable=import-outside-toplevel

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


@pytest.fixture(scope="session")
def built():
    """Artifacts of three small matmuls (16, 32 and 24 wide) and their runner inputs."""
    # pylint: disable=import-outside-toplevel
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from ms_droplet.builder import FastBuilder

    target = tvm.target.Target("llvm")
    mods = [_matmul(n) for n in (16, 32, 24)]
    with FastBuilder(max_workers=1) as builder:
        results = builder.build([BuilderInput(m, target) for m in mods])
    assert all(r.error_msg is None for r in results)
    return [
        RunnerInput(r.artifact_path, "cpu", ArgInfo.from_entry_func(m, remove_preproc=True))
        for r, m in zip(results, mods)
    ]
