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
"""What a paired A/B can say: the spread of its log ratios, an interval for the geometric mean,
and how large an effect its number of pairs can see (or how many pairs an effect needs)."""

from __future__ import annotations

import math
import statistics

#: Two-sided level and power of the sizing rules below (the benchmark protocol's).
ALPHA = 0.05
POWER = 0.80


def _z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def log_sd(ratios) -> float | None:
    """Sample standard deviation of ``log(ratios)`` (None under two ratios)."""
    if len(ratios) < 2:
        return None
    return statistics.stdev(math.log(r) for r in ratios)


def detectable(sd: float, pairs: int) -> float:
    """The smallest speed-up ``pairs`` pairs of per-pair spread ``sd`` (of log ratios) see at
    the two-sided level ``ALPHA`` with power ``POWER`` (normal approximation)."""
    return math.exp(_z_sum() * sd / math.sqrt(pairs))


def pairs_needed(sd: float, effect: float) -> int:
    """Pairs of per-pair spread ``sd`` needed to see a speed-up of ``effect`` (e.g. 1.05) at
    the two-sided level ``ALPHA`` with power ``POWER`` (normal approximation)."""
    return math.ceil((_z_sum() * sd / math.log(effect)) ** 2)


def geomean_interval(ratios, confidence: float = 0.95, seed: int = 0):
    """Bootstrap interval (BCa, ``scipy.stats.bootstrap``) of the geometric mean of ``ratios``;
    None under three ratios or when all are equal."""
    if len(ratios) < 3 or len(set(ratios)) < 2:
        return None
    import numpy as np
    from scipy.stats import bootstrap

    logs = np.log(np.asarray(ratios, dtype=float))
    res = bootstrap((logs,), np.mean, confidence_level=confidence, random_state=seed)
    return math.exp(res.confidence_interval.low), math.exp(res.confidence_interval.high)


def evidence(ratios, effect: float = 1.05) -> dict:
    """Pairs, spread, interval, what the pairs can see and what ``effect`` needs."""
    sd = log_sd(ratios)
    out = {"pairs": len(ratios), "log_sd": sd, "interval95": geomean_interval(ratios)}
    if sd:
        out["detectable"] = detectable(sd, len(ratios))
        out["pairs_needed"] = pairs_needed(sd, effect)
    return out


def gpu_pairs(docs, first: str = "droplet@T") -> dict:
    """Paired speed-ups of run ``first`` in ``scripts/bench_gpu.py`` result documents.

    Each document holds ``results``: one entry per kernel and seed, its ``runs`` re-measured
    side by side in one call (``label``, ``median_us``, ``wall_secs``) and the torch
    ``ceiling``. A kernel and seed re-measured in a later document (say, once its
    evolutionary@4T run was added) replaces the earlier one: the pairs of one comparison always
    come from one call.

    Returns
    -------
    dict
        ``"<first> vs <label>"`` -> ``(speed, secs, keys)``: per (kernel, seed) the other run's
        time over ``first``'s (above 1: ``first`` is faster), ``first``'s tuning time over the
        other's (where both are known), and the ``(kernel, seed)`` keys. The ceiling appears as
        ``"<first> vs torch"`` (its speed-up is torch's time over ``first``'s; no tuning time).
    """
    cases = {}
    for doc in docs:
        for entry in doc["results"]:
            cases[(entry["kernel"], entry["seed"])] = entry
    pairs = {}
    for key, entry in cases.items():
        runs = {run["label"]: run for run in entry["runs"]}
        mine = runs.get(first, {})
        if not mine.get("median_us"):
            continue
        others = {label: run for label, run in runs.items() if label != first}
        ceiling = (entry.get("ceiling") or {}).get("median_us")
        if ceiling:
            others["torch"] = {"median_us": ceiling}
        for label, run in others.items():
            if not run.get("median_us"):
                continue
            speed, secs, keys = pairs.setdefault(f"{first} vs {label}", ([], [], []))
            speed.append(run["median_us"] / mine["median_us"])
            keys.append(key)
            if mine.get("wall_secs") and run.get("wall_secs"):
                secs.append(mine["wall_secs"] / run["wall_secs"])
    return pairs


def cell(value, scale: float = 1.0, digits: int = 2) -> str:
    """A Markdown table cell: ``value`` times ``scale`` to ``digits`` decimals, empty for None."""
    return "" if value is None else f"{scale * value:.{digits}f}"


def evidence_lines(pairs) -> list:
    """Markdown: per comparison (``name -> (speed, secs, kernels)``) what its pairs can say
    (:func:`evidence`), then per kernel the comparisons between variants (not against the
    exploration)."""
    from scipy.stats import gmean

    lines = [
        "| comparison | pairs | sd of log ratio | 95 % interval (bootstrap) | sees at 80 % power "
        "| pairs for 1.05x |",
        "|---|---|---|---|---|---|",
    ]
    for name, (speed, _, _) in pairs.items():
        ev = evidence(speed)
        interval = ev["interval95"]
        lines.append(
            f"| {name} | {ev['pairs']} | {cell(ev['log_sd'], digits=3)} "
            f"| {'' if interval is None else f'{interval[0]:.3f}-{interval[1]:.3f}'} "
            f"| {cell(ev.get('detectable'), digits=3)} | {ev.get('pairs_needed', '')} |"
        )
    lines += ["", "| comparison | kernel | pairs | geomean speed-up | first faster in |"]
    lines.append("|---|---|---|---|---|")
    for name, (speed, _, kernels) in pairs.items():
        if name.endswith(" vs exploration"):
            continue
        for kernel in dict.fromkeys(kernels):
            mine = [r for r, k in zip(speed, kernels) if k == kernel]
            lines.append(
                f"| {name} | {kernel} | {len(mine)} | {gmean(mine):.3f} "
                f"| {sum(r > 1 for r in mine)} |"
            )
    return lines + [""]
