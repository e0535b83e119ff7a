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
"""tune_model and the pipeline route take the work_dir lock, like the CLI's tune."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ms_droplet import models
from ms_droplet import relax as droplet_relax
from ms_droplet.relax import tune as tune_module
from ms_droplet.relax.route import TUNE_RELAX_GLOBAL, TUNE_TIR_GLOBAL, PipelineRoute
from ms_droplet.workdir import WorkDirBusyError, lock_work_dir

from .conftest import HOLD_WORK_DIR

# The same holder as tests/test_faults.py: another process that keeps the lock until killed.
# The CLI's message (ms_droplet.workdir.acquire_work_dir), the same for every entry point.
_BUSY = "in use by another tuning process \\(pid {pid}"
_ADVICE = "Wait for that process to finish, or tune into another work_dir"


@pytest.fixture
def no_work_before_lock(monkeypatch):
    """Fail any test that reaches tune_model's first step (canonicalizing the model)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("tune_model started working before taking the work_dir lock")

    monkeypatch.setattr(tune_module, "canonicalize_model", refuse)


def test_tune_model_refuses_a_busy_work_dir_before_tuning(
    held_work_dir, host_target, no_work_before_lock
):
    work_dir, holder = held_work_dir
    model = models.get_model("mlp", batch_size=2, in_features=32, hidden=(16,), num_classes=8)
    start = time.perf_counter()
    with pytest.raises(WorkDirBusyError, match=_BUSY.format(pid=holder.pid)) as info:
        droplet_relax.tune_model(model.mod, host_target, work_dir, 8, num_trials_per_iter=2)
    assert time.perf_counter() - start < 5
    assert _ADVICE in str(info.value)
    assert not os.path.exists(os.path.join(work_dir, "database_tuning_record.json"))
    assert not os.path.exists(os.path.join(work_dir, "logs"))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (TUNE_RELAX_GLOBAL, ("mod", {}, "target", "{work_dir}", 8)),
        (TUNE_TIR_GLOBAL, ("mod", "target", "{work_dir}", 8)),
    ],
)
def test_pipeline_route_refuses_a_busy_work_dir_before_tuning(held_work_dir, name, args):
    work_dir, holder = held_work_dir
    args = tuple(work_dir if arg == "{work_dir}" else arg for arg in args)
    route = PipelineRoute.__new__(PipelineRoute)  # no pass is run: only the lock is reached

    def refuse(*_args):
        raise AssertionError("the route started tuning before taking the work_dir lock")

    route._tune_locked = refuse  # pylint: disable=protected-access
    with pytest.raises(WorkDirBusyError, match=_BUSY.format(pid=holder.pid)):
        route._tune(name, args)  # pylint: disable=protected-access


def test_tune_model_holds_the_lock_and_is_reentrant(tmp_path, host_target, monkeypatch):
    """The lock is held during the call; re-entering it in the process (DropletSearch) works."""
    work_dir = str(tmp_path / "work")
    seen = []

    def probe(*_args, **_kwargs):
        # Re-entrant here, as DropletSearch.pre_tuning takes it again; another process is
        # refused meanwhile.
        with lock_work_dir(work_dir):
            check = subprocess.run(
                [sys.executable, "-c", HOLD_WORK_DIR, work_dir], capture_output=True, text=True
            )
        seen.append(check)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tune_module, "canonicalize_model", probe)
    with lock_work_dir(work_dir):  # a caller that holds it already (the CLI's tune-model)
        with pytest.raises(RuntimeError, match="stop here"):
            droplet_relax.tune_model("mod", host_target, work_dir, 8)
    assert seen[0].returncode != 0 and "WorkDirBusyError" in seen[0].stderr
    # Released at the end, even after an error: another process gets it now.
    with lock_work_dir(work_dir):
        pass
    later = subprocess.run(
        [sys.executable, "-c", HOLD_WORK_DIR.replace("120", "0"), work_dir],
        capture_output=True,
        text=True,
    )
    assert later.returncode == 0 and later.stdout.strip() == "locked"
