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
"""Preparing a Relax model: the module, and its tasks, exactly as ``compile_relax`` sees them.

:func:`canonicalize_model` binds weights and decomposes inference operators,
:func:`prepare_for_tuning` runs the passes ``compile_relax`` runs before it applies a database,
:func:`extract_model_tasks` lists the tasks of the result, and :func:`compile_untuned` builds the
untuned baseline. Nothing here tunes; :mod:`ms_droplet.relax.tune` builds on these steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target


def _as_target(target) -> Target:
    if target is None:
        from ..target import host_target  # pylint: disable=import-outside-toplevel

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


def compile_untuned(mod, target=None):
    """``mod`` compiled as ``compile_relax`` would with an empty database.

    The same passes as the tuned build (fusion included), with every TIR function left as
    ``LegalizeOps`` wrote it: the baseline that isolates what tuning changed. (For ``llvm``,
    ``tvm.compile``'s default Relax pipeline does not fuse operators, so it would measure fusion
    as well.)
    """
    target = _as_target(target)
    return ms.relax_integration.compile_relax(ms.database.MemoryDatabase(), mod, target, None)
