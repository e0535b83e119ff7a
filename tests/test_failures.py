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
"""The cause of a failed candidate, from the error messages MetaSchedule and ms_droplet write."""

from __future__ import annotations

import pytest

from ms_droplet._state import FailureWatch
from ms_droplet.failures import (
    CAUSES,
    EXIT_ALL_FAILED,
    all_failed_message,
    classify_failure,
    fix,
    main_cause,
)

# Messages as TVM 0.27 and ms_droplet write them (builder/local_builder.py,
# runner/local_runner.py, runner/rpc_runner.py, ms_droplet/builder.py) and as seen in
# docs/rpc.md and tests/test_rpc.py.
REAL_MESSAGES = [
    ("LocalBuilder: Timeout, killed after 30.0 seconds", "builder timeout"),
    ("FastBuilder: Timeout, killed after 0.001 seconds", "builder timeout"),
    (
        "LocalBuilder: An exception occurred\nTraceback (most recent call last):\n"
        '  File "x.py", line 1\ntvm.error.InternalError: Check failed: (false) is false',
        "build error",
    ),
    ("FastBuilder: An exception occurred\nValueError: bad target", "build error"),
    (
        "FastBuilder: the worker process died while building (exit code -9); it was replaced",
        "build error",
    ),
    ("LocalRunner: Timeout, killed after 30.0 seconds\n", "runner timeout"),
    ("LocalRunner: An exception occurred\nRuntimeError: Illegal instruction", "run error"),
    (
        "RPCRunner: An exception occurred\nTraceback (most recent call last):\n"
        "tvm.error.RPCSessionTimeoutError: Your 30.0s session has expired",
        "RPC",
    ),
    ("RPCRunner: An exception occurred\nConnectionResetError: [Errno 104]", "RPC"),
    ("RPCRunner: Timeout, killed after 30.0 seconds", "RPC"),
    ("RuntimeError: Unable to connect to the tracker at 127.0.0.1:9190", "RPC"),
    (None, "run error"),  # no error, but no valid time either
]


@pytest.mark.parametrize(("message", "cause"), REAL_MESSAGES)
def test_real_messages_are_classified(message, cause):
    assert classify_failure(message) == cause
    assert cause in CAUSES


def test_the_known_stage_decides_build_or_run():
    # A custom builder's message that does not say "build" is still a build failure.
    assert classify_failure("MyBuilder: Timeout after 5 s", "build") == "builder timeout"
    assert classify_failure("clang: error: unknown target CPU", "build") == "build error"
    assert classify_failure("Segmentation fault", "run") == "run error"
    # "Timeout" deep in a traceback is not the headline.
    assert classify_failure("LocalRunner: An exception occurred\nsocket timeout") == "run error"


def test_every_cause_has_a_fix_naming_what_to_change():
    assert all(fix(cause) for cause in CAUSES)
    assert "ms_droplet.FastBuilder" in fix("builder timeout")
    assert "LocalBuilder(timeout_sec=" in fix("builder timeout")
    assert "query_rpc_tracker" in fix("RPC")
    assert "-mcpu" in fix("run error")


def test_main_cause_and_the_all_failed_message():
    assert main_cause({}) is None and main_cause({"run error": 0}) is None
    assert main_cause({"run error": 1, "builder timeout": 3}) == "builder timeout"
    assert main_cause({"run error": 2, "build error": 2}) == "build error"  # tie: CAUSES order
    text = all_failed_message({"builder timeout": 3, "run error": 1}, 4)
    assert "every one of the 4 candidates" in text
    assert "builder timeout 3, run error 1" in text and "main cause is builder timeout" in text
    assert "FastBuilder" in text
    assert EXIT_ALL_FAILED == 3


def test_watch_warns_once_per_cause_after_a_first_batch_of_failures():
    watch = FailureWatch()
    watch.new_batch(4)
    timeout = "LocalBuilder: Timeout, killed after 30.0 seconds"
    assert [watch.observe(timeout) for _ in range(4)] == [None, None, None, "builder timeout"]
    watch.new_batch(4)
    assert [watch.observe(timeout) for _ in range(4)] == [None] * 4  # once per cause
    assert watch.by_cause == {"builder timeout": 8}
    assert watch.examples["builder timeout"] == timeout


def test_watch_ignores_scattered_failures():
    watch = FailureWatch()
    watch.new_batch(4)
    for _ in range(5):
        assert watch.observe("LocalRunner: An exception occurred\nx") is None
        watch.succeeded()
        assert watch.observe("LocalBuilder: An exception occurred\ny") is None
    assert watch.by_cause == {"run error": 5, "build error": 5}
    assert not watch.warned
