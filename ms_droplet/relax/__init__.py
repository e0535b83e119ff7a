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

The package, by concern (each module imports only those listed before it):

* :mod:`~ms_droplet.relax.prepare`: :func:`canonicalize_model`, :func:`prepare_for_tuning`,
  :func:`extract_model_tasks`, :func:`compile_untuned`.
* :mod:`~ms_droplet.relax.evaluate`: :func:`run_model`, :func:`compare_outputs`,
  :func:`compare_arrays`, :func:`measure_latency` (any executable, tuned or not).
* :mod:`~ms_droplet.relax.sources`: models from files and frameworks (:func:`load_onnx`,
  :func:`load_relax_script`, :func:`load_torch`) and ONNX Runtime as an ONNX model's
  reference (:func:`check_against_onnxruntime`).
* :mod:`~ms_droplet.relax.tune`: :func:`tune_model`, :class:`ModelTuneResult`,
  :class:`TaskRow`.
* :mod:`~ms_droplet.relax.route`: :func:`pipeline_strategy`, :class:`PipelineRoute`,
  :class:`RoutedCall`, :func:`install_pipeline_route` (how the route works is described there).

Every name is importable from ``ms_droplet.relax`` itself, as before the split.
"""

from __future__ import annotations

from .evaluate import (
    Latency,
    OutputComparison,
    compare_arrays,
    compare_outputs,
    measure_latency,
    run_model,
)
from .prepare import canonicalize_model, compile_untuned, extract_model_tasks, prepare_for_tuning
from .route import (
    TUNE_RELAX_GLOBAL,
    TUNE_TIR_GLOBAL,
    PipelineRoute,
    RoutedCall,
    install_pipeline_route,
    pipeline_route_active,
    pipeline_strategy,
)
from .sources import (
    ImportedModel,
    ModelInputError,
    NumericsMismatchError,
    check_against_onnxruntime,
    load_onnx,
    load_relax_script,
    load_torch,
)
from .tune import ModelTuneResult, TaskRow, tune_model

__all__ = [
    "ImportedModel",
    "ModelInputError",
    "NumericsMismatchError",
    "check_against_onnxruntime",
    "load_onnx",
    "load_relax_script",
    "load_torch",
    "TUNE_RELAX_GLOBAL",
    "TUNE_TIR_GLOBAL",
    "Latency",
    "ModelTuneResult",
    "OutputComparison",
    "PipelineRoute",
    "RoutedCall",
    "TaskRow",
    "canonicalize_model",
    "compare_arrays",
    "compare_outputs",
    "compile_untuned",
    "extract_model_tasks",
    "install_pipeline_route",
    "measure_latency",
    "pipeline_route_active",
    "pipeline_strategy",
    "prepare_for_tuning",
    "run_model",
    "tune_model",
]
