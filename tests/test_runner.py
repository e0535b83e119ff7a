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
"""``InterleavedRunner``: real kernels, built and timed; failures stay with their candidate.

``built`` (conftest.py): three small matmuls, 16, 32 and 24 wide."""

from __future__ import annotations

import pytest
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RunnerInput

from ms_droplet._state import RUNNER_TIMEOUT, classify_failure
from ms_droplet.measure import default_evaluator_config, default_runner, valid_run_secs
from ms_droplet.runner import InterleavedRunner, batch_inputs, time_in_rounds

FAST = EvaluatorConfig(number=2, repeat=3, min_repeat_ms=0, enable_cpu_cache_flush=False)


def _times(futures):
    return [valid_run_secs(f.result().run_secs) for f in futures]


def test_every_candidate_gets_repeat_timings(built):
    runner = InterleavedRunner(evaluator_config=FAST)
    times = _times(runner.run(built))
    assert [len(t) for t in times] == [3, 3, 3]
    assert all(x > 0 for t in times for x in t)
    # The 32-wide matmul does 8x the work of the 16-wide one.
    assert min(times[1]) > max(times[0])
    assert runner.run([]) == []


def test_a_candidate_that_does_not_load_fails_alone(built, tmp_path):
    broken = tmp_path / "not_a_library.tar"
    broken.write_bytes(b"not a tar file")
    inputs = [built[0], RunnerInput(str(broken), "cpu", built[0].args_info), built[2]]
    results = [f.result() for f in InterleavedRunner(evaluator_config=FAST).run(inputs)]
    assert results[1].run_secs is None
    assert results[1].error_msg.startswith("InterleavedRunner: An exception occurred")
    assert str(broken) in results[1].error_msg
    for result in (results[0], results[2]):
        assert result.error_msg is None and len(valid_run_secs(result.run_secs)) == 3


def _exit_for_the_32_wide(device, args_info, alloc_repeat):
    """An ``f_alloc_argument`` that kills its worker process for the 32-wide matmul."""
    import os  # pylint: disable=import-outside-toplevel

    from tvm.s_tir.meta_schedule.runner.local_runner import (  # pylint: disable=import-outside-toplevel
        default_alloc_argument,
    )

    if list(args_info[0][2]) == [32, 32]:
        os._exit(3)
    return default_alloc_argument(device, args_info, alloc_repeat)


# Sent to the workers by value: they cannot import this test module.
_exit_for_the_32_wide.__module__ = "__main__"


def test_a_candidate_that_kills_the_worker_fails_alone(built):
    runner = InterleavedRunner(evaluator_config=FAST, f_alloc_argument=_exit_for_the_32_wide)
    results = [f.result() for f in runner.run(built)]
    # Its worker died in the candidate's first call: the candidate fails alone.
    assert results[1].run_secs is None and results[1].error_msg
    assert len(valid_run_secs(results[0].run_secs)) == 3
    assert len(valid_run_secs(results[2].run_secs)) == 3
    # The worker is started again for the next batch.
    again = _times(runner.run([built[0], built[2]]))
    assert [len(t) for t in again] == [3, 3]


def _sleep_for_the_32_wide(device, args_info, alloc_repeat):
    """An ``f_alloc_argument`` that hangs (a minute) for the 32-wide matmul."""
    import time  # pylint: disable=import-outside-toplevel

    from tvm.s_tir.meta_schedule.runner.local_runner import (  # pylint: disable=import-outside-toplevel
        default_alloc_argument,
    )

    if list(args_info[0][2]) == [32, 32]:
        time.sleep(60)
    return default_alloc_argument(device, args_info, alloc_repeat)


def _exit_for_the_32_wide_second_time(marker, device, args_info, alloc_repeat):
    """An ``f_alloc_argument`` that kills its worker for the 32-wide matmul once ``marker``
    exists, and makes it on the first such call: the first call passes, the timings crash."""
    import os  # pylint: disable=import-outside-toplevel

    from tvm.s_tir.meta_schedule.runner.local_runner import (  # pylint: disable=import-outside-toplevel
        default_alloc_argument,
    )

    if list(args_info[0][2]) == [32, 32]:
        if os.path.exists(marker):
            os._exit(3)
        open(marker, "w").close()  # noqa: SIM115
    return default_alloc_argument(device, args_info, alloc_repeat)


_sleep_for_the_32_wide.__module__ = "__main__"
_exit_for_the_32_wide_second_time.__module__ = "__main__"


def test_a_hanging_candidate_is_killed_after_timeout_sec_alone(built):
    runner = InterleavedRunner(
        timeout_sec=8, evaluator_config=FAST, f_alloc_argument=_sleep_for_the_32_wide
    )
    results = [f.result() for f in runner.run(built)]
    assert results[1].run_secs is None
    assert results[1].error_msg.startswith(
        "InterleavedRunner: Timeout, killed after 8 seconds in its first call"
    )
    assert classify_failure(results[1].error_msg) == RUNNER_TIMEOUT
    assert len(valid_run_secs(results[0].run_secs)) == 3
    assert len(valid_run_secs(results[2].run_secs)) == 3


def test_a_candidate_whose_timings_would_run_past_the_limit_fails_untimed(built):
    # Three timings of at least 2.5 s each cannot fit in 6 s: known after one call, so no
    # candidate is timed at all. (The limit leaves the first call, which loads the exported
    # .tar and so links it, room on a busy 2-core machine: 2 s did not always suffice.)
    slow = EvaluatorConfig(number=1, repeat=3, min_repeat_ms=2500, enable_cpu_cache_flush=False)
    results = [
        f.result() for f in InterleavedRunner(timeout_sec=6, evaluator_config=slow).run(built)
    ]
    for result in results:
        assert result.run_secs is None
        assert result.error_msg.startswith("InterleavedRunner: Timeout: its first call took ")
        assert "so its timings would run past timeout_sec=6\n" in result.error_msg
        assert classify_failure(result.error_msg) == RUNNER_TIMEOUT


def test_timings_past_the_limit_stop_after_the_round(built):
    inputs = batch_inputs(built)
    results = time_in_rounds(None, None, FAST, inputs, timeout_sec=1e-9)
    for (times, error), item in zip(results, inputs):
        assert times is None
        assert error.startswith("Timeout: its timings took ")
        assert error.splitlines()[0].endswith("after 1 of 3 rounds")
        assert error.splitlines()[1] == item[0]
    assert [len(t) for t, _ in time_in_rounds(None, None, FAST, inputs)] == [3, 3, 3]


def test_a_worker_that_dies_in_the_rounds_falls_back_to_one_by_one(built, tmp_path):
    import functools  # pylint: disable=import-outside-toplevel

    alloc = functools.partial(_exit_for_the_32_wide_second_time, str(tmp_path / "seen"))
    results = [
        f.result()
        for f in InterleavedRunner(evaluator_config=FAST, f_alloc_argument=alloc).run(built)
    ]
    # Its first call passed; the rounds' worker died; LocalRunner measured the batch again
    # one by one, where the 32-wide killed its own worker only.
    assert (tmp_path / "seen").exists()
    assert results[1].run_secs is None and results[1].error_msg
    assert not results[1].error_msg.startswith("InterleavedRunner")
    assert len(valid_run_secs(results[0].run_secs)) == 3
    assert len(valid_run_secs(results[2].run_secs)) == 3


def test_bad_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout_sec must be > 0 seconds, got 0"):
        InterleavedRunner(timeout_sec=0)


def test_the_default_runner_is_interleaved_with_the_default_evaluator():
    import ms_droplet  # pylint: disable=import-outside-toplevel

    runner = default_runner()
    assert isinstance(runner, InterleavedRunner)
    assert ms_droplet.InterleavedRunner is InterleavedRunner
    assert runner.evaluator_config == default_evaluator_config()
