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
"""The ``ms-droplet`` command line: tune one kernel and print what was found.

``ms-droplet`` with no arguments tunes a default kernel on this machine's CPU. The only place
of the package that configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

DEFAULT_WORKLOAD = "GMM:1"
DEFAULT_TRIALS = 64
DEFAULT_TRIALS_PER_ITER = 16
STRATEGIES = ("droplet", "evolutionary", "replay-trace", "replay-func")


class UsageError(ValueError):
    """A bad command-line value; printed without a traceback."""


def _int_at_least(name: str, minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ms-droplet``."""
    parser = argparse.ArgumentParser(
        prog="ms-droplet",
        description="Tune TVM kernels with MetaSchedule and Droplet Search. "
        "Without a command, runs `tune` on a default kernel.",
    )
    sub = parser.add_subparsers(dest="command")
    tune = sub.add_parser("tune", help="tune one kernel (a te_workload or a TVMScript file)")
    source = tune.add_mutually_exclusive_group()
    source.add_argument(
        "--workload",
        default=None,
        help=f"NAME:INDEX from tvm.s_tir.meta_schedule.testing.te_workload (default "
        f"{DEFAULT_WORKLOAD}), e.g. GMM:0, C2D:3, DEP:0, NRM:0, SFM:0, CBR:0",
    )
    source.add_argument("--tir", default=None, help="a TVMScript file with the function to tune")
    tune.add_argument(
        "--target",
        default=None,
        help='target as JSON, e.g. \'{"kind": "llvm", "mcpu": "znver5", "num-cores": 2}\'; '
        "default: this machine's CPU (its mcpu and physical cores)",
    )
    tune.add_argument(
        "--trials",
        type=_int_at_least("--trials", 1),
        default=DEFAULT_TRIALS,
        help=f"total measurement budget (default {DEFAULT_TRIALS})",
    )
    tune.add_argument(
        "--exploration-trials",
        type=_int_at_least("--exploration-trials", 0),
        default=None,
        help="droplet only: trials of evolutionary exploration (default: 30%% of --trials, "
        "between 16 and 300)",
    )
    tune.add_argument(
        "--num-trials-per-iter",
        type=_int_at_least("--num-trials-per-iter", 1),
        default=DEFAULT_TRIALS_PER_ITER,
        help=f"candidates per measured batch (default {DEFAULT_TRIALS_PER_ITER})",
    )
    tune.add_argument(
        "--strategy",
        default="droplet",
        choices=STRATEGIES,
        help="search strategy (default droplet; the others are MetaSchedule's, for comparison)",
    )
    tune.add_argument(
        "--builder",
        default="fast",
        choices=("fast", "local"),
        help="fast: ms_droplet.FastBuilder, warm workers (default); local: MetaSchedule's "
        "LocalBuilder, new workers every batch",
    )
    tune.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tune.add_argument(
        "--work-dir",
        default="ms_droplet_work",
        help="where MetaSchedule's database and logs go (default ./ms_droplet_work); "
        "rerunning with the same directory starts from its best record",
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    tune.add_argument("-v", "--verbose", action="store_true", help="show MetaSchedule's logs")
    return parser


@dataclass
class TuneResult:
    """What one `tune` run found."""

    workload: str
    target: str
    strategy: str
    best_secs: float
    flop: float
    trials: int
    wall_secs: float
    database: str
    reports: list

    @property
    def gflops(self) -> float:
        return self.flop / self.best_secs / 1e9 if self.best_secs and self.flop else math.nan


def load_workload(workload: str | None, tir: str | None):
    """The PrimFunc/IRModule to tune and a label for it."""
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm.s_tir.meta_schedule.testing import te_workload  # pylint: disable=import-outside-toplevel

    if tir is not None:
        if not os.path.isfile(tir):
            raise UsageError(f"--tir: no such file {tir!r}; give the path of a TVMScript file")
        import runpy  # pylint: disable=import-outside-toplevel

        try:
            namespace = runpy.run_path(tir)
        except Exception as err:  # noqa: BLE001 - a user's script can raise anything
            raise UsageError(
                f"--tir: running {tir!r} failed: {type(err).__name__}: {err}"
            ) from None
        found = {
            name: value
            for name, value in namespace.items()
            if isinstance(value, (tvm.tirx.PrimFunc, tvm.IRModule)) and not name.startswith("_")
        }
        if len(found) > 1:
            found = {k: v for k, v in found.items() if k in ("main", "Module")} or found
        if len(found) != 1:
            raise UsageError(
                f"--tir: {tir!r} must define exactly one @T.prim_func or @I.ir_module (or one "
                f"named main / Module); found {sorted(found) or 'none'}"
            )
        (mod,) = found.values()
        return mod, os.path.basename(tir)
    workload = workload or DEFAULT_WORKLOAD
    name, _, index = workload.partition(":")
    names = sorted(te_workload.CONFIGS)
    if name not in te_workload.CONFIGS:
        raise UsageError(
            f"--workload: unknown workload {name!r} in {workload!r}; use NAME:INDEX with NAME "
            f"one of {', '.join(names)} (e.g. GMM:0)"
        )
    shapes = te_workload.CONFIGS[name][1]
    if not index.isdigit() or int(index) >= len(shapes):
        raise UsageError(
            f"--workload: {workload!r} needs a shape index 0..{len(shapes) - 1} after the colon "
            f"(e.g. {name}:0)"
        )
    return te_workload.create_te_workload(name, int(index)), f"{name}:{index}"


def tune(args: argparse.Namespace) -> TuneResult:
    """Run one tuning as described by parsed arguments."""
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from .builder import FastBuilder
    from .strategy import DropletSearch
    from .target import parse_target

    if (
        args.exploration_trials is not None
        and args.strategy == "droplet"
        and args.exploration_trials > args.trials
    ):
        raise UsageError(
            f"--exploration-trials ({args.exploration_trials}) must not exceed --trials "
            f"({args.trials}); lower it or raise --trials"
        )
    target = parse_target(args.target)
    mod, label = load_workload(args.workload, args.tir)
    if args.strategy == "droplet":
        strategy = DropletSearch(exploration_trials=args.exploration_trials)
    else:
        strategy = args.strategy
    os.makedirs(args.work_dir, exist_ok=True)
    progress = _Progress(args.trials, enabled=not args.no_progress)
    callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [progress.callback]
    builder = FastBuilder() if args.builder == "fast" else "local"
    start = time.perf_counter()
    try:
        database = ms.tune_tir(
            mod,
            target,
            args.work_dir,
            max_trials_global=args.trials,
            num_trials_per_iter=args.num_trials_per_iter,
            strategy=strategy,
            builder=builder,
            runner=ms.runner.LocalRunner(evaluator_config=default_evaluator_config()),
            measure_callbacks=callbacks,
            seed=args.seed,
        )
    finally:
        progress.close()
        if args.builder == "fast":
            builder.shutdown()
    wall = time.perf_counter() - start
    from tvm.s_tir.meta_schedule.tir_integration import _normalize_mod

    normalized = _normalize_mod(mod)
    record = database.query_tuning_record(normalized, target, workload_name="main")
    best = (
        float(sum(float(x) for x in record.run_secs) / len(record.run_secs))
        if record is not None
        else math.nan
    )
    return TuneResult(
        workload=label,
        target=str(target),
        strategy=args.strategy,
        best_secs=best,
        flop=float(estimate_tir_flops(normalized)),
        trials=progress.trials,
        wall_secs=wall,
        database=os.path.join(args.work_dir, "database_tuning_record.json"),
        reports=list(getattr(strategy, "reports", [])) if args.strategy == "droplet" else [],
    )


def default_evaluator_config():
    """The runner settings of the CLI and the benchmarks: three timings per call.

    Chosen from ``docs/benchmarks/build.md`` (``scripts/bench_build.py``, 6 kernels x 10 calls):
    ``number=3, repeat=3, min_repeat_ms=20`` cost 0.12 s a candidate against 0.22 s for
    MetaSchedule's default ``repeat=1, min_repeat_ms=100``, and their spread between calls was
    no larger (3.4 % against 9.4 % median coefficient of variation in that run).
    """
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # pylint: disable=import-outside-toplevel

    return EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


class _Progress:
    """A tqdm bar over trials, fed by a MeasureCallback after each measured batch."""

    def __init__(self, total: int, enabled: bool) -> None:
        # pylint: disable=import-outside-toplevel
        from tqdm import tqdm
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        self.trials = 0
        self.best = math.inf
        self.bar = tqdm(total=total, unit="trial", disable=not enabled, file=sys.stderr)
        outer = self

        @derived_object
        class ProgressCallback(PyMeasureCallback):
            def apply(
                self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
            ):
                for result in runner_results:
                    if result.run_secs is not None and result.error_msg is None:
                        secs = [float(x) for x in result.run_secs]
                        if secs and max(secs) < 1e9:
                            outer.best = min(outer.best, sum(secs) / len(secs))
                outer.trials += len(measure_candidates)
                outer.bar.update(len(measure_candidates))
                if math.isfinite(outer.best):
                    outer.bar.set_postfix_str(f"best {outer.best * 1e6:.2f} us")

        self.callback = ProgressCallback()

    def close(self) -> None:
        self.bar.close()


def format_result(result: TuneResult) -> str:
    """The table printed at the end of `tune`."""
    rows = [
        ("workload", result.workload),
        ("target", result.target),
        ("strategy", result.strategy),
        (
            "best latency",
            f"{result.best_secs * 1e6:.2f} us" if math.isfinite(result.best_secs) else "none",
        ),
        ("GFLOPS", f"{result.gflops:.1f}" if math.isfinite(result.gflops) else "-"),
        ("trials", str(result.trials)),
    ]
    for report in result.reports:
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
    rows.append(("wall time", f"{result.wall_secs:.1f} s"))
    rows.append(("database", result.database))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ms-droplet`` and ``python -m ms_droplet``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["tune"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    try:
        result = tune(args)
    except UsageError as err:
        parser.error(str(err))
    except ValueError as err:
        if str(err).startswith("--"):
            parser.error(str(err))
        raise
    print(format_result(result))
    return 0
