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
"""Work directories: check and repair MetaSchedule's JSON database, one writer at a time.

MetaSchedule's ``JSONDatabase`` keeps two append-only files in a work directory,
``database_workload.json`` (one workload per line; records refer to a workload by its line
number) and ``database_tuning_record.json`` (one measured record per line). It refuses to load
a file with a single malformed line, with a message that names neither file nor line, and it has
no protection against two processes appending to the same files.

* :func:`check_work_dir` reads both files line by line. A **torn last line** (a write cut short
  by a crash or ``SIGKILL``: no final newline and not valid JSON) is always recovered: its bytes
  move to ``<file>.torn`` and the file keeps every complete line. A complete last line without
  its newline gets one (the next append would otherwise glue a record onto it). A **malformed
  line elsewhere** is not something a crash produces, so it is an error,
  :class:`DatabaseFileError`, naming the file, the line and the fix, unless ``repair=True``:
  then malformed lines move to ``<file>.rejected`` (records of a rejected workload with them,
  and later workload numbers are renumbered) and everything else is kept.
* :func:`lock_work_dir` takes an exclusive advisory lock (``flock``) on
  ``<work_dir>/.ms_droplet.lock``, so that a second process tuning into the same directory is
  refused with :class:`WorkDirBusyError` instead of interleaving records. The lock is
  re-entrant within a process and released by the operating system if the process dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = ".ms_droplet.lock"


class DatabaseFileError(ValueError):
    """A malformed line in the middle of a database file.

    Attributes
    ----------
    path : str
        The file.
    line : int
        The 1-based line number of the first malformed line.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path: str, line: int, reason: str, others: int) -> None:
        self.path, self.line, self.reason = path, line, reason
        more = f" (and {others} more malformed lines)" if others else ""
        super().__init__(
            f"{path}, line {line}: {reason}{more}. MetaSchedule cannot load a database with a "
            "malformed line. Fix: run `ms-droplet repair --work-dir "
            f"{os.path.dirname(path) or '.'}` (or ms_droplet.check_work_dir(..., repair=True)), "
            "which moves the malformed lines to a .rejected file beside it and keeps every "
            "other record, or delete the line yourself"
        )


class WorkDirBusyError(RuntimeError):
    """Another process holds the work directory's lock."""


@dataclass
class FileCheck:
    """What :func:`check_work_dir` found and did in one database file."""

    path: str
    lines: int = 0  # complete, valid lines kept
    torn_bytes: int = 0  # bytes of a torn last line moved to <path>.torn
    newline_added: bool = False
    blank_removed: int = 0  # blank lines dropped
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)
    rejected: int = 0  # lines moved to <path>.rejected

    @property
    def changed(self) -> bool:
        return bool(self.torn_bytes or self.newline_added or self.blank_removed or self.rejected)


@dataclass
class WorkDirCheck:
    """The result of :func:`check_work_dir`: one :class:`FileCheck` per database file found."""

    work_dir: str
    workloads: FileCheck | None = None
    records: FileCheck | None = None

    @property
    def changed(self) -> bool:
        return any(f is not None and f.changed for f in (self.workloads, self.records))


def _sift(path: str, parse, repair: bool):
    """The lines of ``path`` as ``(check, kept, bad)``; a bad line raises unless ``repair``.

    ``parse(raw)`` returns ``(reason, value)``, ``reason`` ``None`` for a good line; ``kept`` holds
    ``(line number, raw, value)`` and ``bad`` ``(line number, raw, reason)``.
    """
    lines, check = _read_lines(path)
    kept, bad = [], []
    for number, raw in lines:
        reason, value = parse(raw)
        if reason is None:
            kept.append((number, raw, value))
        else:
            bad.append((number, raw, reason))
    check.bad_lines = [(n, r) for n, _, r in bad]
    check.lines = len(kept)
    if bad:
        if not repair:
            raise DatabaseFileError(path, bad[0][0], bad[0][2], len(bad) - 1)
        check.rejected = len(bad)
    return check, kept, bad


def check_work_dir(work_dir: str, *, repair: bool = False, deep: bool = False) -> WorkDirCheck:
    """Check the JSON database files of ``work_dir``; recover a torn last line.

    Parameters
    ----------
    work_dir : str
        The directory given to ``tune_tir`` / ``tune_relax`` / ``ms-droplet --work-dir``. A
        missing directory or missing files are fine (nothing to check).
    repair : bool
        Move malformed lines anywhere in the files to ``<file>.rejected`` instead of raising.
    deep : bool
        Also parse every line with MetaSchedule (``Workload.from_json`` and
        ``TuningRecord.from_json``, about 3 ms a record), which finds lines that are valid JSON
        of the right shape but that MetaSchedule cannot read. The shallow check (JSON and
        shape) finds torn and garbled lines.

    Returns
    -------
    check : WorkDirCheck
        Per file: lines kept, torn bytes moved aside, lines rejected.

    Raises
    ------
    DatabaseFileError
        A malformed line that is not the torn last line, when ``repair`` is False.
    """
    result = WorkDirCheck(work_dir)
    wl_path = os.path.join(work_dir, WORKLOAD_FILE)
    rec_path = os.path.join(work_dir, RECORD_FILE)
    workloads: list = []
    renumber: dict[int, int] | None = None
    if os.path.exists(wl_path):
        check, kept, bad = _sift(wl_path, lambda raw: _parse_workload(raw, deep), repair)
        workloads = [value for _, _, value in kept]
        if bad:
            # Records name workloads by line index: map old indices to new ones.
            renumber = {old: new for new, old in enumerate(n - 1 for n, _, _ in kept)}
        if bad or check.blank_removed:
            _rewrite(wl_path, [raw for _, raw, _ in kept], [raw for _, raw, _ in bad])
        result.workloads = check
    if os.path.exists(rec_path):
        check, kept, bad = _sift(
            rec_path, lambda raw: _parse_record(raw, workloads, deep, renumber), repair
        )
        rows = [
            raw if renumber is None else _renumbered(raw, renumber[index]) for _, raw, index in kept
        ]
        if bad or renumber is not None or check.blank_removed:
            _rewrite(rec_path, rows, [raw for _, raw, _ in bad])
        result.records = check
    for check in (result.workloads, result.records):
        if check is not None and check.changed:
            logger.warning(
                "%s: %s",
                check.path,
                "; ".join(
                    part
                    for part in (
                        f"a torn last line ({check.torn_bytes} bytes, an interrupted write) was "
                        f"moved to {check.path}.torn"
                        if check.torn_bytes
                        else "",
                        "a missing final newline was added" if check.newline_added else "",
                        f"{check.blank_removed} blank lines were removed"
                        if check.blank_removed
                        else "",
                        f"{check.rejected} malformed lines were moved to {check.path}.rejected"
                        if check.rejected
                        else "",
                    )
                    if part
                ),
            )
    return result


def _read_lines(path: str) -> tuple[list[tuple[int, str]], FileCheck]:
    """The file's non-blank complete lines (1-based number, text), after recovering its tail.

    Blank lines are dropped from the file (``JSONDatabase`` crashes on them; MetaSchedule never
    writes them, so no record and no workload number depends on them).
    """
    check = FileCheck(path)
    with open(path, "rb") as f:
        data = f.read()
    complete, newline, tail = data.rpartition(b"\n")
    complete += newline
    if tail.strip():
        try:
            json.loads(tail)
        except ValueError:
            # Cut short mid-write: keep the bytes aside, the file ends at the last newline.
            with open(path + ".torn", "ab") as out:
                out.write(tail + b"\n")
            _truncate(path, len(complete))
            check.torn_bytes = len(tail)
        else:
            with open(path, "ab") as out:
                out.write(b"\n")
            complete = data + b"\n"
            check.newline_added = True
    elif tail:
        _truncate(path, len(complete))
    text = complete.decode("utf-8", errors="replace").split("\n")[:-1]
    lines = [(number, raw) for number, raw in enumerate(text, 1) if raw.strip()]
    check.blank_removed = len(text) - len(lines)
    return lines, check


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _parse_workload(raw: str, deep: bool) -> tuple[str | None, object]:
    try:
        value = json.loads(raw)
    except ValueError as err:
        return f"not valid JSON ({err})", None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
        and value[0].isdigit()
    ):
        return 'not a workload (expected ["<structural hash>", "<module>"])', None
    if deep:
        from tvm.s_tir.meta_schedule.database import Workload  # pylint: disable=import-outside-toplevel

        try:
            return None, Workload.from_json(value)
        except Exception as err:  # noqa: BLE001 - any parse failure makes the line malformed
            return f"MetaSchedule cannot read this workload ({type(err).__name__})", None
    return None, value


def _parse_record(
    raw: str, workloads: list, deep: bool, renumber: dict[int, int] | None
) -> tuple[str | None, int]:
    try:
        value = json.loads(raw)
    except ValueError as err:
        return f"not valid JSON ({err})", -1
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], list)
        and len(value[1]) >= 1
        and isinstance(value[1][0], list)
    ):
        return "not a tuning record (expected [<workload index>, [<trace>, ...]])", -1
    index = value[0]
    if renumber is not None:
        if index not in renumber:
            return f"its workload (line {index + 1}) was malformed or is missing", index
    elif not 0 <= index < len(workloads):
        return (
            f"refers to workload {index}, but the workload file has {len(workloads)} lines",
            index,
        )
    if deep:
        from tvm.s_tir.meta_schedule.database import TuningRecord  # pylint: disable=import-outside-toplevel

        workload = workloads[renumber[index] if renumber is not None else index]
        try:
            TuningRecord.from_json(value[1], workload)
        except Exception as err:  # noqa: BLE001 - any parse failure makes the line malformed
            return f"MetaSchedule cannot read this record ({type(err).__name__})", index
    return None, index


def _renumbered(raw: str, index: int) -> str:
    value = json.loads(raw)
    value[0] = index
    return json.dumps(value, separators=(",", ":"))


def _rewrite(path: str, kept: list[str], rejected: list[str]) -> None:
    """Atomically replace ``path`` by ``kept``; append ``rejected`` to ``path.rejected``."""
    if rejected:
        with open(path + ".rejected", "a", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in rejected)
            out.flush()
            os.fsync(out.fileno())
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in kept)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- locking
_held: dict[str, list] = {}  # real path of the lock file -> [fd, count]
_held_guard = threading.Lock()


def acquire_work_dir(work_dir: str) -> str:
    """Take the work directory's lock (re-entrant in this process); return its path.

    Raises
    ------
    WorkDirBusyError
        Another process holds it.
    """
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(work_dir, LOCK_FILE))
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
            return path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkDirBusyError(
                f"work_dir {work_dir!r} is in use by another tuning process "
                f"({holder or 'unknown holder'}). MetaSchedule's JSON database is not safe for "
                "two writers: records would interleave and workload numbers could clash. Wait "
                "for that process to finish, or tune into another work_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        _held[path] = [fd, 1]
        return path


def release_work_dir(path: str) -> None:
    """Release one hold of a lock taken by :func:`acquire_work_dir`."""
    with _held_guard:
        entry = _held.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            os.ftruncate(entry[0], 0)
            os.close(entry[0])  # closing the descriptor releases the flock


@contextlib.contextmanager
def lock_work_dir(work_dir: str) -> Iterator[str]:
    """Hold the work directory's lock for the ``with`` block (see the module docstring)."""
    path = acquire_work_dir(work_dir)
    try:
        yield path
    finally:
        release_work_dir(path)
