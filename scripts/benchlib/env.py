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
"""The environment record of a result file: where, when and how it was made.

Every result file of the scripts carries it under ``"environment"`` (see
:func:`benchlib.results.write_json`), so that a number traces back to its commit and command.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

SCHEMA_VERSION = 1
"""Version of the record's layout; raise it when a field changes meaning or goes away."""

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(*args, cwd=REPO_ROOT):
    """Stripped stdout of ``git args`` in ``cwd``, or None when git fails or is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit(cwd=REPO_ROOT):
    """The checkout's commit: ``{"sha": <git rev-parse HEAD>, "dirty": bool}``.

    ``dirty``: tracked files differ from ``HEAD`` (untracked files do not count). The environment
    variable ``BENCH_COMMIT`` (``SHA`` or ``SHA+dirty``) overrides git, recorded with
    ``"from": "BENCH_COMMIT"``: a copy of the tree on a lent machine may carry a stale ``.git``.
    None outside a git checkout without it.

    Parameters
    ----------
    cwd : str
        A folder inside the checkout (default: the repository of this library).

    Returns
    -------
    dict or None
    """
    named = os.environ.get("BENCH_COMMIT", "").strip()
    if named:  # named explicitly: a copied tree's .git may be stale (seen on a lent machine)
        sha, _, flag = named.partition("+")
        return {"sha": sha, "dirty": flag == "dirty", "from": "BENCH_COMMIT"}
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    if not sha:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"sha": sha, "dirty": bool(status)}


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere).

    Returns
    -------
    str
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name():
    """``name, driver, memory`` of the GPUs as ``nvidia-smi`` reports them; None without it.

    Returns
    -------
    str or None
    """
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _versions():
    """TVM's and tvm-ffi's versions (None where one is not importable)."""
    versions = {}
    for name in ("tvm", "tvm_ffi"):
        try:
            module = __import__(name)
        except ImportError:
            versions[name] = None
        else:
            versions[name] = getattr(module, "__version__", None)
    return versions


def target_json(target):
    """A TVM target as a JSON object (its ``str`` is its JSON form); None for None.

    Parameters
    ----------
    target : tvm.target.Target, dict, str or None

    Returns
    -------
    dict or None
    """
    if target is None or isinstance(target, dict):
        return target
    try:
        return json.loads(str(target))
    except json.JSONDecodeError:
        return {"str": str(target)}


def environment(target=None, *, gpu=False, argv=None):
    """The environment record of a result file made now, in this process.

    Parameters
    ----------
    target : tvm.target.Target, optional
        The target measured on; recorded as JSON.
    gpu : bool
        Also record the GPU (``nvidia-smi``).
    argv : list of str, optional
        The command line (default ``sys.argv``); recorded after ``sys.executable``.

    Returns
    -------
    dict
        ``schema``, ``commit`` (``sha``, ``dirty``), ``date`` (UTC, ISO 8601), ``command``
        (shell-quoted, exact), ``cwd``, ``target`` (JSON), ``cpu`` (``model``,
        ``physical_cores``, ``logical_cores``), ``gpu`` (or None), ``tvm``, ``tvm_ffi``,
        ``python``.
    """
    try:
        import psutil

        physical, logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    except ImportError:
        physical, logical = None, os.cpu_count()
    argv = list(sys.argv if argv is None else argv)
    return {
        "schema": SCHEMA_VERSION,
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *argv]),
        "cwd": os.getcwd(),
        "target": target_json(target),
        "cpu": {"model": cpu_model(), "physical_cores": physical, "logical_cores": logical},
        "gpu": gpu_name() if gpu else None,
        **_versions(),
        "python": platform.python_version(),
    }


def describe(doc):
    """The machine and versions of a result set, flat, for its Markdown.

    Reads ``doc["setup"]["tuned_in"]`` (the tuning's record, kept when a set is re-measured),
    else the machine fields of an older ``doc["setup"]`` (before the environment record), else
    ``doc["environment"]``.

    Parameters
    ----------
    doc : dict
        A result set.

    Returns
    -------
    dict
        ``date``, ``tvm``, ``tvm_ffi``, ``python``, ``cpu``, ``physical_cores``,
        ``logical_cores``, ``target`` (text), ``gpu``.
    """
    setup = doc.get("setup") or {}
    env = setup.get("tuned_in")
    if env is None and "tvm" in setup and "date" in setup:  # written before the record existed
        cores = setup.get("cores") or {}
        return {
            "date": setup["date"],
            "tvm": setup["tvm"],
            "tvm_ffi": setup.get("tvm_ffi"),
            "python": setup.get("python"),
            "cpu": setup.get("cpu"),
            "physical_cores": cores.get("physical"),
            "logical_cores": cores.get("logical"),
            "target": setup.get("target"),
            "gpu": setup.get("gpu"),
        }
    env = env or doc["environment"]
    target = env.get("target")
    return {
        "date": env["date"],
        "tvm": env["tvm"],
        "tvm_ffi": env["tvm_ffi"],
        "python": env["python"],
        "cpu": env["cpu"]["model"],
        "physical_cores": env["cpu"]["physical_cores"],
        "logical_cores": env["cpu"]["logical_cores"],
        "target": target if target is None else json.dumps(target, separators=(",", ":")),
        "gpu": env.get("gpu"),
    }
