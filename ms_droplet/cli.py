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

from .measure import default_runner
from .models import MODEL_NAMES

DEFAULT_WORKLOAD = "GMM:1"
DEFAULT_TRIALS = 64
DEFAULT_TRIALS_PER_ITER = 16
STRATEGIES = ("droplet", "evolutionary", "replay-trace", "replay-func")
DEFAULT_MODEL_TRIALS = 256
DEFAULT_LATENCY_ROUNDS = 7


class UsageError(ValueError):
    """A bad command-line value; printed without a traceback."""


def _int_at_least(name: str, minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message naming the option, the rule,
    the value received and the fix."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer >= {minimum}, got {text!r}; give a whole number of "
                f"at least {minimum}, or leave {name} out for its default"
            )
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
        help="droplet only: trials of evolutionary exploration (default: half of --trials, "
        "between 16 and 300, in whole batches)",
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
        help="where MetaSchedule's database and logs go (default ./ms_droplet_work). "
        "Rerunning with the same directory resumes: its records count toward exploration, the "
        "descent starts from its best record, and nothing in it is measured again; --trials "
        "is the budget of this run. One process at a time (a lock refuses a second one); "
        "Ctrl-C stops after the batch in flight, keeping every record",
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_rpc_arguments(tune)
    tune.add_argument("-v", "--verbose", action="store_true", help="show MetaSchedule's logs")
    _add_tune_model_parser(sub)
    fix = sub.add_parser(
        "repair",
        help="make a work_dir's database loadable again: move malformed lines aside",
        description="Check database_workload.json and database_tuning_record.json of a work_dir "
        "line by line. Malformed lines move to <file>.rejected (with the records of a rejected "
        "workload), a torn last line to <file>.torn; every other record is kept.",
    )
    fix.add_argument("--work-dir", required=True, help="the work_dir to repair")
    fix.add_argument(
        "--deep",
        action="store_true",
        help="also parse each line with MetaSchedule (finds valid JSON it cannot read; slower)",
    )
    fix.add_argument("-v", "--verbose", action="store_true", help="show the warnings")
    return parser


def _model_name(text: str) -> str:
    """An argparse type: a model of the zoo, with a message listing the valid names."""
    if text not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; use one of {', '.join(MODEL_NAMES)} (e.g. --model resnet18)"
        )
    return text


def _add_rpc_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rpc-*``: measure through TVM's RPC tracker instead of on this machine."""
    group = parser.add_argument_group(
        "measuring over RPC", "measure on the servers of a TVM RPC tracker (see the README)"
    )
    group.add_argument(
        "--rpc-tracker",
        default=None,
        metavar="HOST:PORT",
        help="the tracker's address (python -m tvm.exec.rpc_tracker); needs --rpc-key",
    )
    group.add_argument("--rpc-key", default=None, help="the servers' --key")
    group.add_argument(
        "--rpc-session-timeout",
        type=float,
        default=30.0,
        metavar="SEC",
        help="longest session of one candidate on a server (default 30)",
    )
    group.add_argument(
        "--rpc-parallel",
        type=_int_at_least("--rpc-parallel", 1),
        default=None,
        metavar="N",
        help="parallel sessions (default: one per server of the key connected now)",
    )


def make_runner(args: argparse.Namespace):
    """The runner of `tune` / `tune-model`: local, or RPC when ``--rpc-tracker`` is given."""
    if args.rpc_tracker is None:
        if args.rpc_key is not None:
            raise UsageError(
                f"--rpc-key ({args.rpc_key!r}) needs --rpc-tracker HOST:PORT; give the tracker's "
                "address, or drop --rpc-key to measure on this machine"
            )
        return default_runner()
    if not args.rpc_key:
        raise UsageError(
            "--rpc-tracker needs --rpc-key KEY, the --key its servers were started with "
            "(python -m tvm.exec.query_rpc_tracker lists them)"
        )
    from .rpc import RPCTrackerError, parse_tracker, rpc_runner  # pylint: disable=import-outside-toplevel

    try:
        return rpc_runner(
            parse_tracker(args.rpc_tracker),
            args.rpc_key,
            session_timeout_sec=args.rpc_session_timeout,
            max_workers=args.rpc_parallel,
        )
    except (ValueError, RPCTrackerError) as err:
        raise UsageError(str(err)) from None


def _add_tune_model_parser(sub) -> None:
    model = sub.add_parser(
        "tune-model",
        help="tune a whole Relax model of the zoo, compile it and compare it with the untuned "
        "build",
        description="Tune every task of a model of ms_droplet.models under one budget, compile "
        "it with the database, check its output against the untuned build and time both side "
        "by side.",
    )
    model.add_argument(
        "--model",
        required=True,
        type=_model_name,
        metavar="{" + ",".join(MODEL_NAMES) + "}",
        help="the model: resnet18 (224x224 images), transformer (one encoder block, "
        "sequence 128, d_model 512), mlp (784-512-256-10)",
    )
    model.add_argument(
        "--batch-size",
        type=_int_at_least("--batch-size", 1),
        default=1,
        help="batch size of the model input (default 1)",
    )
    model.add_argument(
        "--target",
        default=None,
        help='target as JSON, e.g. \'{"kind": "llvm", "mcpu": "znver5", "num-cores": 2}\'; '
        "default: this machine's CPU (its mcpu and physical cores)",
    )
    model.add_argument(
        "--trials",
        type=_int_at_least("--trials", 1),
        default=DEFAULT_MODEL_TRIALS,
        help=f"global measurement budget, all tasks together (default {DEFAULT_MODEL_TRIALS})",
    )
    model.add_argument(
        "--max-trials-per-task",
        type=_int_at_least("--max-trials-per-task", 1),
        default=None,
        help="cap of one task (default: no cap below --trials)",
    )
    model.add_argument(
        "--num-trials-per-iter",
        type=_int_at_least("--num-trials-per-iter", 1),
        default=DEFAULT_TRIALS_PER_ITER,
        help=f"candidates per measured batch (default {DEFAULT_TRIALS_PER_ITER})",
    )
    model.add_argument(
        "--strategy",
        default="droplet",
        choices=STRATEGIES,
        help="search strategy (default droplet; the others are MetaSchedule's, for comparison)",
    )
    model.add_argument(
        "--builder",
        default="fast",
        choices=("fast", "local"),
        help="fast: ms_droplet.FastBuilder (default); local: MetaSchedule's LocalBuilder",
    )
    model.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    model.add_argument(
        "--work-dir",
        default="ms_droplet_work",
        help="where MetaSchedule's database and logs go (default ./ms_droplet_work)",
    )
    model.add_argument(
        "--latency-rounds",
        type=_int_at_least("--latency-rounds", 1),
        default=DEFAULT_LATENCY_ROUNDS,
        help="interleaved timing rounds of the untuned and tuned builds; the medians are "
        f"compared (default {DEFAULT_LATENCY_ROUNDS})",
    )
    model.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_rpc_arguments(model)
    model.add_argument("-v", "--verbose", action="store_true", help="show MetaSchedule's logs")


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
    runner = make_runner(args)  # an RPC tracker is checked before anything starts
    progress = _Progress(
        args.trials, enabled=not args.no_progress, strategy_stops=args.strategy == "droplet"
    )
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
            runner=runner,
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


class _Progress:
    """A tqdm bar over trials, fed by a MeasureCallback after each measured batch."""

    def __init__(self, total: int, enabled: bool, strategy_stops: bool = False) -> None:
        """``strategy_stops``: the search strategy ends its tasks itself on a stop request
        (``DropletSearch`` does); otherwise this callback ends the run after the batch in
        flight has been saved (the callbacks before it commit the batch to the database)."""
        # pylint: disable=import-outside-toplevel
        from tqdm import tqdm
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        from .interrupt import stop_requested

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
                if stop_requested() and not strategy_stops:
                    raise KeyboardInterrupt("stop requested")  # the batch is saved already

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


@dataclass
class ModelRunResult:
    """What one `tune-model` run found: the tuning result and the side-by-side comparison."""

    model: str
    batch_size: int
    tuned: object  # ms_droplet.relax.ModelTuneResult
    untuned_secs: float
    tuned_secs: float
    latency_rounds: int
    numerics: object  # ms_droplet.relax.OutputComparison
    wall_secs: float

    @property
    def speedup(self) -> float:
        return self.untuned_secs / self.tuned_secs if self.tuned_secs > 0 else math.nan


def tune_model_command(args: argparse.Namespace) -> ModelRunResult:
    """Run `tune-model`: tune a zoo model, compile it, check it and time it against untuned."""
    # pylint: disable=import-outside-toplevel
    from . import models
    from . import relax as droplet_relax
    from .builder import FastBuilder
    from .interrupt import stop_requested
    from .target import parse_target

    if args.max_trials_per_task is not None and args.max_trials_per_task > args.trials:
        raise UsageError(
            f"--max-trials-per-task ({args.max_trials_per_task}) must not exceed --trials "
            f"({args.trials}); lower it or raise --trials"
        )
    target = parse_target(args.target)
    model = models.get_model(args.model, batch_size=args.batch_size)
    os.makedirs(args.work_dir, exist_ok=True)
    runner = make_runner(args)  # an RPC tracker is checked before anything starts
    progress = _Progress(
        args.trials, enabled=not args.no_progress, strategy_stops=args.strategy == "droplet"
    )
    builder = FastBuilder() if args.builder == "fast" else "local"
    start = time.perf_counter()
    try:
        tuned = droplet_relax.tune_model(
            model.mod,
            target,
            args.work_dir,
            args.trials,
            strategy=args.strategy,
            max_trials_per_task=args.max_trials_per_task,
            num_trials_per_iter=args.num_trials_per_iter,
            builder=builder,
            runner=runner,
            measure_callbacks=[progress.callback],
            seed=args.seed,
        )
    finally:
        progress.close()
        if args.builder == "fast":
            builder.shutdown()
    if stop_requested():
        raise KeyboardInterrupt("stopped on request before compiling")  # _guarded reports it
    untuned = droplet_relax.compile_untuned(tuned.mod, target)
    arguments = model.random_arguments(seed=args.seed)
    numerics = droplet_relax.compare_outputs(untuned, tuned.executable, model.entry, arguments)
    latency = droplet_relax.measure_latency(
        {"untuned": untuned, "tuned": tuned.executable},
        model.entry,
        arguments,
        rounds=args.latency_rounds,
    )
    return ModelRunResult(
        model=args.model,
        batch_size=args.batch_size,
        tuned=tuned,
        untuned_secs=latency["untuned"].median,
        tuned_secs=latency["tuned"].median,
        latency_rounds=args.latency_rounds,
        numerics=numerics,
        wall_secs=time.perf_counter() - start,
    )


def _us(secs: float) -> str:
    return f"{secs * 1e6:.2f}" if math.isfinite(secs) else "-"


def _ms(secs: float) -> str:
    return f"{secs * 1e3:.3f} ms" if math.isfinite(secs) else "-"


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
        ("model", f"{result.model} (batch {result.batch_size})"),
        ("target", str(tuned.target)),
        ("strategy", tuned.strategy),
        ("trials", f"{tuned.trials} of {tuned.max_trials_global} over {len(tuned.tasks)} tasks"),
        (
            "no valid trial",
            f"{len(missing)} task(s): {', '.join(missing)}" if missing else "none",
        ),
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
        ("tuning time", f"{tuned.tune_secs:.1f} s (compile {tuned.compile_secs:.1f} s)"),
        ("wall time", f"{result.wall_secs:.1f} s"),
        ("database", os.path.join(tuned.work_dir, "database_tuning_record.json")),
    ]
    width = max(len(k) for k, _ in summary)
    out += [f"{k:<{width}} | {v}" for k, v in summary]
    return "\n".join(out)


class _Interrupted(Exception):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, signum: int, work_dir: str) -> None:
        super().__init__(signum)
        self.signum, self.work_dir = signum, work_dir

    def message(self) -> str:
        import signal  # pylint: disable=import-outside-toplevel

        from .workdir import RECORD_FILE  # pylint: disable=import-outside-toplevel

        path = os.path.join(self.work_dir, RECORD_FILE)
        records = 0
        if os.path.exists(path):
            with open(path, "rb") as f:
                records = f.read().count(b"\n")
        return (
            f"ms-droplet: interrupted by {signal.Signals(self.signum).name}. {path} keeps every "
            f"measured record ({records} in all). To "
            "resume, run the same command again: known records count toward exploration, the "
            "descent starts from the best one, and nothing measured is measured again."
        )


def _guarded(work_dir: str, run):
    """Run one tuning command on ``work_dir``: check its database, lock it, stop cleanly.

    A torn last database line (an interrupted write) is recovered with a warning; any other
    malformed line is a usage error that names the file and line. Another process tuning into
    ``work_dir`` is a usage error. The first SIGINT or SIGTERM stops the run after the batch in
    flight (see :mod:`ms_droplet.interrupt`), which then raises :class:`_Interrupted`.
    """
    # pylint: disable=import-outside-toplevel
    from .interrupt import graceful_interrupts
    from .workdir import (
        DatabaseFileError,
        WorkDirBusyError,
        acquire_work_dir,
        check_work_dir,
        release_work_dir,
    )

    try:
        check_work_dir(work_dir)
        lock = acquire_work_dir(work_dir)
    except (DatabaseFileError, WorkDirBusyError) as err:
        raise UsageError(f"--work-dir: {err}") from None
    try:
        with graceful_interrupts(" and saving it") as received:
            try:
                result = run()
            except BaseException as err:
                if received:
                    raise _Interrupted(received[0], work_dir) from err
                raise
            if received:
                raise _Interrupted(received[0], work_dir)
            return result
    finally:
        release_work_dir(lock)


def repair(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `repair`: move malformed database lines aside, keep every other record."""
    from .workdir import WorkDirBusyError, check_work_dir, lock_work_dir  # pylint: disable=import-outside-toplevel

    if not os.path.isdir(args.work_dir):
        parser.error(f"--work-dir: no such directory {args.work_dir!r}")
    try:
        with lock_work_dir(args.work_dir):
            check = check_work_dir(args.work_dir, repair=True, deep=args.deep)
    except WorkDirBusyError as err:
        parser.error(f"--work-dir: {err}")
    for found in (check.workloads, check.records):
        if found is None:
            continue
        actions = [f"{found.lines} lines kept"]
        if found.torn_bytes:
            actions.append(f"torn last line ({found.torn_bytes} bytes) moved to {found.path}.torn")
        if found.newline_added:
            actions.append("final newline added")
        if found.blank_removed:
            actions.append(f"{found.blank_removed} blank lines removed")
        if found.rejected:
            lines = ", ".join(str(n) for n, _ in found.bad_lines[:10])
            actions.append(
                f"{found.rejected} malformed lines ({lines}) moved to {found.path}.rejected"
            )
        print(f"{found.path}: " + "; ".join(actions))
    if check.workloads is None and check.records is None:
        print(f"{args.work_dir}: no database files")
    return 0


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
    if args.command == "repair":
        return repair(args, parser)
    try:
        if args.command == "tune-model":
            model_result = _guarded(args.work_dir, lambda: tune_model_command(args))
        else:
            result = _guarded(args.work_dir, lambda: tune(args))
    except UsageError as err:
        parser.error(str(err))
    except _Interrupted as stop:
        print(stop.message(), file=sys.stderr)
        return 128 + stop.signum
    except ValueError as err:
        if str(err).startswith("--"):
            parser.error(str(err))
        raise
    if args.command == "tune-model":
        print(format_model_result(model_result))
        return 0 if model_result.numerics.ok else 1
    print(format_result(result))
    return 0
