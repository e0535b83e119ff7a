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
"""How candidates are timed by default: the evaluator settings and the local runner.

The library (``tune_model``, ``rpc_runner``, the pipeline route), the CLI and the benchmarks
take their defaults from here. The rule for a valid time is :mod:`ms_droplet._samples`
(re-exported here).
"""

from __future__ import annotations

from ._samples import FAILED_RUN_SECS, mean_run_secs, result_run_secs, valid_run_secs

__all__ = [
    "FAILED_RUN_SECS",
    "default_evaluator_config",
    "default_runner",
    "mean_run_secs",
    "result_run_secs",
    "valid_run_secs",
]


def default_evaluator_config():
    """The runner settings of the library, the CLI and the benchmarks: three timings per call.

    Chosen from ``docs/benchmarks/build.md`` (``scripts/bench_build.py``, 6 kernels x 10 calls):
    ``number=3, repeat=3, min_repeat_ms=20`` cost 0.12 s a candidate against 0.22 s for
    MetaSchedule's default ``repeat=1, min_repeat_ms=100``, and their spread between calls was
    no larger (3.4 % against 9.4 % median coefficient of variation in that run).
    """
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # pylint: disable=import-outside-toplevel

    return EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


def default_runner(evaluator_config=None):
    """A ``LocalRunner`` with :func:`default_evaluator_config` whose worker ignores Ctrl-C.

    The tuning process then stops after the batch in flight (see :mod:`ms_droplet.interrupt`).
    """
    from tvm.s_tir.meta_schedule.runner import LocalRunner  # pylint: disable=import-outside-toplevel

    from .interrupt import ignore_interrupts  # pylint: disable=import-outside-toplevel

    return LocalRunner(
        evaluator_config=evaluator_config or default_evaluator_config(),
        initializer=ignore_interrupts,
    )
