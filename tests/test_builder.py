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
"""FastBuilder: artifacts, failure recovery, worker lifecycle, tensor intrinsics, tuning."""

import gc
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import psutil
import pytest
import tvm
import tvm.s_tir.meta_schedule as ms
from tvm import te
from tvm.s_tir.meta_schedule.builder import BuilderInput
from tvm.s_tir.meta_schedule.testing import te_workload
from tvm.script import tirx as T

from ms_droplet.builder import (
    _MISSING_REGISTRATION,
    FastBuilder,
    _mentions_intrin_consumer,
    default_build,
)
from ms_droplet.testing import random_schedules

HOST_CPU = tvm.get_global_func("target.llvm_get_system_cpu")()
TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": HOST_CPU})
CUDA_TARGET = tvm.target.Target(
    {
        "kind": "cuda",
        "arch": "sm_80",
        "max_threads_per_block": 1024,
        "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32,
    }
)
MARK = "ms_droplet_test"


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# --- build hooks, run inside the workers (pickled by reference) -------------------------------


def marked_build(mod, target, params):
    """Build normally, unless the PrimFunc is marked ``hang`` or ``crash``."""
    mark = mod["main"].attrs.get(MARK) if mod["main"].attrs is not None else None
    if mark == "hang":
        import ctypes  # pylint: disable=import-outside-toplevel

        # Sleep in native code *holding the GIL*: a timer inside the worker could not fire.
        ctypes.PyDLL(None).sleep(120)
    elif mark == "crash":
        os._exit(3)
    elif mark == "raise":
        raise RuntimeError("a build error on purpose")
    return default_build(mod, target, params)


def build_without_intrinsics(mod, target, params):
    """Build like the default, and fail if the tensor intrinsics were ever imported here."""
    assert "tvm.s_tir.tensor_intrin" not in sys.modules
    return default_build(mod, target, params)


# --- helpers ----------------------------------------------------------------------------------


def gmm_candidates(count, seed=0):
    """``count`` postprocessed random schedules of ``GMM:0`` (like ReplayTrace makes them)."""
    mod = tvm.IRModule({"main": te_workload.create_te_workload("GMM", 0)})
    return random_schedules(mod, TARGET, count, seed)


def marked(mod, mark):
    return tvm.IRModule({"main": mod["main"].with_attr(MARK, mark)})


def gmm_arrays(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((1, 128, 128)).astype("float32")
    b = rng.standard_normal((1, 128, 128)).astype("float32")
    return a, b


def run_gmm(artifact_path, a, b):
    lib = tvm.runtime.load_module(artifact_path)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((1, 128, 128), "float32"), dev)
    lib["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    return out.numpy()


def tar_digests(path):
    with tarfile.open(path) as tar:
        return {
            member.name: hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            for member in tar.getmembers()
            if member.isfile()
        }


_ARTIFACT_DIRS = []


def assert_built(results):
    for result in results:
        assert result.error_msg is None, result.error_msg
        assert os.path.isfile(result.artifact_path)
        _ARTIFACT_DIRS.append(os.path.dirname(result.artifact_path))


@pytest.fixture(scope="module", autouse=True)
def _remove_artifacts():
    yield
    for directory in _ARTIFACT_DIRS:  # each artifact has its own temporary directory
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def candidates():
    return gmm_candidates(4)


# --- tests ------------------------------------------------------------------------------------


def test_same_artifacts_as_local_builder(candidates):
    inputs = [BuilderInput(mod, TARGET) for mod in candidates]
    with FastBuilder(max_workers=2) as builder:
        fast = builder.build(inputs)
        assert builder.stats()["intrin_imports"] == 0
    # One LocalBuilder worker imports the tensor intrinsics once (12-17 s on 2 cores; its default
    # 30 s timeout, which covers that import, is not always enough when two workers import).
    local = ms.builder.LocalBuilder(max_workers=1, timeout_sec=300).build(inputs)
    assert_built(fast)
    assert_built(local)
    a, b = gmm_arrays()
    expected = np.matmul(a, b)
    for fast_result, local_result in zip(fast, local):
        assert tar_digests(fast_result.artifact_path) == tar_digests(local_result.artifact_path)
        fast_out = run_gmm(fast_result.artifact_path, a, b)
        np.testing.assert_array_equal(fast_out, run_gmm(local_result.artifact_path, a, b))
        np.testing.assert_allclose(fast_out, expected, rtol=1e-4, atol=1e-4)


def test_runner_measures_fast_artifacts(candidates):
    with FastBuilder(max_workers=2) as builder:
        results = builder.build([BuilderInput(mod, TARGET) for mod in candidates[:2]])
    assert_built(results)
    runner = ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=1, repeat=2, min_repeat_ms=0)
    )
    runner_inputs = [
        ms.runner.RunnerInput(
            result.artifact_path,
            "cpu",
            ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True),
        )
        for result, mod in zip(results, candidates)
    ]
    for future in runner.run(runner_inputs):
        run_result = future.result()
        assert run_result.error_msg is None, run_result.error_msg
        assert len(run_result.run_secs) == 2


def test_timeout_kills_worker_and_batch_goes_on(candidates):
    timeout = 3.0
    with FastBuilder(max_workers=2, timeout_sec=timeout, f_build=marked_build) as builder:
        builder.warm_up()
        pids = set(builder.worker_pids())
        start = time.perf_counter()
        results = builder.build(
            [
                BuilderInput(candidates[0], TARGET),
                BuilderInput(marked(candidates[1], "hang"), TARGET),
                BuilderInput(candidates[2], TARGET),
            ]
        )
        elapsed = time.perf_counter() - start
        assert elapsed < 60, elapsed  # the hang lasts 120 s: the kill, not speed, is checked
        assert_built([results[0], results[2]])
        assert results[1].artifact_path is None
        assert "Timeout" in results[1].error_msg
        assert builder.stats()["timeouts"] == 1
        killed = pids - set(builder.worker_pids())
        assert len(killed) == 1
        assert not any(p.is_running() and p.status() != "zombie" for p in _procs(killed))
        # The pool was repaired: the next batch uses two live workers.
        assert_built(builder.build([BuilderInput(mod, TARGET) for mod in candidates]))
        assert len(builder.worker_pids()) == 2


def test_crash_and_exception_are_per_candidate(candidates):
    with FastBuilder(max_workers=1, f_build=marked_build) as builder:
        results = builder.build(
            [
                BuilderInput(marked(candidates[0], "crash"), TARGET),
                BuilderInput(candidates[1], TARGET),
                BuilderInput(marked(candidates[2], "raise"), TARGET),
                BuilderInput(candidates[3], TARGET),
            ]
        )
        assert results[0].artifact_path is None
        assert "died" in results[0].error_msg and "exit code 3" in results[0].error_msg
        assert "a build error on purpose" in results[2].error_msg
        assert_built([results[1], results[3]])
        stats = builder.stats()
        assert stats["crashes"] == 1 and stats["workers_started"] == 2


def test_workers_are_reused_then_recycled(candidates):
    inputs = [BuilderInput(mod, TARGET) for mod in candidates[:1]]
    with FastBuilder(max_workers=1, max_builds_per_worker=2) as builder:
        pids = []
        for _ in range(5):
            assert_built(builder.build(inputs))
            pids.append(builder.worker_pids()[0])
        # A worker is replaced as soon as it reaches its limit: after builds 2 and 4.
        assert pids[0] != pids[1] == pids[2] != pids[3] == pids[4]
        assert len(set(pids)) == 3
        assert builder.stats()["recycled"] == 2
    with FastBuilder(max_workers=1, max_builds_per_worker=None, max_worker_rss_mb=1) as builder:
        assert_built(builder.build(inputs))
        assert_built(builder.build(inputs))
        assert builder.stats()["recycled"] == 2


def _procs(pids):
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return procs


def _gone(pids):
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in _procs(pids))


def test_shutdown_context_manager_and_garbage_collection(candidates):
    inputs = [BuilderInput(candidates[0], TARGET)]
    builder = FastBuilder(max_workers=2)
    assert builder.worker_pids() == []  # lazy: nothing started yet
    assert_built(builder.build(inputs))
    pids = builder.worker_pids()
    assert len(pids) == 2
    builder.shutdown()
    assert _gone(pids) and builder.worker_pids() == []
    assert_built(builder.build(inputs))  # a new pool after shutdown
    pids = builder.worker_pids()
    del builder
    gc.collect()
    assert _gone(pids)
    with FastBuilder(max_workers=1) as builder:
        assert_built(builder.build(inputs))
        pids = builder.worker_pids()
    assert _gone(pids)


def test_no_orphans_at_interpreter_exit(tmp_path):
    script = tmp_path / "leave_pool_running.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import shutil

            import tvm
            from tvm.s_tir.meta_schedule.testing import te_workload
            from tvm.s_tir.meta_schedule.builder import BuilderInput
            from ms_droplet.builder import FastBuilder

            builder = FastBuilder(max_workers=2)
            mod = tvm.IRModule({"main": te_workload.create_te_workload("GMM", 0)})
            result = builder.build([BuilderInput(mod, tvm.target.Target("llvm"))])[0]
            assert result.error_msg is None, result.error_msg
            shutil.rmtree(os.path.dirname(result.artifact_path))
            print(*builder.worker_pids())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 5
    while not _gone(pids) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone(pids)


@pytest.mark.skipif(not {"avx512f", "avx512bw"} <= _cpu_flags(), reason="needs AVX-512 BW")
def test_avx512_tensorized_dense_builds_without_intrinsics():
    # Tensorizing happens here, at schedule time, and needs the intrinsic table in *this* process.
    # ``dot_16x4_vnni`` does not compile with TVM 0.27's LLVM 22 (vpdpbusd now takes <64 x i8>),
    # so this uses the AVX-512 BW intrinsic of the same shape.
    from tvm.s_tir.tensor_intrin.x86 import (  # pylint: disable=import-outside-toplevel
        AVX512_DOT_16x4_INTRIN,
    )

    m, n, k = 32, 48, 64
    a = te.placeholder((m, k), "uint8", name="A")
    b = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute(
        (m, n),
        lambda i, j: te.sum(
            a[i, r].astype("int32") * b[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r
        ),
        name="C",
    )
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    j_o, j_i = sch.split(j, [None, 16])
    k_o, k_i = sch.split(kk, [None, 4])
    sch.reorder(i, j_o, k_o, j_i, k_i)
    sch.decompose_reduction(block, k_o)
    sch.tensorize(j_i, AVX512_DOT_16x4_INTRIN)
    assert "llvm.x86.avx512.pmaddubs.w.512" in sch.mod.script()
    assert not _mentions_intrin_consumer(sch.mod)

    with FastBuilder(max_workers=1, f_build=build_without_intrinsics) as builder:
        checked = builder.build([BuilderInput(sch.mod, TARGET)])[0]
    with FastBuilder(max_workers=1) as builder:  # the default, lazy build
        lazy = builder.build([BuilderInput(sch.mod, TARGET)])[0]
        assert builder.stats()["intrin_imports"] == 0
    assert_built([checked, lazy])

    rng = np.random.default_rng(0)
    # pmaddubsw saturates pairs of u8*i8 products to int16: keep |2*a*b| < 2**15
    a_np = rng.integers(0, 64, (m, k), dtype=np.uint8)
    b_np = rng.integers(-64, 64, (n // 16, k // 4, 16, 4), dtype=np.int8)
    b_nk = b_np.transpose(0, 2, 1, 3).reshape(n, k)
    expected = a_np.astype(np.int32) @ b_nk.T.astype(np.int32)
    dev = tvm.cpu()
    for result in (checked, lazy):
        out = tvm.runtime.tensor(np.zeros((m, n), "int32"), dev)
        lib = tvm.runtime.load_module(result.artifact_path)
        lib["main"](tvm.runtime.tensor(a_np, dev), tvm.runtime.tensor(b_np, dev), out)
        np.testing.assert_array_equal(out.numpy(), expected)


def _mma_store_module():
    """A warp tile filled and stored with the CUDA ``mma_fill`` / ``mma_store`` intrinsics.

    Written as the tensorized IR a builder receives, so that this process needs no intrinsics.
    """

    @T.prim_func(s_tir=True)
    def main(C: T.Buffer((16, 16), "float32")):
        C_warp = T.sblock_alloc_buffer((32, 8), scope="warp")
        with T.sblock("fill_o"):
            T.reads()
            T.writes(C_warp[0:32, 0:8])
            C_warp_1 = T.match_buffer(C_warp[0:32, 0:8], (32, 8), scope="warp", offset_factor=1)
            for _tx in T.thread_binding(32, thread="threadIdx.x"):
                T.cuda.mma_fill_legacy(8, C_warp_1.data, C_warp_1.elem_offset, dtype="float32")
        with T.sblock("store_o"):
            T.reads(C_warp[0:32, 0:8])
            T.writes(C[0:16, 0:16])
            C_warp_1 = T.match_buffer(C_warp[0:32, 0:8], (32, 8), scope="warp", offset_factor=1)
            s0 = T.int32()
            s1 = T.int32()
            C_1 = T.match_buffer(C[0:16, 0:16], (16, 16), strides=(s0, s1), offset_factor=1)
            for _tx in T.thread_binding(32, thread="threadIdx.x"):
                T.cuda.mma_store_legacy(
                    16,
                    16,
                    C_1.access_ptr("w"),
                    C_warp_1.data,
                    C_warp_1.elem_offset,
                    s0,
                    dtype="float32",
                )

    return tvm.IRModule({"main": main})


def test_cuda_mma_store_needs_intrinsics_and_is_detected(candidates):
    mod = _mma_store_module()
    assert _mentions_intrin_consumer(mod)
    assert not _mentions_intrin_consumer(candidates[0])
    with FastBuilder(max_workers=1, tensor_intrin="never") as builder:
        result = builder.build([BuilderInput(mod, CUDA_TARGET)])[0]
    assert result.artifact_path is None
    assert "index_map_func.has_value()" in result.error_msg
    # Without the marker check, the failure retry would still catch it.
    assert _MISSING_REGISTRATION.search(result.error_msg)


@pytest.mark.slow
def test_cuda_mma_store_builds_with_lazy_import():
    with FastBuilder(max_workers=1) as builder:
        result = builder.build([BuilderInput(_mma_store_module(), CUDA_TARGET)])[0]
        assert_built([result])
        assert builder.stats()["intrin_imports"] == 1


@pytest.mark.tuning
def test_tune_tir_with_fast_builder(tmp_path):
    mod = tvm.IRModule({"main": te_workload.create_te_workload("GMM", 0)})
    with FastBuilder() as builder:
        database = ms.tune_tir(
            mod,
            TARGET,
            str(tmp_path),
            max_trials_global=8,
            num_trials_per_iter=4,
            builder=builder,
            strategy="replay-trace",
            seed=1,
        )
        assert builder.stats()["builds"] == 8
    sch = ms.tir_integration.compile_tir(database, mod, TARGET)
    assert sch is not None
    lib = tvm.compile(sch.mod, target=TARGET)
    a, b = gmm_arrays(1)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((1, 128, 128), "float32"), dev)
    lib["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    np.testing.assert_allclose(out.numpy(), np.matmul(a, b), rtol=1e-4, atol=1e-4)
