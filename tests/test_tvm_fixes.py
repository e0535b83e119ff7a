"""ms_droplet.tvm_fixes: MetaSchedule's logging set-up with handlers it did not create."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from tvm.s_tir.meta_schedule import logging as ms_logging

import ms_droplet  # noqa: F401  (registers "droplet" and applies the mends)
from ms_droplet import tvm_fixes

LOGGER = logging.getLogger(tvm_fixes.META_SCHEDULE_LOGGER)


class Collect(logging.Handler):
    def __init__(self, name=None):
        super().__init__()
        self.messages: list[str] = []
        if name is not None:
            self.set_name(name)

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def meta_logger():
    """The MetaSchedule logger as the test found it, restored afterwards."""
    handlers, level, propagate = list(LOGGER.handlers), LOGGER.level, LOGGER.propagate
    yield LOGGER
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
    for handler in handlers:
        LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = propagate


def test_tvm_itself_crashes_on_an_unnamed_handler(meta_logger, tmp_path):
    # What the mend is for: TVM 0.27's create_loggers, unwrapped.
    original = ms_logging.create_loggers.__wrapped__
    meta_logger.addHandler(logging.StreamHandler())
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'format'"):
        original(str(tmp_path), [{"log_dir": str(tmp_path), "logger_name": "x"}])


@pytest.mark.parametrize("name", [None, "my-handler"])
def test_loggers_are_created_and_the_users_handler_kept(meta_logger, tmp_path, name):
    mine = Collect(name)
    meta_logger.addHandler(mine)
    work_dir = str(tmp_path)
    for _ in range(2):  # a second tuning run in the same process, as in a test suite
        (task_logger,) = ms_logging.get_loggers_from_work_dir(work_dir, ["matmul"])
    task_logger.info("into the task's file")
    meta_logger.info("after the set-up")
    assert mine in meta_logger.handlers
    assert "after the set-up" in mine.messages
    # TVM's own handlers are there once each, not once per call.
    names = [h.get_name() for h in meta_logger.handlers]
    assert names.count("tvm.s_tir.meta_schedule.console") == 1
    assert names.count("tvm.s_tir.meta_schedule.file") == 1
    logs = os.listdir(os.path.join(work_dir, "logs"))
    assert any("matmul" in log for log in logs)


def test_the_mend_is_applied_once(meta_logger):
    wrapped = ms_logging.create_loggers
    tvm_fixes.apply()
    ms_droplet.register()
    assert ms_logging.create_loggers is wrapped
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")


USER_CASE = """
import logging
import ms_droplet
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload
from ms_droplet.target import host_target

logging.getLogger("tvm.s_tir.meta_schedule").addHandler(logging.StreamHandler())
with ms_droplet.FastBuilder() as builder:
    ms.tune_tir(create_te_workload("GMM", 0), host_target(), {work_dir!r}, max_trials_global=4,
                num_trials_per_iter=2, strategy="droplet", builder=builder)
"""


@pytest.mark.tuning
def test_a_user_handler_then_tune_tir_droplet(tmp_path):
    """The user's case of issue 23: their own handler first, then tune_tir, in a new process."""
    work_dir = str(tmp_path / "work")
    script = textwrap.dedent(USER_CASE.format(work_dir=work_dir))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(work_dir, "database_tuning_record.json"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert len(records) == 4
    # The user's StreamHandler (stderr) received the task scheduler's records during tuning.
    assert "Total trials" in result.stderr or "Task #0" in result.stderr, result.stderr[-2000:]
