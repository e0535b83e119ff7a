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
"""Test Meta Schedule logging: create_loggers with handlers it did not create"""

# pylint: disable=missing-function-docstring

import logging
import os
import tempfile

import pytest
import tvm.testing
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

GLOBAL_LOGGER = "tvm.s_tir.meta_schedule"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def global_logger():
    logger = logging.getLogger(GLOBAL_LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.parametrize("name", [None, "user_handler"])
def test_create_loggers_keeps_handlers_it_did_not_create(global_logger, name):
    # A handler attached by a user or a test harness (pytest >= 9.2 attaches its log capture to
    # every non-propagating logger), with or without a name.
    handler = _Collect()
    if name is not None:
        handler.set_name(name)
    global_logger.addHandler(handler)
    with tempfile.TemporaryDirectory() as work_dir:
        for _ in range(2):  # two tuning runs in one process
            (task_logger,) = get_loggers_from_work_dir(work_dir, ["matmul"])
        task_logger.info("task")
        global_logger.info("global")
        assert handler in global_logger.handlers
        assert "global" in handler.messages
        names = [h.get_name() for h in global_logger.handlers]
        assert names.count(GLOBAL_LOGGER + ".console") == 1
        assert names.count(GLOBAL_LOGGER + ".file") == 1
        assert any("matmul" in log for log in os.listdir(os.path.join(work_dir, "logs")))
        for log_handler in task_logger.handlers + global_logger.handlers:
            if isinstance(log_handler, logging.FileHandler):
                log_handler.close()


if __name__ == "__main__":
    tvm.testing.main()
