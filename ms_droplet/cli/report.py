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
"""What `tune` and `tune-model` print: the text tables, and the same results as JSON.

The JSON written by ``--json`` has a ``schema_version``; fields are added without changing it,
a field renamed or removed (or its meaning changed) raises it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

from ..kernel import phase_totals

SCHEMA_VERSION = 2


@dataclass
class TuneResult:
    """What one `tune` run found: the kernel's label and :func:`ms_droplet.tune_kernel`'s
    result."""

    workload: str
    kernel: object  # ms_droplet.kernel.KernelTuneResult


@dataclass
class ModelRunResult:
    """What one `tune-model` run found: the tuning result and the side-by-side comparison."""

    model: str
    batch_size: int | None  # a zoo model's; None for a model from a file
    tuned: object  # ms_droplet.relax.ModelTuneResult
    untuned_secs: float
    tuned_secs: float
    latency_rounds: int
    numerics: object  # ms_droplet.relax.OutputComparison
    wall_secs: float
    failures: dict[str, int] = field(default_factory=dict)  # cause -> failed candidates
    measured: int = 0  # candidates the measure callback saw (all tasks)
    reference: object = None  # ms_droplet.relax.sources.ReferenceComparison (ONNX models)
    reference_note: str = ""  # why there is no reference comparison for an ONNX model
    exported: str | None = None  # the library written by --export
    entry: str = "forward"  # the Relax function to run
    description: str = ""  # the model as the table names it: its inputs' shapes, or batch size

    @property
    def all_failed(self) -> bool:
        """Whether every measured candidate of the run failed (none was measured: False)."""
        return self.measured > 0 and sum(self.failures.values()) >= self.measured

    @property
    def speedup(self) -> float:
        return self.untuned_secs / self.tuned_secs if self.tuned_secs > 0 else math.nan


# ------------------------------------------------------------------------------------- text
def _us(secs: float) -> str:
    return f"{secs * 1e6:.2f}" if math.isfinite(secs) else "-"


def _ms(secs: float) -> str:
    return f"{secs * 1e3:.3f} ms" if math.isfinite(secs) else "-"


def _failures(failures: dict[str, int]) -> str:
    """``"builder timeout 4, run error 1"``: the causes, most frequent first."""
    return ", ".join(f"{c} {n}" for c, n in sorted(failures.items(), key=lambda x: -x[1]))


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    """``key | value`` lines, the keys padded to one width."""
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}} | {v}" for k, v in rows]


def format_result(result: TuneResult) -> str:
    """The table printed at the end of `tune`."""
    kernel = result.kernel
    rows = [
        ("workload", result.workload),
        ("target", kernel.target),
        ("strategy", kernel.strategy),
        (
            "best latency",
            f"{kernel.best_secs * 1e6:.2f} us" if math.isfinite(kernel.best_secs) else "none",
        ),
        ("GFLOPS", f"{kernel.gflops:.1f}" if math.isfinite(kernel.gflops) else "-"),
        ("trials", str(kernel.trials)),
    ]
    failures = getattr(kernel, "failures", None)
    if failures:
        rows.append(
            ("failed", f"{sum(failures.values())} of {kernel.trials}: {_failures(failures)}")
        )
    for report in kernel.reports:
        rows.append(
            (
                f"  task {report.task_name}",
                f"exploration {report.exploration}, descent {report.descent} "
                f"(re-measured {report.remeasured}), moves {report.moves}, "
                f"invalid {report.invalid}, duplicates skipped {report.duplicates}, "
                f"failed {report.failures}",
            )
        )
        rows.append(("  stop", report.stop_reason))
    rows.append(("wall time", f"{kernel.wall_secs:.1f} s"))
    rows.append(("database", kernel.database))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line, *_rows(rows), line])


def format_model_result(result: ModelRunResult, name_width: int = 60) -> str:
    """The per-task table and the end-to-end comparison printed by `tune-model`."""
    tuned = result.tuned
    header = ("task", "weight", "trials", "valid", "best us", "db best us", "applied")
    rows = []
    for row in tuned.tasks:
        name = row.name if len(row.name) <= name_width else row.name[: name_width - 3] + "..."
        rows.append(
            (
                name,
                f"{row.weight:g}",
                str(row.trials),
                str(row.valid),
                _us(row.best_secs),
                _us(row.database_best_secs),
                {True: "yes", False: "no", None: "-"}[row.applied],
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = " | ".join(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:]))
        return f"{first} | {rest}"

    rule = "-" * len(line(header))
    out = [rule, line(header), rule, *[line(r) for r in rows], rule]
    missing = tuned.no_valid_trial
    numerics = result.numerics
    summary = [
        ("model", result.description or f"{result.model} (batch {result.batch_size})"),
        ("target", str(tuned.target)),
        ("strategy", tuned.strategy),
        ("trials", f"{tuned.trials} of {tuned.max_trials_global} over {len(tuned.tasks)} tasks"),
        (
            "no valid trial",
            f"{len(missing)} task(s): {', '.join(missing)}" if missing else "none",
        ),
    ]
    if result.failures:
        summary.append(
            (
                "failed",
                f"{sum(result.failures.values())} of {result.measured}: "
                f"{_failures(result.failures)}",
            )
        )
    summary += [
        (
            "untuned latency",
            f"{_ms(result.untuned_secs)} (median of {result.latency_rounds} interleaved rounds)",
        ),
        ("tuned latency", f"{_ms(result.tuned_secs)}"),
        ("speed-up", f"{result.speedup:.2f}x" if math.isfinite(result.speedup) else "-"),
        (
            "output vs untuned",
            f"{'match' if numerics.ok else 'MISMATCH'} (max abs diff {numerics.max_abs_diff:.3g}, "
            f"max rel diff {numerics.max_rel_diff:.3g}; rtol {numerics.rtol:g}, "
            f"atol {numerics.atol:g})",
        ),
    ]
    reference = result.reference
    if reference is not None:
        summary.append(
            (
                f"output vs {reference.reference}",
                f"{'match' if reference.ok else 'MISMATCH'} (max abs diff "
                f"{reference.max_abs_diff:.3g}, max rel diff {reference.max_rel_diff:.3g}, "
                f"largest in {reference.worst!r}; rtol {reference.rtol:g}, "
                f"atol {reference.atol:g})",
            )
        )
    elif result.reference_note:
        summary.append(("output vs ONNX Runtime", f"not compared: {result.reference_note}"))
    if result.exported:
        summary.append(("exported", f"{result.exported} (entry {result.entry!r})"))
    summary += [
        ("tuning time", f"{tuned.tune_secs:.1f} s (compile {tuned.compile_secs:.1f} s)"),
        ("wall time", f"{result.wall_secs:.1f} s"),
        ("database", _database(tuned.work_dir)),
    ]
    return "\n".join(out + _rows(summary))


def _database(work_dir: str) -> str:
    from ..workdir import RECORD_FILE  # pylint: disable=import-outside-toplevel

    return os.path.join(work_dir, RECORD_FILE)


# ------------------------------------------------------------------------------------- JSON
def _plain(value):
    """``value`` with dataclasses as dicts, numpy scalars as numbers and non-finite floats as
    ``None`` (JSON has no NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if getattr(value, "shape", None) == ():  # a numpy scalar, e.g. a float32 difference
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _common(command: str, run, best_secs: float, wall_secs: float) -> dict:
    """The fields of every ``--json`` document; ``run``: a ``KernelTuneResult`` or a
    ``ModelTuneResult`` (both have target, strategy, trials, work_dir and reports)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "target": str(run.target),
        "strategy": run.strategy,
        "best_secs": best_secs,
        "trials": run.trials,
        "trials_per_phase": phase_totals(run.reports),
        "wall_secs": wall_secs,
        "work_dir": run.work_dir,
        "database": _database(run.work_dir),
        "reports": run.reports,
    }


def result_json(result: TuneResult) -> dict:
    """The ``--json`` document of `tune`."""
    kernel = result.kernel
    document = _common("tune", kernel, kernel.best_secs, kernel.wall_secs)
    document.update(workload=result.workload, gflops=kernel.gflops, flop=kernel.flop)
    document["failures"] = dict(getattr(kernel, "failures", {}))
    document["curve"] = kernel.curve
    return _plain(document)


def model_result_json(result: ModelRunResult) -> dict:
    """The ``--json`` document of `tune-model`: ``best_secs`` is the tuned model's latency."""
    tuned = result.tuned
    numerics = result.numerics
    document = _common("tune-model", tuned, result.tuned_secs, result.wall_secs)
    document.update(model=result.model, batch_size=result.batch_size, entry=result.entry)
    document.update(untuned_secs=result.untuned_secs, speedup=result.speedup)
    document.update(latency_rounds=result.latency_rounds, output_match=bool(numerics.ok))
    document.update(max_abs_diff=numerics.max_abs_diff, max_rel_diff=numerics.max_rel_diff)
    document.update(max_trials=tuned.max_trials_global, no_valid_trial=tuned.no_valid_trial)
    document.update(tune_secs=tuned.tune_secs, compile_secs=tuned.compile_secs)
    reference = result.reference
    document["reference"] = (
        None
        if reference is None
        else {
            "framework": reference.reference,
            "match": bool(reference.ok),
            "max_abs_diff": reference.max_abs_diff,
            "max_rel_diff": reference.max_rel_diff,
            "worst_output": reference.worst,
            "rtol": reference.rtol,
            "atol": reference.atol,
        }
    )
    document["exported"] = result.exported
    document["failures"] = dict(result.failures)
    document["tasks"] = tuned.tasks
    return _plain(document)


def write_json(path: str, document: dict) -> None:
    """Write ``document`` to ``path``; ``"-"``: to stdout."""
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
