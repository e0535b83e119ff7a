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
"""Stopping a tuning run cleanly on SIGINT (Ctrl-C) or SIGTERM.

An exception raised by a signal handler surfaces wherever Python code happens to run: inside a
callback that TVM's C++ called, possibly on a worker thread, where it can end the process with
``std::terminate``. So a stop is a request instead: :func:`request_stop` sets a flag,
``DropletSearch`` sees it before its next batch and ends its tasks, and the tuning call returns
normally with every measured record in the database. :func:`graceful_interrupts` installs
handlers that do this on the first signal and exit at once on the second.

Worker processes share the terminal's process group, so Ctrl-C reaches them too; a worker
killed mid-candidate would record that candidate as a failure. ``FastBuilder``'s workers ignore
SIGINT; pass :func:`ignore_interrupts` as the ``initializer`` of MetaSchedule's ``LocalRunner``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

_STOP = threading.Event()


def request_stop() -> None:
    """Ask running droplet searches to end their tasks before their next batch."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called since the last :func:`clear_stop`."""
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request (done on entering :func:`graceful_interrupts`)."""
    _STOP.clear()


def ignore_interrupts() -> None:
    """A worker ``initializer``: ignore SIGINT, so Ctrl-C stops only the tuning process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def graceful_interrupts(notice: str = "") -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM request a stop; a second one exits at once.

    Yields the list of signals received. Only in the main thread (elsewhere, a no-op).

    Parameters
    ----------
    notice : str
        Printed to stderr on the first signal, after "stopping after the current batch".
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum, _frame):
        received.append(signum)
        if len(received) == 1:
            request_stop()
            print(
                f"\n{signal.Signals(signum).name}: stopping after the current batch{notice} "
                "(send it again to stop now and lose that batch)",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"\n{signal.Signals(signum).name} again: stopping now", file=sys.stderr)
            sys.stderr.flush()
            os._exit(128 + signum)

    clear_stop()
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear_stop()
