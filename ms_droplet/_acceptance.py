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
"""When a neighbor beats the incumbent: the acceptance test and the model of timing noise.

Pure Python with numpy (scipy for the t-test, imported on first use): no TVM. The descent
(:mod:`ms_droplet._descent`) asks :func:`compare_samples` whether a neighbor is measurably
faster, and :func:`sure_gain_bound` how large a gain must be to be believed after one runner
call, given the noise between calls that :func:`between_call_noise` estimates.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Between-call noise is estimated once this many schedules were measured in two calls or more.
NOISE_MIN_SCHEDULES = 3
# A gain this many times the between-call noise (its 90th percentile) is sure after one call.
NOISE_MARGIN = 3.0


class Outcome(enum.Enum):
    """What a comparison of a neighbor with the incumbent concluded."""

    ACCEPT = "accept"
    REJECT = "reject"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`compare_samples`."""

    outcome: Outcome
    speedup: float
    p: float | None


def compare_samples(
    incumbent: Sequence[float],
    candidate: Sequence[float],
    p_value: float,
    min_gain: float,
) -> Verdict:
    """Is ``candidate`` measurably faster than ``incumbent``?

    A one-sided Welch t-test (``scipy.stats.ttest_ind(equal_var=False)``) on the timing
    samples. A candidate must first be faster by at least ``min_gain`` (relative to the
    incumbent's mean); with fewer than two samples on either side no test is possible and the
    verdict is ``UNDECIDED`` (the caller may measure again).

    Parameters
    ----------
    incumbent, candidate : Sequence[float]
        Run times in seconds; all finite and positive.
    p_value : float
        The largest p-value that still accepts.
    min_gain : float
        The smallest relative gain ``1 - mean(candidate) / mean(incumbent)`` worth testing.

    Returns
    -------
    verdict : Verdict
        ``ACCEPT`` when faster with ``p <= p_value``; ``REJECT`` when not faster by
        ``min_gain``; ``UNDECIDED`` otherwise.
    """
    if not candidate or not incumbent:
        return Verdict(Outcome.REJECT if not candidate else Outcome.UNDECIDED, 0.0, None)
    mean_inc = float(np.mean(incumbent))
    mean_cand = float(np.mean(candidate))
    speedup = mean_inc / mean_cand
    if 1.0 - mean_cand / mean_inc < min_gain or mean_cand >= mean_inc:
        return Verdict(Outcome.REJECT, speedup, None)
    if len(incumbent) < 2 or len(candidate) < 2:
        return Verdict(Outcome.UNDECIDED, speedup, None)
    if np.var(incumbent) == 0.0 and np.var(candidate) == 0.0:
        p = 0.0  # two constant samples that differ: the difference is certain
    else:
        import warnings  # pylint: disable=import-outside-toplevel

        from scipy import stats  # pylint: disable=import-outside-toplevel

        with warnings.catch_warnings():
            # Nearly identical timings make scipy warn about precision; the p-value stays usable.
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_ind(candidate, incumbent, equal_var=False, alternative="less")
        p = float(test.pvalue)
        if math.isnan(p):
            p = 1.0
    outcome = Outcome.ACCEPT if p <= p_value else Outcome.UNDECIDED
    return Verdict(outcome, speedup, p)


def between_call_noise(call_means: Iterable[Sequence[float]]) -> float | None:
    """The noise between runner calls, from the per-call mean run times of each schedule.

    Parameters
    ----------
    call_means : Iterable[Sequence[float]]
        For each schedule, the mean run time of each successful runner call, in call order.

    Returns
    -------
    noise : Optional[float]
        The 90th percentile of ``|log(mean of a later call / mean of the first call)|`` over the
        schedules measured in two calls or more; ``None`` while fewer than
        ``NOISE_MIN_SCHEDULES`` schedules were.
    """
    repeated = [means for means in call_means if len(means) >= 2]
    if len(repeated) < NOISE_MIN_SCHEDULES:
        return None
    diffs = [abs(math.log(m / means[0])) for means in repeated for m in means[1:]]
    return float(np.quantile(diffs, 0.9))


def sure_gain_bound(noise: float | None, min_gain: float, sure_gain: float) -> float:
    """The relative gain that needs no second runner call.

    Parameters
    ----------
    noise : Optional[float]
        The between-call noise (:func:`between_call_noise`), ``None`` while unknown.
    min_gain : float
        The smallest gain worth testing: the bound never goes below it.
    sure_gain : float
        The configured bound, used while the noise is unknown and never exceeded.

    Returns
    -------
    bound : float
        ``sure_gain`` until the noise is known, then ``NOISE_MARGIN`` times the noise, clamped
        to ``[min_gain, sure_gain]``.
    """
    if noise is None:
        return sure_gain
    return min(sure_gain, max(min_gain, NOISE_MARGIN * noise))
