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
"""The records a kept ``work_dir`` holds, in the order they were measured."""

from __future__ import annotations

import json
import math
import os

from ms_droplet.measure import mean_run_secs


def read_record_lines(work_dir, first=None):
    """The JSON lines of ``work_dir``'s ``database_tuning_record.json``, in file order.

    ``JSONDatabase`` sorts its records by run time; the file keeps the order of measurement.
    Pure Python.

    Parameters
    ----------
    work_dir : str
    first : int, optional
        Only the first ``first`` records (all when None or 0).

    Returns
    -------
    list
        One ``[workload index, record]`` per record, a record being
        ``[trace, run_secs, target, args_info]``.
    """
    with open(os.path.join(work_dir, "database_tuning_record.json"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[:first] if first else lines


def record_mean_secs(run_secs):
    """Mean of valid run seconds (:func:`ms_droplet.measure.mean_run_secs`); ``inf`` if failed.

    Parameters
    ----------
    run_secs : sequence of float or None

    Returns
    -------
    float
    """
    secs = mean_run_secs(run_secs)
    return secs if math.isfinite(secs) else math.inf


def records_in_order(work_dir, mod, first=None):
    """``(TuningRecord, mean run seconds)`` of a kept work_dir of ``mod``, in measurement order.

    Parameters
    ----------
    work_dir : str
    mod : tvm.IRModule
        The (one) workload of the database.
    first : int, optional
        Only the first ``first`` records.

    Returns
    -------
    list of tuple
        The mean is ``inf`` for a failed record.
    """
    from tvm.s_tir import meta_schedule as ms

    workload = ms.database.Workload(mod)
    out = []
    for _, raw in read_record_lines(work_dir, first):
        # Every record here is of this one workload.
        record = ms.database.TuningRecord.from_json(raw, workload)
        out.append((record, record_mean_secs(record.run_secs)))
    return out


def best_of_records(work_dir, mod, first=None):
    """The schedule of the fastest valid record of a kept work_dir (of its first ``first``).

    Parameters
    ----------
    work_dir : str
    mod : tvm.IRModule
    first : int, optional

    Returns
    -------
    tvm.s_tir.Schedule or None
        None when no record is valid.
    """
    from tvm.s_tir import Schedule

    best, best_secs = None, math.inf
    for record, secs in records_in_order(work_dir, mod, first):
        if secs < best_secs:
            best, best_secs = record, secs
    if best is None:
        return None
    sch = Schedule(mod)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch
