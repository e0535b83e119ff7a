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
"""The ``ms-droplet`` command line: tune one kernel or a model and print what was found.

``ms-droplet`` with no arguments tunes a default kernel on this machine's CPU. Modules:
:mod:`.parser` (the options), :mod:`.commands` (`tune`, `tune-model`, `repair`, :func:`main`),
:mod:`.report` (tables and ``--json``) and :mod:`.plot` (``--plot``, needs matplotlib).
"""

from .commands import UsageError, load_workload, main, make_runner, repair, tune, tune_model_command
from .parser import (
    DEFAULT_LATENCY_ROUNDS,
    DEFAULT_MODEL_TRIALS,
    DEFAULT_TRIALS,
    DEFAULT_TRIALS_PER_ITER,
    DEFAULT_WORKLOAD,
    STRATEGIES,
    build_parser,
)
from .report import (
    SCHEMA_VERSION,
    ModelRunResult,
    TuneResult,
    format_model_result,
    format_result,
    model_result_json,
    result_json,
)

__all__ = [
    "DEFAULT_LATENCY_ROUNDS",
    "DEFAULT_MODEL_TRIALS",
    "DEFAULT_TRIALS",
    "DEFAULT_TRIALS_PER_ITER",
    "DEFAULT_WORKLOAD",
    "SCHEMA_VERSION",
    "STRATEGIES",
    "ModelRunResult",
    "TuneResult",
    "UsageError",
    "build_parser",
    "format_model_result",
    "format_result",
    "load_workload",
    "main",
    "make_runner",
    "model_result_json",
    "repair",
    "result_json",
    "tune",
    "tune_model_command",
]
