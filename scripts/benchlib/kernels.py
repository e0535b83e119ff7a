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
"""The benchmarks' kernels (``te_workload``), their random inputs and reference outputs."""

from __future__ import annotations


def te_kernel(spec):
    """The normalized module of a ``te_workload`` kernel, as ``tune_tir`` sees it.

    Parameters
    ----------
    spec : str
        ``NAME:INDEX``, e.g. ``"GMM:1"``.

    Returns
    -------
    tvm.IRModule
    """
    from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload
    from tvm.s_tir.meta_schedule.tir_integration import _normalize_mod

    name, index = spec.split(":")
    return _normalize_mod(create_te_workload(name, int(index)))


def random_args(func, rng):
    """Random inputs (and output buffer) of a PrimFunc: integers in [-4, 4), floats in [-1, 1).

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
    rng : numpy.random.Generator

    Returns
    -------
    list of numpy.ndarray
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return random_arrays(ArgInfo.from_prim_func(func), rng)


def random_arrays(infos, rng):
    """Random arrays for ``ArgInfo``s, by :func:`random_args`'s rule.

    Parameters
    ----------
    infos : sequence of tvm.s_tir.meta_schedule.arg_info.TensorInfo
    rng : numpy.random.Generator

    Returns
    -------
    list of numpy.ndarray
    """
    arrays = []
    for info in infos:
        shape = [int(x) for x in info.shape]
        dtype = str(info.dtype)
        if "int" in dtype:
            arrays.append(rng.integers(-4, 4, size=shape).astype(dtype))
        else:
            arrays.append(rng.uniform(-1, 1, size=shape).astype(dtype))
    return arrays


def reference_output(name, mod, target, inputs):
    """The expected output on the CPU: numpy for batch matmul, the untuned TVM build otherwise.

    Parameters
    ----------
    name : str
        The kernel's ``te_workload`` name (``"GMM"``, ``"C2D"``, ...).
    mod : tvm.IRModule
    target : tvm.target.Target
        A CPU target.
    inputs : list of numpy.ndarray
        From :func:`random_args`; the last is the output.

    Returns
    -------
    tuple
        ``(expected output, what computed it)``.
    """
    import tvm

    if name == "GMM":
        return inputs[0] @ inputs[1], "numpy"
    lib = tvm.compile(mod, target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    lib(*args)
    return args[-1].numpy(), "untuned TVM build"
