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
"""The commands of ``ms-droplet``: `tune`, `tune-model`, `repair`, and :func:`main`.

:func:`main` is the only place of the package that configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..measure import default_runner, respect_cpu_affinity
from . import report
from .parser import DEFAULT_WORKLOAD, build_parser
from .report import ModelRunResult, TuneResult


class UsageError(ValueError):
    """A bad command-line value; printed without a traceback."""


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
    from ..rpc import RPCTrackerError, parse_tracker, rpc_runner  # pylint: disable=import-outside-toplevel

    try:
        return rpc_runner(
            parse_tracker(args.rpc_tracker),
            args.rpc_key,
            session_timeout_sec=args.rpc_session_timeout,
            max_workers=args.rpc_parallel,
        )
    except (ValueError, RPCTrackerError) as err:
        raise UsageError(str(err)) from None


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
    """Run `tune`: one kernel through :func:`ms_droplet.tune_kernel`."""
    # pylint: disable=import-outside-toplevel
    from ..kernel import tune_kernel
    from ..target import parse_target

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
    os.makedirs(args.work_dir, exist_ok=True)
    runner = make_runner(args)  # an RPC tracker is checked before anything starts
    kernel = tune_kernel(
        mod,
        target,
        args.work_dir,
        max_trials=args.trials,
        strategy=args.strategy,
        # Other strategies ignore --exploration-trials, as they always have.
        exploration_trials=args.exploration_trials if args.strategy == "droplet" else None,
        num_trials_per_iter=args.num_trials_per_iter,
        seed=args.seed,
        builder=args.builder,
        runner=runner,
        progress=not args.no_progress,
    )
    return TuneResult(workload=label, kernel=kernel)


def load_model_source(args: argparse.Namespace):
    """The model `tune-model` tunes (a zoo model, an ONNX file or a TVMScript file), loaded and
    checked before anything is written: a bad file is a usage error naming it and the fix."""
    # pylint: disable=import-outside-toplevel
    from .. import models
    from ..relax.sources import ModelInputError, load_onnx, load_relax_script, parse_input_shape

    if args.input_shape and args.onnx is None:
        raise UsageError(
            f"--input-shape ({args.input_shape[0]!r}) applies to --onnx only; a zoo model "
            "takes --batch-size, a TVMScript module has its shapes written in it"
        )
    if args.batch_size is not None and args.model is None:
        raise UsageError(
            f"--batch-size ({args.batch_size}) applies to --model only; give the input's whole "
            "shape with --input-shape NAME=D1,D2,... (--onnx) or write it in the module (--relax)"
        )
    try:
        if args.onnx is not None:
            shapes: dict[str, tuple[int, ...]] = {}
            for text in args.input_shape:
                name, shape = parse_input_shape(text)
                if name in shapes:
                    raise ModelInputError(f"--input-shape: input {name!r} is given twice")
                shapes[name] = shape
            return load_onnx(args.onnx, shapes)
        if args.relax is not None:
            return load_relax_script(args.relax)
    except ModelInputError as err:
        raise UsageError(str(err)) from None
    return models.get_model(args.model, batch_size=args.batch_size or 1)


def _describe_model(model) -> str:
    """``mlp (batch 1)`` for a zoo model; ``model.onnx (input 1x784 float32)`` otherwise."""
    if getattr(model, "source", "zoo") == "zoo":
        return f"{model.name} (batch {model.options.get('batch_size', 1)})"
    shapes = ", ".join(
        f"{spec.name} {'x'.join(map(str, spec.shape))} {spec.dtype}" for spec in model.inputs
    )
    return f"{model.name} ({shapes})"


def tune_model_command(args: argparse.Namespace, model) -> ModelRunResult:
    """Run `tune-model` on ``model`` (:func:`load_model_source`): tune it, compile it, check it
    (against the untuned build; an ONNX model also against ONNX Runtime) and time it against
    the untuned build; export it if asked and its outputs match."""
    # pylint: disable=import-outside-toplevel
    from .. import relax as droplet_relax
    from ..builder import FastBuilder
    from ..interrupt import stop_requested
    from ..kernel import TrialMonitor
    from ..relax.sources import ModelInputError, compare_with_reference, onnxruntime_outputs
    from ..target import parse_target

    if args.max_trials_per_task is not None and args.max_trials_per_task > args.trials:
        raise UsageError(
            f"--max-trials-per-task ({args.max_trials_per_task}) must not exceed --trials "
            f"({args.trials}); lower it or raise --trials"
        )
    target = parse_target(args.target)
    os.makedirs(args.work_dir, exist_ok=True)
    runner = make_runner(args)  # an RPC tracker is checked before anything starts
    monitor = TrialMonitor(
        args.trials, progress=not args.no_progress, strategy_stops=args.strategy == "droplet"
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
            measure_callbacks=[monitor.callback],
            seed=args.seed,
        )
    finally:
        monitor.close()
        if args.builder == "fast":
            builder.shutdown()
    if stop_requested():
        raise KeyboardInterrupt("stopped on request before compiling")  # _guarded reports it
    untuned = droplet_relax.compile_untuned(tuned.mod, target)
    arguments = model.random_arguments(seed=args.seed)
    # The tuned build runs once; its outputs are compared with both references.
    outputs = droplet_relax.run_model(tuned.executable, model.entry, arguments)
    numerics = droplet_relax.compare_arrays(
        droplet_relax.run_model(untuned, model.entry, arguments), outputs
    )
    reference, reference_note = None, ""
    if getattr(model, "source", "zoo") == "onnx":
        try:
            expected = onnxruntime_outputs(model.path, arguments, model.inputs)
        except ModelInputError as err:  # onnxruntime is not installed
            reference_note = str(err)
        else:
            reference = compare_with_reference(expected, outputs, names=model.output_names)
    latency = droplet_relax.measure_latency(
        {"untuned": untuned, "tuned": tuned.executable},
        model.entry,
        arguments,
        rounds=args.latency_rounds,
    )
    exported = None
    if args.export is not None and numerics.ok and (reference is None or reference.ok):
        exported = export_library(tuned.executable, args.export)
    return ModelRunResult(
        model=model.name,
        batch_size=getattr(model, "options", {}).get("batch_size"),
        description=_describe_model(model),
        tuned=tuned,
        untuned_secs=latency["untuned"].median,
        tuned_secs=latency["tuned"].median,
        latency_rounds=args.latency_rounds,
        numerics=numerics,
        wall_secs=time.perf_counter() - start,
        failures=dict(monitor.failures),
        measured=monitor.trials,
        reference=reference,
        reference_note=reference_note,
        exported=exported,
        entry=model.entry,
    )


def export_library(executable, path: str) -> str:
    """Write ``executable`` as a shared library at ``path``, whole or not at all: it is written
    beside it under a temporary name, then renamed."""
    import tempfile  # pylint: disable=import-outside-toplevel

    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] or ".so"
    handle, partial = tempfile.mkstemp(prefix=".ms-droplet-export-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        executable.export_library(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return os.path.abspath(path)


class _Interrupted(Exception):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, signum: int, work_dir: str) -> None:
        super().__init__(signum)
        self.signum, self.work_dir = signum, work_dir

    def message(self) -> str:
        import signal  # pylint: disable=import-outside-toplevel

        from ..workdir import RECORD_FILE  # pylint: disable=import-outside-toplevel

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
    from ..interrupt import graceful_interrupts
    from ..workdir import (
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
    from ..workdir import WorkDirBusyError, check_work_dir, lock_work_dir  # pylint: disable=import-outside-toplevel

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


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an unwritable ``--json`` or ``--plot`` before anything is tuned."""
    if args.json is not None and args.json != "-":
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            raise UsageError(
                f"--json {args.json!r}: no such directory {folder!r}; create it, write the "
                "JSON elsewhere, or give --json - for stdout"
            )
    if getattr(args, "export", None) is not None:
        folder = os.path.dirname(os.path.abspath(args.export))
        if not os.path.isdir(folder):
            raise UsageError(
                f"--export {args.export!r}: no such directory {folder!r}; create it or export "
                "elsewhere"
            )
        if os.path.splitext(args.export)[1] not in (".so", ".dylib", ".dll", ".tar"):
            raise UsageError(
                f"--export {args.export!r}: give a file name ending in .so (a shared library; "
                ".tar for the object files)"
            )
    if getattr(args, "plot", None) is not None:
        from .plot import check_plot_path  # pylint: disable=import-outside-toplevel

        try:
            check_plot_path(args.plot)
        except ValueError as err:
            raise UsageError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ms-droplet`` and ``python -m ms_droplet``.

    Exit status: 0; 1 when `tune-model`'s tuned outputs differ from the untuned model's (or an
    ONNX model's from ONNX Runtime's); 2 for
    a usage error; 3 (:data:`ms_droplet.failures.EXIT_ALL_FAILED`) when every candidate of
    the run failed to build or run; 128 + the signal number when stopped by SIGINT/SIGTERM.
    """
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
    respect_cpu_affinity()  # logged at INFO (-v); before any runner worker or thread pool
    if args.command == "repair":
        return repair(args, parser)
    try:
        _check_outputs(args)
        if args.command == "tune-model":
            model = load_model_source(args)  # a bad model file: nothing written
            model_result = _guarded(args.work_dir, lambda: tune_model_command(args, model))
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
    # With --json - the JSON alone goes to stdout, so that it can be piped.
    table_out = sys.stderr if args.json == "-" else sys.stdout
    if args.command == "tune-model":
        print(report.format_model_result(model_result), file=table_out)
        if args.json is not None:
            report.write_json(args.json, report.model_result_json(model_result))
        reference = model_result.reference
        if not model_result.numerics.ok or (reference is not None and not reference.ok):
            if reference is not None and not reference.ok:
                print(f"ms-droplet: {reference.message()}", file=sys.stderr)
            if args.export is not None:
                print(f"ms-droplet: {args.export} not written: wrong outputs", file=sys.stderr)
            return 1  # wrong outputs outrank an untuned model
        return _all_failed(model_result.failures, model_result.measured, model_result.all_failed)
    print(report.format_result(result), file=table_out)
    if args.json is not None:
        report.write_json(args.json, report.result_json(result))
    if args.plot is not None:
        from .plot import plot_curve  # pylint: disable=import-outside-toplevel

        plot_curve(result.kernel, args.plot, title=f"{result.workload}: {result.kernel.strategy}")
    kernel = result.kernel
    return _all_failed(kernel.failures, kernel.trials, kernel.all_failed)


def _all_failed(failures: dict[str, int], trials: int, all_failed: bool) -> int:
    """The exit status of a finished run: 0, or ``EXIT_ALL_FAILED`` (3) with one warning that
    names the main cause and its fix when every candidate failed (nothing was tuned, yet the
    run ended normally: a slow machine's builds all timing out looks like this)."""
    # pylint: disable=import-outside-toplevel
    from ..failures import EXIT_ALL_FAILED, all_failed_message

    if not all_failed:
        return 0
    logging.getLogger("ms_droplet").warning(
        "ms-droplet: %s (exit status %d)", all_failed_message(failures, trials), EXIT_ALL_FAILED
    )
    return EXIT_ALL_FAILED
