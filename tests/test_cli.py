"""The ms-droplet command line: errors name the option; a real tiny run prints the table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ms_droplet.cli import build_parser, load_workload, main
from ms_droplet.target import parse_target


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trials", "0"], "--trials must be an integer >= 1, got '0'; give a whole number"),
        (["--trials", "-5"], "--trials must be an integer >= 1, got '-5'"),
        (["--trials", "x"], "--trials must be an integer >= 1, got 'x'"),
        (["--exploration-trials", "-3"], "--exploration-trials must be an integer >= 0, got '-3'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--strategy", "annealing"], "invalid choice: 'annealing'"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    assert message in _error_of(argv, capsys)


def test_exploration_larger_than_budget(capsys):
    err = _error_of(["--trials", "8", "--exploration-trials", "9"], capsys)
    assert "--exploration-trials (9) must not exceed --trials (8)" in err


def test_unknown_workload_and_shape_index():
    with pytest.raises(ValueError, match=r"unknown workload 'XYZ' in 'XYZ:0'.*GMM"):
        load_workload("XYZ:0", None)
    with pytest.raises(ValueError, match=r"needs a shape index 0\.\.3"):
        load_workload("GMM:9", None)
    with pytest.raises(ValueError, match="no such file"):
        load_workload(None, "/nonexistent/kernel.py")


def test_malformed_target_json():
    with pytest.raises(ValueError, match=r"--target must be a JSON object such as"):
        parse_target("{kind: llvm")
    with pytest.raises(ValueError, match=r'with a "kind" key'):
        parse_target("[1, 2]")


def test_default_target_is_the_host_cpu():
    from ms_droplet.target import host_cpu

    target = parse_target(None)
    assert str(target.attrs["mcpu"]) == host_cpu()
    assert target.kind.name == "llvm"


def test_no_arguments_means_tune_with_defaults():
    args = build_parser().parse_args(["tune"])
    assert args.strategy == "droplet" and args.workload is None and args.trials == 64


def test_tvmscript_file_is_loaded(tmp_path):
    script = tmp_path / "add.py"
    script.write_text(
        "from tvm.script import tirx as T\n\n"
        "@T.prim_func(s_tir=True)\n"
        "def main(A: T.Buffer((64,), 'float32'), B: T.Buffer((64,), 'float32')):\n"
        "    for i in range(64):\n"
        "        with T.sblock('B'):\n"
        "            v_i = T.axis.spatial(64, i)\n"
        "            B[v_i] = A[v_i] + T.float32(1.0)\n"
    )
    mod, label = load_workload(None, str(script))
    assert label == "add.py" and mod is not None
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"must define exactly one @T.prim_func.*found none"):
        load_workload(None, str(empty))


@pytest.mark.tuning
def test_cli_real_run_prints_table(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ms_droplet",
            "tune",
            "--workload",
            "GMM:0",
            "--trials",
            "8",
            "--exploration-trials",
            "4",
            "--num-trials-per-iter",
            "4",
            "--no-progress",
            "--work-dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best latency" in out.stdout and " us" in out.stdout
    assert "exploration 4, descent" in out.stdout
    assert str(tmp_path / "w" / "database_tuning_record.json") in out.stdout
