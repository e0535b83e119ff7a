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
"""Mends for TVM 0.27 bugs that stop ordinary tuning runs, applied by :func:`register`.

Each mend wraps one TVM function, changes its behaviour only where TVM would raise, is
idempotent, and has its own patch for apache/tvm (``scripts/make_upstream_patch.py`` writes it
to ``build/upstream/``). With a TVM that carries the fix, the mend changes nothing.

* :func:`mend_create_loggers`: ``tvm.s_tir.meta_schedule.logging.create_loggers`` (run by
  ``tune_tir``, ``tune_relax`` and ``tune_tasks`` before tuning starts) lists
  ``handler.get_name()`` of every handler on the ``tvm.s_tir.meta_schedule`` logger as a
  handler of its ``logging.config.dictConfig``. A handler it did not configure itself crashes
  it: without a name, ``AttributeError: 'NoneType' object has no attribute 'format'``; with one,
  ``ValueError: Unable to configure logger``. Such handlers are common: a user's
  ``logging.getLogger("tvm.s_tir.meta_schedule").addHandler(logging.StreamHandler())``, and
  pytest >= 9.2, whose log capture attaches its handlers to every non-propagating logger (TVM
  makes this one non-propagating at the first tuning run of a process).
"""

from __future__ import annotations

import logging
import sys

META_SCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
_MARK = "__ms_droplet_mended__"


def _configured_names(params, logger_config) -> set[str]:
    """Names of the handlers ``create_loggers`` configures itself (dictConfig can refer to)."""
    names = {f"{META_SCHEDULE_LOGGER}.console", f"{META_SCHEDULE_LOGGER}.file"}
    for key in (logger_config or {}).get("handlers", {}):
        for param in params:
            try:
                names.add(key.format(**param))
            except (KeyError, IndexError, ValueError):
                names.add(key)  # create_loggers will report such a key itself
    return names


def mend_create_loggers() -> None:
    """Let ``create_loggers`` run with handlers it did not configure on its logger (idempotent).

    Such handlers are set aside while TVM configures its own, then attached again, so they
    receive the tuning run's log records as before. ``create_loggers`` otherwise behaves as
    TVM's: its console and file handlers, its levels, its per-task loggers.
    """
    from tvm.s_tir.meta_schedule import (  # pylint: disable=import-outside-toplevel
        logging as ms_logging,
    )

    original = ms_logging.create_loggers
    if getattr(original, _MARK, False):
        return

    def create_loggers(log_dir, params, logger_config=None, disable_existing_loggers=False):
        logger = logging.getLogger(META_SCHEDULE_LOGGER)
        configured = _configured_names(params, logger_config)
        foreign = [h for h in logger.handlers if h.get_name() not in configured]
        for handler in foreign:
            logger.removeHandler(handler)
        try:
            return original(log_dir, params, logger_config, disable_existing_loggers)
        finally:
            for handler in foreign:
                if handler not in logger.handlers:
                    logger.addHandler(handler)

    create_loggers.__doc__ = original.__doc__
    create_loggers.__name__ = original.__name__
    create_loggers.__qualname__ = original.__qualname__
    create_loggers.__wrapped__ = original
    setattr(create_loggers, _MARK, True)
    # `get_loggers_from_work_dir` looks the name up in its module at each call; re-point any
    # other alias bound at import time as well.
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None) if name.startswith("tvm.") else None
        for attr, value in list((namespace or {}).items()):
            if value is original:
                setattr(module, attr, create_loggers)


def apply() -> None:
    """Apply every mend of this module (idempotent)."""
    mend_create_loggers()
