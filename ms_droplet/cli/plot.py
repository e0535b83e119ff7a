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
"""``tune --plot``: the best latency so far against trials and against wall-clock seconds.

Needs matplotlib (the ``plot`` extra); :func:`check_plot_path` says so before tuning starts.
"""

from __future__ import annotations

import os

# Colours and markers of the phases (the curve's ``phase``); None: a strategy without phases.
_PHASES = {
    "exploration": ("tab:blue", "o", "exploration"),
    "descent": ("tab:orange", "^", "descent"),
    None: ("tab:gray", "o", "measured"),
}


def check_plot_path(path: str) -> None:
    """Raise ``ValueError`` naming ``--plot`` unless matplotlib can write ``path``.

    Run before tuning, so that a missing matplotlib or a bad file name costs no tuning time.
    """
    try:
        from matplotlib.backend_bases import FigureCanvasBase  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ValueError(
            f"--plot {path!r} needs matplotlib, which is not installed; install it with "
            'pip install "ms-droplet[plot]" (or pip install matplotlib), or leave --plot out'
        ) from None
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        raise ValueError(
            f"--plot must name an image file ending in .png (or .{', .'.join(sorted(formats))}), "
            f"got {path!r}; e.g. --plot curve.png"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"--plot {path!r}: no such directory {folder!r}; create it or write the plot elsewhere"
        )


def plot_curve(kernel, path: str, title: str = "") -> None:
    """Draw ``kernel.curve`` (a :class:`ms_droplet.kernel.KernelTuneResult`) into ``path``.

    Two panels share the latency axis: against the trial index and against wall-clock seconds.
    Each measured candidate is a dot coloured by phase; the line is the best so far.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    # Figure without pyplot: no global state and no GUI backend, also in a headless process.
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    by_trial, by_time = figure.subplots(1, 2, sharey=True)
    curve = [p for p in kernel.curve if p.best_secs is not None]
    for axes, x_of, label in (
        (by_trial, lambda p: p.trial, "trial"),
        (by_time, lambda p: p.wall_secs, "wall-clock seconds"),
    ):
        for phase, (colour, marker, name) in _PHASES.items():
            points = [p for p in kernel.curve if p.phase == phase and p.secs is not None]
            if points:
                axes.scatter(
                    [x_of(p) for p in points],
                    [p.secs * 1e6 for p in points],
                    s=12,
                    c=colour,
                    marker=marker,
                    alpha=0.45,
                    label=f"{name} (each candidate)",
                )
        if curve:
            axes.step(
                [x_of(p) for p in curve],
                [p.best_secs * 1e6 for p in curve],
                where="post",
                color="black",
                linewidth=1.5,
                label="best so far",
            )
        axes.set_xlabel(label)
        axes.set_yscale("log")
        axes.grid(True, which="both", alpha=0.3)
    by_trial.set_ylabel("latency (us)")
    if by_trial.get_legend_handles_labels()[0]:  # nothing to name when every candidate failed
        by_trial.legend(loc="upper right", fontsize="small")
    figure.suptitle(title or f"{kernel.strategy} on {kernel.target}", fontsize="medium")
    figure.savefig(path, dpi=110)
