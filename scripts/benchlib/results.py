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
"""Result files: JSON that carries the environment record, Markdown, and curves as PNG."""

from __future__ import annotations

import json
import os


def _parent(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)


def write_json(path, doc, environment, *, indent=1, default=None):
    """Write a result set with its environment record first, under ``"environment"``.

    Parameters
    ----------
    path : str
        The file; its folder is made if missing.
    doc : dict
        The results (any ``"environment"`` key in it is replaced).
    environment : dict
        The record of :func:`benchlib.env.environment`; required, so that no result file goes
        without one.
    indent : int
        ``json.dump``'s indent.
    default : callable, optional
        ``json.dump``'s ``default`` (for values JSON does not know).

    Returns
    -------
    dict
        What was written.
    """
    if not isinstance(environment, dict) or "schema" not in environment:
        raise ValueError("write_json needs the environment record of benchlib.env.environment()")
    out = {"environment": environment, **{k: v for k, v in doc.items() if k != "environment"}}
    _parent(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=indent, default=default)
        f.write("\n")
    return out


def write_text(path, text):
    """Write Markdown (or any text) to ``path``, making its folder if missing.

    Parameters
    ----------
    path : str
    text : str
    """
    _parent(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def plot_curves(results, path):
    """Best-so-far latency against trials and against tuning seconds, one row per kernel.

    Parameters
    ----------
    results : list of dict
        Runs with ``kernel``, ``run``, ``seed`` and ``curve`` (``(trials, seconds, best us)``
        points; runs with an empty curve are left out).
    path : str
        The PNG.

    Returns
    -------
    bool
        False when matplotlib is missing (nothing written).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: pip install 'ms-droplet[plot]' to get the plot")
        return False
    kernels = sorted({r["kernel"] for r in results})
    fig, axes = plt.subplots(len(kernels), 2, figsize=(11, 3.2 * len(kernels)), squeeze=False)
    for row, kernel in zip(axes, kernels):
        for r in results:
            if r["kernel"] != kernel or not r["curve"]:
                continue
            trials, secs, best = zip(*r["curve"])
            label = f"{r['run']} s{r['seed']}"
            row[0].step(trials, best, where="post", label=label)
            row[1].step(secs, best, where="post", label=label)
        row[0].set(title=f"{kernel}: best so far", xlabel="trials", ylabel="latency (us)")
        row[1].set(title=f"{kernel}: best so far", xlabel="tuning seconds", ylabel="latency (us)")
        row[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
