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
"""ms_droplet: Droplet Search for Apache TVM MetaSchedule.

``import ms_droplet`` makes ``strategy="droplet"`` available to ``tune_tir``, ``tune_relax``,
``TuneContext`` and ``SearchStrategy.create`` whenever TVM is installed. The heavy pieces load
on first use. The search's core (neighbor rules, acceptance test, descent, options:
``ms_droplet._neighbors``, ``_acceptance``, ``_descent``, ``_samples``, ``_options``) imports
and runs without TVM.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .registration import STRATEGY_NAME, register

__version__ = "0.1.0.dev0"
__all__ = [
    "DatabaseFileError",
    "CurvePoint",
    "DropletOptions",
    "DropletReport",
    "DropletSearch",
    "FastBuilder",
    "InterleavedRPCRunner",
    "InterleavedRunner",
    "KernelTuneResult",
    "ModelTuneResult",
    "STRATEGY_NAME",
    "WorkDirBusyError",
    "check_work_dir",
    "default_exploration_trials",
    "lock_work_dir",
    "options_table",
    "pipeline_strategy",
    "register",
    "tune_kernel",
    "tune_model",
]

if TYPE_CHECKING:
    from ._options import DropletOptions, options_table
    from .builder import FastBuilder
    from .kernel import CurvePoint, KernelTuneResult, tune_kernel
    from .relax import ModelTuneResult, pipeline_strategy, tune_model
    from .runner import InterleavedRPCRunner, InterleavedRunner
    from .strategy import DropletReport, DropletSearch, default_exploration_trials
    from .workdir import DatabaseFileError, WorkDirBusyError, check_work_dir, lock_work_dir

_LAZY = {
    "DropletOptions": "_options",
    "options_table": "_options",
    "DropletReport": "strategy",
    "DropletSearch": "strategy",
    "default_exploration_trials": "strategy",
    "FastBuilder": "builder",
    "InterleavedRunner": "runner",
    "InterleavedRPCRunner": "runner",
    "CurvePoint": "kernel",
    "KernelTuneResult": "kernel",
    "tune_kernel": "kernel",
    "ModelTuneResult": "relax",
    "pipeline_strategy": "relax",
    "tune_model": "relax",
    "DatabaseFileError": "workdir",
    "WorkDirBusyError": "workdir",
    "check_work_dir": "workdir",
    "lock_work_dir": "workdir",
}


def __getattr__(name: str):
    # Lazy: `import tvm` runs our entry point in every process, builder workers included.
    if name in _LAZY:
        import importlib  # pylint: disable=import-outside-toplevel

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ms_droplet' has no attribute {name!r}")


def _tvm_installed() -> bool:
    try:
        return importlib.util.find_spec("tvm") is not None
    except (ImportError, ValueError):  # a finder that refuses tvm, or a broken tvm module
        return False


# The core needs no TVM: register only where TVM is installed (registration imports it).
if _tvm_installed():
    register()
