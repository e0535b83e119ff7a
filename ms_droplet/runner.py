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
"""A local runner that times each batch in interleaved rounds.

MetaSchedule's ``LocalRunner`` times the candidates of a batch one after the other: all of a
candidate's ``repeat`` timings are taken back to back, within some 60 ms. On the CPUs measured
in ``docs/benchmarks/fidelity.md`` the machine's speed changes in episodes of about a second
(everything run then is 1.4-1.9x slower), so a candidate timed during one gets all of its
timings slow, and its record misleads the search. :class:`InterleavedRunner` loads the whole
batch in its worker and takes the same timings in rounds, A B C ... A B C ...: each candidate's
timings are spread over the batch's time, and an episode touches a share of each instead of
all of a few. Same timings, same cost; the records hold the same ``repeat`` samples.

A batch's candidates share one worker process. If that worker fails as a whole (a candidate
crashed it, or the batch ran past ``timeout_sec`` per candidate), the batch is measured again
candidate by candidate by a ``LocalRunner`` with the same settings, so that one bad candidate
fails alone. An error of one candidate inside the worker (a module that does not load, a
kernel that raises) fails that candidate only.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    LocalRunner,
    PyRunner,
    RunnerInput,
)
from tvm.s_tir.meta_schedule.runner.local_runner import (
    LocalRunnerFuture,
    default_alloc_argument,
    default_cleanup,
)
from tvm.s_tir.meta_schedule.utils import get_global_func_with_default_on_worker
from tvm.support.popen_pool import PopenWorker

__all__ = ["InterleavedRunner", "time_in_rounds"]


def time_in_rounds(
    f_alloc_argument: str | Callable | None,
    f_cleanup: str | Callable | None,
    evaluator_config: EvaluatorConfig,
    inputs: list[tuple[str, str, tuple]],
) -> list[tuple[list[float] | None, str | None]]:
    """Load every candidate, then time them in ``evaluator_config.repeat`` rounds.

    What :class:`InterleavedRunner`'s worker runs for a batch; callable in any process.

    Parameters
    ----------
    f_alloc_argument, f_cleanup : str or callable or None
        As in ``LocalRunner`` (``None``: its defaults).
    evaluator_config : EvaluatorConfig
    inputs : list of tuple
        ``(artifact path, device type, args_info as JSON)`` per candidate.

    Returns
    -------
    list of tuple
        Per input, ``(timings in seconds, None)`` or ``(None, error message)``.
    """
    alloc = get_global_func_with_default_on_worker(f_alloc_argument, default_alloc_argument)
    cleanup = get_global_func_with_default_on_worker(f_cleanup, default_cleanup)
    errors: dict[int, str] = {}
    timers = {}
    try:
        for i, (artifact_path, device_type, args_info) in enumerate(inputs):
            try:
                rt_mod = tvm.runtime.load_module(artifact_path)
                device = tvm.runtime.device(device_type, 0)
                (args,) = alloc(device, args_info, 1)
                timer = rt_mod.time_evaluator(
                    func_name=rt_mod.entry_name,
                    dev=device,
                    number=evaluator_config.number,
                    repeat=1,
                    min_repeat_ms=evaluator_config.min_repeat_ms,
                    f_preproc="cache_flush_cpu_non_first_arg"
                    if evaluator_config.enable_cpu_cache_flush
                    else "",
                )
                timers[i] = (rt_mod, timer, device, args)
            except Exception:  # noqa: BLE001 - the candidate's error, as LocalRunner reports it
                errors[i] = f"loading {artifact_path}:\n{traceback.format_exc()}"
        samples: dict[int, list[float]] = {i: [] for i in timers}
        for _ in range(evaluator_config.repeat):
            for i in list(timers):
                _, timer, device, args = timers[i]
                try:
                    device.sync()
                    samples[i].append(float(timer(*args).mean))
                except Exception:  # noqa: BLE001 - this candidate fails, the others go on
                    errors[i] = f"timing {inputs[i][0]}:\n{traceback.format_exc()}"
                    del timers[i]
    finally:
        cleanup()
    return [(None, errors[i]) if i in errors else (samples[i], None) for i in range(len(inputs))]


@derived_object
class InterleavedRunner(PyRunner):
    """A ``LocalRunner`` that times each batch in interleaved rounds (see the module docstring).

    Parameters
    ----------
    timeout_sec : float
        Time limit per candidate; a batch may take ``timeout_sec`` times its size.
    evaluator_config : EvaluatorConfig, optional
        ``repeat`` rounds of one timing each (``number`` calls, grown until a timing lasts
        ``min_repeat_ms``); ``enable_cpu_cache_flush`` as in ``LocalRunner``. Default:
        MetaSchedule's ``EvaluatorConfig()``.
    f_alloc_argument, f_cleanup : str or callable, optional
        As in ``LocalRunner`` (the allocation is asked for one argument set per candidate).
    initializer : callable, optional
        Run once in every worker process at start-up.
    """

    def __init__(
        self,
        timeout_sec: float = 30,
        evaluator_config: EvaluatorConfig | None = None,
        f_alloc_argument: str | Callable | None = None,
        f_cleanup: str | Callable | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        if not timeout_sec > 0:
            raise ValueError(
                f"InterleavedRunner: timeout_sec must be > 0 seconds, got {timeout_sec!r}"
            )
        self.timeout_sec = float(timeout_sec)
        self.evaluator_config = EvaluatorConfig._normalized(evaluator_config)
        self.f_alloc_argument = f_alloc_argument
        self.f_cleanup = f_cleanup
        self.initializer = initializer
        self.worker = PopenWorker(initializer=initializer)  # its process starts at the first batch
        self._fallback: LocalRunner | None = None

    def fallback(self) -> LocalRunner:
        """The ``LocalRunner`` (same settings) that measures a batch whose worker failed as a
        whole, candidate by candidate; started the first time it is needed."""
        if self._fallback is None:
            self._fallback = LocalRunner(
                timeout_sec=self.timeout_sec,
                evaluator_config=self.evaluator_config,
                f_alloc_argument=self.f_alloc_argument,
                f_cleanup=self.f_cleanup,
                initializer=self.initializer,
            )
        return self._fallback

    def run(self, runner_inputs: list[RunnerInput]) -> list[LocalRunnerFuture]:
        """Time ``runner_inputs`` in interleaved rounds; return one finished future each."""
        if not runner_inputs:
            return []
        inputs = batch_inputs(runner_inputs)
        try:
            self.worker.send(
                time_in_rounds,
                (self.f_alloc_argument, self.f_cleanup, self.evaluator_config, inputs),
                timeout=self.timeout_sec * len(inputs),
            )
            results = self.worker.recv()
        except Exception:  # noqa: BLE001 - any failure of the batch's worker: one by one
            # A crash or a hang of the whole batch (the worker was killed): one by one, so that
            # the candidate responsible fails alone.
            self.worker.kill()
            return self.fallback().run(runner_inputs)
        return batch_futures(results)


def batch_inputs(runner_inputs: list[RunnerInput]) -> list[tuple[str, str, tuple]]:
    """``RunnerInput``s as :func:`time_in_rounds` takes them (picklable)."""
    return [
        (
            str(runner_input.artifact_path),
            str(runner_input.device_type),
            tuple(arg_info.as_json() for arg_info in runner_input.args_info),
        )
        for runner_input in runner_inputs
    ]


def batch_futures(results: list[tuple[list[float] | None, str | None]]) -> list[LocalRunnerFuture]:
    """:func:`time_in_rounds`' results as finished runner futures."""
    return [
        LocalRunnerFuture(res=times, error_message=None)
        if error is None
        else LocalRunnerFuture(
            res=None, error_message="InterleavedRunner: An exception occurred\n" + error
        )
        for times, error in results
    ]
