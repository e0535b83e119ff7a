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
"""Why candidates failed to build or run, counted by cause, and what to do about it.

MetaSchedule records a failed candidate with an error message and tunes on: a run whose every
build timed out ends normally with no valid record. The strategy warns once per cause and task
(:class:`ms_droplet._state.FailureWatch`); :func:`ms_droplet.tune_kernel` counts failures by
cause (``KernelTuneResult.failures``) and the CLI exits with :data:`EXIT_ALL_FAILED` when
every candidate of a run failed. The classifier lives in :mod:`ms_droplet._state`, which TVM's
copy of the strategy shares; the fixes here name ms_droplet's own remedies (``FastBuilder``,
the CLI's options). Pure Python: no TVM.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._state import (
    BUILD_ERROR,
    BUILDER_TIMEOUT,
    FAILURE_FIXES,
    RPC_FAILURE,
    RUN_ERROR,
    RUNNER_TIMEOUT,
    classify_failure,
)

__all__ = [
    "BUILDER_TIMEOUT",
    "BUILD_ERROR",
    "CAUSES",
    "EXIT_ALL_FAILED",
    "RPC_FAILURE",
    "RUNNER_TIMEOUT",
    "RUN_ERROR",
    "all_failed_message",
    "classify_failure",
    "fix",
    "main_cause",
]

CAUSES = (BUILDER_TIMEOUT, BUILD_ERROR, RUNNER_TIMEOUT, RUN_ERROR, RPC_FAILURE)
"""Every cause :func:`classify_failure` returns."""

EXIT_ALL_FAILED = 3
"""Exit status of ``ms-droplet tune`` / ``tune-model`` when every candidate of the run failed."""

_FIXES = {
    **FAILURE_FIXES,
    # Seen on a slow 2-core machine: every LocalBuilder build of a run timed out after 30 s.
    # FastBuilder's warm workers skip the start-up that LocalBuilder pays every batch.
    BUILDER_TIMEOUT: "building one candidate took longer than the builder's time limit, as on "
    "a slow or busy machine: use ms_droplet.FastBuilder (tune_kernel's default; the CLI's "
    "--builder fast), whose worker processes stay warm, and give it more time if it times out "
    "too, FastBuilder(timeout_sec=120); or give MetaSchedule's builder more time, "
    "LocalBuilder(timeout_sec=120)",
    RPC_FAILURE: "the RPC measurement failed: check the tracker and its servers "
    "(python -m tvm.exec.query_rpc_tracker --port PORT), that the servers run the target's "
    "architecture, and the session timeout (--rpc-session-timeout, rpc_runner("
    "session_timeout_sec=...))",
}


def fix(cause: str) -> str:
    """What to do about failures of ``cause`` (a key of :data:`CAUSES`)."""
    return _FIXES.get(cause, "see the task logs in work_dir/logs for the error")


def main_cause(failures: Mapping[str, int]) -> str | None:
    """The cause with the most failures (on a tie, the first in :data:`CAUSES`); ``None`` when
    nothing failed."""
    failed = [cause for cause, count in failures.items() if count > 0]
    if not failed:
        return None
    order = {cause: i for i, cause in enumerate(CAUSES)}
    return max(failed, key=lambda c: (failures[c], -order.get(c, len(CAUSES))))


def all_failed_message(failures: Mapping[str, int], trials: int) -> str:
    """The warning for a run whose ``trials`` candidates all failed: the main cause, the counts
    and the fix."""
    cause = main_cause(failures)
    counts = ", ".join(f"{c} {n}" for c, n in sorted(failures.items(), key=lambda x: -x[1]))
    return (
        f"every one of the {trials} candidates of this run failed ({counts}), so nothing was "
        f"tuned; the main cause is {cause}. Fix: {fix(cause)}."
    )
