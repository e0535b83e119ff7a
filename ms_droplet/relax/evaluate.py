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
"""Running, timing and comparing compiled Relax builds.

:func:`run_model` runs one entry function, :func:`compare_outputs` checks that two builds agree,
:func:`measure_latency` times several builds side by side. These take any Relax executable
(tuned or not) and need nothing else of :mod:`ms_droplet.relax`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax


def _tensors(arrays: Sequence[np.ndarray], device) -> list:
    return [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]


def _flatten(value) -> list[np.ndarray]:
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return [array for item in value for array in _flatten(item)]
    return [np.asarray(value)]


def run_model(executable, entry: str, arguments: Sequence[np.ndarray], device=None) -> list:
    """Run ``entry`` of a compiled Relax executable; its outputs as numpy arrays."""
    device = device or tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    return _flatten(vm[entry](*_tensors(arguments, device)))


@dataclass(frozen=True)
class OutputComparison:
    """How far one build's outputs are from another's (:func:`compare_outputs`)."""

    max_abs_diff: float
    max_rel_diff: float
    rtol: float
    atol: float
    ok: bool


def compare_outputs(
    reference,
    candidate,
    entry: str,
    arguments: Sequence[np.ndarray],
    rtol: float = 1e-4,
    atol: float = 1e-4,
    device=None,
) -> OutputComparison:
    """Run two executables on the same arguments and compare their outputs elementwise.

    ``ok`` is ``numpy.allclose(candidate, reference, rtol, atol)`` for every output. Default
    tolerances are for float32: tuned schedules reorder the sums of reductions (tiling,
    vectorized partial sums), which changes results by a few units in the last place of the
    partial sums, well below ``1e-4`` relative.
    """
    expected = run_model(reference, entry, arguments, device)
    actual = run_model(candidate, entry, arguments, device)
    if len(expected) != len(actual):
        raise ValueError(f"the builds return {len(expected)} and {len(actual)} outputs")
    max_abs, max_rel, ok = 0.0, 0.0, True
    for ref, out in zip(expected, actual):
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {ref.shape} and {out.shape}")
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        scale = np.abs(ref.astype(np.float64))
        rel = diff / np.where(scale > 0, scale, 1.0)
        max_rel = max(max_rel, float(rel.max(initial=0.0)))
        ok = ok and bool(np.allclose(out, ref, rtol=rtol, atol=atol))
    return OutputComparison(max_abs, max_rel, rtol, atol, ok)


@dataclass(frozen=True)
class Latency:
    """End-to-end latency samples of one build (seconds)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))


def measure_latency(
    executables: Mapping[str, object],
    entry: str,
    arguments: Sequence[np.ndarray],
    device=None,
    rounds: int = 7,
    min_repeat_ms: int = 100,
) -> dict[str, Latency]:
    """Time several builds side by side: rounds of one ``time_evaluator`` call per build.

    In each round every build is timed once (``repeat=1``, ``number`` grown until a run lasts
    ``min_repeat_ms``, after one warm-up run), the builds taking turns in alternating order, so
    that machine-wide drift touches all of them alike. Compare the medians.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = device or tvm.cpu()
    evaluators = {}
    for label, executable in executables.items():
        vm = relax.VirtualMachine(executable, device)
        timer = vm.time_evaluator(entry, device, number=1, repeat=1, min_repeat_ms=min_repeat_ms)
        evaluators[label] = (vm, timer)
    args = _tensors(arguments, device)
    samples: dict[str, list[float]] = {label: [] for label in executables}
    labels = list(executables)
    for index in range(rounds):
        for label in labels if index % 2 == 0 else reversed(labels):
            samples[label].append(float(evaluators[label][1](*args).mean))
    return {label: Latency(tuple(values)) for label, values in samples.items()}
