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
"""What counts as a valid measurement: the one rule, for the strategy, the CLI and the scripts.

MetaSchedule records a candidate that failed to build or run with ``run_secs=[1e10]``; other
failures leave no times at all. A measurement is valid when it has at least one time and every
time is finite, positive and below :data:`FAILED_RUN_SECS`. Pure Python: no TVM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

FAILED_RUN_SECS = 1e9
"""Times at or above this mark a failure (MetaSchedule writes 1e10 for a failed candidate)."""


def valid_run_secs(run_secs: Iterable | None) -> list[float]:
    """The run times as floats; empty when they mark a failure (none, non-finite, <= 0, 1e10).

    Accepts MetaSchedule's containers of ``FloatImm`` as well as plain numbers.
    """
    samples = [float(x) for x in (run_secs or [])]
    if any(not math.isfinite(s) or s <= 0 or s >= FAILED_RUN_SECS for s in samples):
        return []
    return samples


def mean_run_secs(run_secs: Iterable | None) -> float:
    """The mean of valid run times; NaN for a failed or missing measurement."""
    samples = valid_run_secs(run_secs)
    return sum(samples) / len(samples) if samples else math.nan


def result_run_secs(result) -> list[float]:
    """Valid run times of one runner result (anything with ``error_msg`` and ``run_secs``)."""
    if getattr(result, "error_msg", None) is not None:
        return []
    return valid_run_secs(getattr(result, "run_secs", None))
