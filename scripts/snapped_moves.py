#!/usr/bin/env python3
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
"""What ``snap_locations`` did in archived droplet runs, read from their logs (no re-run).

A descent neighbor whose tile move makes a compute location illegal is kept where
MetaSchedule's replay snaps the location (``snap_locations=True``, the default) or dropped.
Its effect on a run is the accepted moves that were such neighbors. This reads the task logs
of the runs in archives of ``ab_droplet.py`` work roots (``*-runs.tar.xz``, or folders) and
counts, per archive: runs, runs with a snapped neighbor, snapped neighbors (the summaries'
count), descent trials that measured a new neighbor (descent trials less re-measurements),
accepted moves, and accepted moves that were snapped neighbors, with both acceptance rates
per measured neighbor.

A move of coordinate ``i`` to value ``b`` was a snapped neighbor when a neighbor logged as
snapped since the descent's last start, restart or move has ``b`` at ``i``: every other
neighbor of that incumbent keeps the incumbent's value there. The neighbor lines are logged
at DEBUG, which the runs' task logs hold; an archive whose logs lack them counts no snapped
neighbor. ``snapped`` counts neighbors when replayed, so it equals the snapped neighbors
measured only for descents that measure the neighbors they replay (not for the removed
screened descent of ``ab-guided-2``'s second variant). Example::

    python scripts/snapped_moves.py docs/benchmarks/ab-patience-2-runs.tar.xz \
        docs/benchmarks/ab-parallel-1-runs.tar.xz
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import os
import re
import sys
import tarfile

MOVE = re.compile(r"droplet: move \d+ accepted: (.*); speed-up ([\d.]+)x")
CHANGE = re.compile(r"(\w+)#(\d+): (.*?) -> (.*?)(?:, (?=\w+#)|$)")
SNAPPED = re.compile(r"droplet: neighbor (\(.*\)) kept with its compute location snapped")
NEW_INCUMBENT = re.compile(r"droplet: (exploration done .*descent starts|restart \d+:)")
SUMMARY = re.compile(
    r"droplet: summary: \d+ trials \(exploration \d+, descent (\d+) of which (\d+) "
    r"re-measurements\).* (\d+) kept with a compute location snapped"
)


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_log(lines, name, out):
    """Adds one task log's counts to ``out``; prints each accepted move that was snapped."""
    since_move, any_snapped = [], False
    for line in lines:
        if m := SNAPPED.search(line):
            since_move.append(_literal(m.group(1)))
            any_snapped = True
        elif m := MOVE.search(line):
            out["moves"] += 1
            changes = [(int(i), _literal(b)) for _, i, _, b in CHANGE.findall(m.group(1))]
            if any(
                isinstance(v, tuple) and all(i < len(v) and v[i] == b for i, b in changes)
                for v in since_move
            ):
                out["snapped_moves"] += 1
                print(f"  {name}: snapped neighbor accepted: {m.group(1)} ({m.group(2)}x)")
            since_move = []
        elif m := SUMMARY.search(line):
            out["new_neighbors"] += int(m.group(1)) - int(m.group(2))
            out["snapped"] += int(m.group(3))
        elif NEW_INCUMBENT.search(line):
            since_move = []
    out["runs"] += 1
    out["runs_snapped"] += any_snapped


def _is_task_log(folder, name):
    """A run's task log: ``<run>/logs/...task_0...``, the task the A/B kernels have."""
    return folder == "logs" and "task_0" in name


def task_logs(source):
    """(name, lines) of each run's task log in an archive or folder."""
    if os.path.isdir(source):
        for root, _, files in sorted(os.walk(source)):
            for f in sorted(files):
                if _is_task_log(os.path.basename(root), f):
                    with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                        yield os.path.relpath(os.path.dirname(root), source), fh.read().splitlines()
        return
    with tarfile.open(source) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if member.isfile() and len(parts) > 1 and _is_task_log(parts[-2], parts[-1]):
                text = tar.extractfile(member).read().decode("utf-8", "replace")
                yield "/".join(parts[:-2]), text.splitlines()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="*-runs.tar.xz archives or run folders")
    parser.add_argument(
        "--runs",
        default="*",
        help="only the runs whose folder matches this pattern, e.g. '*_v0' (a variant of "
        "ab_droplet.py: the first in its --variants)",
    )
    args = parser.parse_args(argv)
    keys = ("runs", "runs_snapped", "snapped", "new_neighbors", "moves", "snapped_moves")
    total = dict.fromkeys(keys, 0)
    for source in args.sources:
        if not os.path.exists(source):
            sys.exit(f"sources: {source!r} does not exist; give *-runs.tar.xz files or folders")
        print(source)
        out = dict.fromkeys(keys, 0)
        for name, lines in task_logs(source):
            if not fnmatch.fnmatch(os.path.basename(name), args.runs):
                continue
            read_log(lines, name, out)
        for k in keys:
            total[k] += out[k]
        print(_line(out))
    if len(args.sources) > 1:
        print("all\n" + _line(total))
    return 0


def _line(c):
    rate = c["moves"] / c["new_neighbors"] if c["new_neighbors"] else float("nan")
    snap_rate = c["snapped_moves"] / c["snapped"] if c["snapped"] else float("nan")
    return (
        f"  {c['runs']} runs, {c['runs_snapped']} with a snapped neighbor; {c['snapped']} "
        f"snapped of {c['new_neighbors']} neighbors measured; {c['moves']} accepted moves "
        f"({rate:.2%} of neighbors), {c['snapped_moves']} of them snapped ({snap_rate:.2%} "
        "of snapped neighbors)"
    )


if __name__ == "__main__":
    sys.exit(main())
