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
"""ms_droplet's run hooks for ``DropletSearch``: work_dir lock, stop request, failure fixes.

The strategy calls :class:`ms_droplet._state.RunHooks` around a run; this module gives it
:data:`HOOKS`, which locks the work directory of a ``JSONDatabase`` (:mod:`ms_droplet.workdir`)
and ends tasks when :mod:`ms_droplet.interrupt` was asked to stop. Without this module (the
upstream TVM copy) the strategy uses the no-op :class:`RunHooks`: a writer lock belongs in the
database there, and only ms_droplet's CLI sets stop requests.
"""

from __future__ import annotations

import os

from ._state import RunHooks
from .failures import fix
from .interrupt import stop_requested
from .workdir import acquire_work_dir, release_work_dir


class WorkDirHooks(RunHooks):
    """Lock the work directory for the run; stop on :func:`ms_droplet.interrupt.request_stop`."""

    def acquire(self, database) -> str | None:
        """Lock the work directory of a ``JSONDatabase`` (None for other databases).

        Raises
        ------
        WorkDirBusyError
            Another process tunes into the same work directory.
        """
        path = getattr(database, "path_tuning_record", None)
        if not path:
            return None
        return acquire_work_dir(os.path.dirname(os.path.abspath(str(path))))

    def release(self, token: str | None) -> None:
        if token is not None:
            release_work_dir(token)

    def should_stop(self) -> bool:
        return stop_requested()

    def failure_fix(self, cause: str) -> str:
        """The fix for a failure cause, naming ms_droplet's remedies (``FastBuilder``, ...)."""
        return fix(cause)


HOOKS = WorkDirHooks()
