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
"""The argument parser of ``ms-droplet``.

The options ``tune`` and ``tune-model`` share (target, budget, strategy, builder, work_dir,
progress, verbosity, ``--json``, RPC) are declared once, in :func:`add_shared_options`.
"""

from __future__ import annotations

import argparse

from ..kernel import STRATEGY_NAMES as STRATEGIES
from ..models import MODEL_NAMES

DEFAULT_WORKLOAD = "GMM:1"
DEFAULT_TRIALS = 64
DEFAULT_TRIALS_PER_ITER = 16
DEFAULT_MODEL_TRIALS = 256
DEFAULT_LATENCY_ROUNDS = 7


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


def _add_count(group, flag: str, minimum: int, **kwargs) -> None:
    """Add an integer option ``flag`` that must be >= ``minimum`` (see :func:`_int_at_least`)."""
    group.add_argument(flag, type=_int_at_least(flag, minimum), **kwargs)


def _model_name(text: str) -> str:
    """An argparse type: a model of the zoo, with a message listing the valid names."""
    if text not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; use one of {', '.join(MODEL_NAMES)} (e.g. --model resnet18)"
        )
    return text


def add_shared_options(
    parser: argparse.ArgumentParser, *, trials: int, trials_help: str, work_dir_help: str
) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    """Add the options of both `tune` and `tune-model`; return the "tuning" and "output" groups,
    to which the caller adds its own options.

    Only the default and meaning of ``--trials`` and the notes on ``--work-dir`` differ.
    """
    parser.add_argument(
        "--target",
        default=None,
        help='target as JSON, e.g. \'{"kind": "llvm", "mcpu": "znver5", "num-cores": 2}\'; '
        "default: this machine's CPU (its mcpu and physical cores)",
    )
    tuning = parser.add_argument_group("tuning")
    _add_count(
        tuning,
        "--trials",
        1,
        default=trials,
        help=f"{trials_help} (default {trials})",
    )
    _add_count(
        tuning,
        "--num-trials-per-iter",
        1,
        default=DEFAULT_TRIALS_PER_ITER,
        help=f"candidates per measured batch (default {DEFAULT_TRIALS_PER_ITER})",
    )
    tuning.add_argument(
        "--strategy",
        default="droplet",
        choices=STRATEGIES,
        help="search strategy (default droplet; the others are MetaSchedule's, for comparison)",
    )
    tuning.add_argument(
        "--builder",
        default="fast",
        choices=("fast", "local"),
        help="fast: ms_droplet.FastBuilder, warm workers (default); local: MetaSchedule's "
        "LocalBuilder, new workers every batch",
    )
    tuning.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    output = parser.add_argument_group("work directory and output")
    output.add_argument(
        "--work-dir",
        default="ms_droplet_work",
        help="where MetaSchedule's database and logs go (default ./ms_droplet_work)"
        + work_dir_help,
    )
    output.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the result as JSON to FILE ('-': stdout, the table then goes to "
        "stderr); see the README for its fields",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("-v", "--verbose", action="store_true", help="show MetaSchedule's logs")
    _add_rpc_arguments(parser)
    return tuning, output


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
    _add_count(
        group,
        "--rpc-parallel",
        1,
        default=None,
        metavar="N",
        help="parallel sessions (default: one per server of the key connected now)",
    )


def _add_tune_parser(sub) -> None:
    tune = sub.add_parser("tune", help="tune one kernel (a te_workload or a TVMScript file)")
    source = tune.add_mutually_exclusive_group()
    source.add_argument(
        "--workload",
        default=None,
        help=f"NAME:INDEX from tvm.s_tir.meta_schedule.testing.te_workload (default "
        f"{DEFAULT_WORKLOAD}), e.g. GMM:0, C2D:3, DEP:0, NRM:0, SFM:0, CBR:0",
    )
    source.add_argument("--tir", default=None, help="a TVMScript file with the function to tune")
    tuning, output = add_shared_options(
        tune,
        trials=DEFAULT_TRIALS,
        trials_help="total measurement budget",
        work_dir_help=". Rerunning with the same directory resumes: its records count toward "
        "exploration, the descent starts from its best record, and nothing in it is measured "
        "again; --trials is the budget of this run. One process at a time (a lock refuses a "
        "second one); Ctrl-C stops after the batch in flight, keeping every record",
    )
    _add_count(
        tuning,
        "--exploration-trials",
        0,
        default=None,
        help="droplet only: trials of evolutionary exploration (default: half of --trials, "
        "between 16 and 300, in whole batches)",
    )
    output.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw the best latency so far against trials and against wall-clock seconds, "
        'exploration and descent apart (needs matplotlib: pip install "ms-droplet[plot]")',
    )


def _add_tune_model_parser(sub) -> None:
    model = sub.add_parser(
        "tune-model",
        help="tune a whole model (the zoo, an ONNX file, a Relax TVMScript file), compile it "
        "and compare it with the untuned build",
        description="Tune every task of a model under one budget, compile it with the database, "
        "check its output against the untuned build (and an ONNX model's against ONNX "
        "Runtime), time both builds side by side, and optionally export the tuned library.",
    )
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        type=_model_name,
        metavar="{" + ",".join(MODEL_NAMES) + "}",
        help="a model of the zoo: resnet18 (224x224 images), transformer (one encoder block, "
        "sequence 128, d_model 512), mlp (784-512-256-10)",
    )
    source.add_argument(
        "--onnx",
        metavar="FILE.onnx",
        help='an ONNX model (needs pip install "ms-droplet[onnx]"); fix dynamic input '
        "dimensions with --input-shape",
    )
    source.add_argument(
        "--relax",
        metavar="FILE.py",
        help="a Python file defining one Relax IRModule in TVMScript (@I.ir_module), entry "
        "main, static shapes",
    )
    model.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="--onnx: the shape of input NAME, e.g. input=1,3,224,224 (needed for a dynamic "
        "dimension such as a symbolic batch); repeat for several inputs",
    )
    _add_count(
        model,
        "--batch-size",
        1,
        default=None,
        help="--model: batch size of the model input (default 1)",
    )
    tuning, _ = add_shared_options(
        model,
        trials=DEFAULT_MODEL_TRIALS,
        trials_help="global measurement budget, all tasks together",
        work_dir_help="",
    )
    _add_count(
        tuning,
        "--max-trials-per-task",
        1,
        default=None,
        help="cap of one task (default: no cap below --trials)",
    )
    model.add_argument(
        "--export",
        default=None,
        metavar="FILE.so",
        help="write the tuned, compiled model as a shared library (load it with "
        "tvm.runtime.load_module and run it with tvm.relax.VirtualMachine); written only when "
        "its outputs match",
    )
    _add_count(
        model,
        "--latency-rounds",
        1,
        default=DEFAULT_LATENCY_ROUNDS,
        help="interleaved timing rounds of the untuned and tuned builds; the medians are "
        f"compared (default {DEFAULT_LATENCY_ROUNDS})",
    )


def _add_repair_parser(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ms-droplet``."""
    parser = argparse.ArgumentParser(
        prog="ms-droplet",
        description="Tune TVM kernels with MetaSchedule and Droplet Search. "
        "Without a command, runs `tune` on a default kernel.",
    )
    sub = parser.add_subparsers(dest="command")
    _add_tune_parser(sub)
    _add_tune_model_parser(sub)
    _add_repair_parser(sub)
    return parser
