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
"""Test Meta Schedule LocalBuilder: tensor intrinsics are imported only by builds that need them"""

# pylint: disable=missing-function-docstring

import sys

import pytest
import tvm
import tvm.testing
from tvm.s_tir.meta_schedule.builder import BuilderInput, LocalBuilder
from tvm.script import ir as I
from tvm.script import tirx as T
from tvm.target import Target

TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"
CHECKED_BUILD = "meta_schedule.builder.test_build_tensor_intrin"
DEFAULT_BUILD = "s_tir.meta_schedule.builder.default_build"

# Compiling CUDA needs the CUDA code generator, not a GPU.
requires_cuda_codegen = pytest.mark.skipif(
    tvm.get_global_func("target.build.cuda", allow_missing=True) is None,
    reason="TVM is built without the CUDA code generator",
)


# fmt: off
@I.ir_module
class MatmulModule:
    @T.prim_func(s_tir=True)
    def main(a: T.handle, b: T.handle, c: T.handle) -> None:
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        A = T.match_buffer(a, (16, 16), "float32")
        B = T.match_buffer(b, (16, 16), "float32")
        C = T.match_buffer(c, (16, 16), "float32")
        for i, j, k in T.grid(16, 16, 16):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = 0.0
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]
# fmt: on


def _mma_store_module():
    # A warp tile filled and stored by the tensor-core intrinsics, as a builder receives it
    # after tensorization: building it looks up an index map that tensor_intrin registers.
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
                    16, 16, C_1.access_ptr("w"), C_warp_1.data, C_warp_1.elem_offset, s0,
                    dtype="float32",
                )  # fmt: skip

    return tvm.IRModule({"main": main})


def _checked_builder(expect_import: bool) -> LocalBuilder:
    """A LocalBuilder whose build function fails unless the worker imports tensor_intrin exactly
    when ``expect_import``."""

    def initializer():
        @tvm.register_global_func(CHECKED_BUILD)
        def checked_build(mod, target, params):  # pylint: disable=unused-variable
            if TENSOR_INTRIN in sys.modules:
                raise RuntimeError(f"{TENSOR_INTRIN} was imported before the build")
            rt_mod = tvm.get_global_func(DEFAULT_BUILD)(mod, target, params)
            if (TENSOR_INTRIN in sys.modules) != expect_import:
                raise RuntimeError(f"{TENSOR_INTRIN} imported: {TENSOR_INTRIN in sys.modules}")
            return rt_mod

    # The import itself takes seconds to tens of seconds on a small machine.
    return LocalBuilder(
        f_build=CHECKED_BUILD, initializer=initializer, max_workers=1, timeout_sec=600
    )


def test_meta_schedule_local_builder_cpu_build_skips_tensor_intrin():
    builder = _checked_builder(expect_import=False)
    (result,) = builder.build([BuilderInput(MatmulModule, Target("llvm"))])
    assert result.error_msg is None, result.error_msg
    assert result.artifact_path is not None


def test_meta_schedule_local_builder_detects_tensor_intrin_consumers():
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir.meta_schedule.builder.local_builder import _needs_tensor_intrin

    cuda = Target({"kind": "cuda", "arch": "sm_80", "thread_warp_size": 32})
    assert _needs_tensor_intrin(_mma_store_module(), cuda)
    assert not _needs_tensor_intrin(MatmulModule, cuda)
    assert not _needs_tensor_intrin(_mma_store_module(), Target("llvm"))


@requires_cuda_codegen
def test_meta_schedule_local_builder_cuda_mma_build_imports_tensor_intrin():
    target = Target({"kind": "cuda", "arch": "sm_80", "thread_warp_size": 32})
    builder = _checked_builder(expect_import=True)
    (result,) = builder.build([BuilderInput(_mma_store_module(), target)])
    assert result.error_msg is None, result.error_msg
    assert result.artifact_path is not None


if __name__ == "__main__":
    tvm.testing.main()
