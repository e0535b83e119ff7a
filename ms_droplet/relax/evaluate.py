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

:func:`run_model` runs one entry function, :func:`compare_outputs` checks that two builds agree
(:func:`compare_arrays` compares outputs already computed), :func:`measure_latency` times
several builds side by side. These take any Relax executable
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
    """How far one build's outputs are from another's (:func:`compare_arrays`).

    ``worst`` names the output furthest beyond its tolerance (or closest to it when every
    output is within)."""

    max_abs_diff: float
    max_rel_diff: float
    rtol: float
    atol: float
    ok: bool
    worst: str = ""


def compare_arrays(
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    *,
    names: Sequence[str] = (),
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> OutputComparison:
    """Compare outputs elementwise: ``ok`` is ``numpy.allclose(actual, expected, rtol, atol,
    equal_nan=True)`` for every output.

    The differences reported: NaN in both at the same place is equal, NaN in one only is an
    infinite difference; the relative difference is ``|actual - expected| / |expected|`` over
    the elements whose expected value is neither zero nor NaN (those count in the absolute
    difference only). Outputs are named by ``names``, then ``"output i"``.

    Raises
    ------
    ValueError
        When the number of outputs or an output's shape differs.
    """
    names = list(names) + [f"output {i}" for i in range(len(names), len(expected))]
    if len(expected) != len(actual):
        raise ValueError(f"{len(actual)} outputs where the reference has {len(expected)}")
    max_abs, max_rel, ok = 0.0, 0.0, True
    worst, worst_excess = (names[0] if names else ""), -np.inf
    for name, ref, out in zip(names, expected, actual):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"output {name!r} has shape {out.shape}, the reference {ref.shape}")
        if ref.size == 0:
            continue
        ok = ok and bool(np.allclose(out, ref, rtol=rtol, atol=atol, equal_nan=True))
        both_nan = np.isnan(out) & np.isnan(ref)
        diff = np.where(both_nan, 0.0, np.nan_to_num(np.abs(out - ref), nan=np.inf))
        excess = float(np.max(diff - (atol + rtol * np.abs(np.nan_to_num(ref)))))
        if excess > worst_excess:
            worst, worst_excess = name, excess
        max_abs = max(max_abs, float(np.max(diff)))
        nonzero = (ref != 0) & ~np.isnan(ref)
        if nonzero.any():
            max_rel = max(max_rel, float(np.max(diff[nonzero] / np.abs(ref[nonzero]))))
    return OutputComparison(max_abs, max_rel, rtol, atol, ok, worst)


def compare_outputs(
    reference,
    candidate,
    entry: str,
    arguments: Sequence[np.ndarray],
    rtol: float = 1e-4,
    atol: float = 1e-4,
    device=None,
) -> OutputComparison:
    """Run two executables on the same arguments and compare their outputs
    (:func:`compare_arrays`).

    Default tolerances are for float32: tuned schedules reorder the sums of reductions (tiling,
    vectorized partial sums), which changes results by a few units in the last place of the
    partial sums, well below ``1e-4`` relative.
    """
    expected = run_model(reference, entry, arguments, device)
    actual = run_model(candidate, entry, arguments, device)
    return compare_arrays(expected, actual, rtol=rtol, atol=atol)


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
