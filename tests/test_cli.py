"""The ms-droplet command line: errors name the option; real tiny runs write their JSON."""

from __future__ import annotations

import json
import logging
import re
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


def test_tune_and_tune_model_share_their_options():
    parser = build_parser()
    tune = vars(parser.parse_args(["tune"]))
    model = vars(parser.parse_args(["tune-model", "--model", "mlp"]))
    shared = {"target", "trials", "num_trials_per_iter", "strategy", "builder", "seed"}
    shared |= {"work_dir", "json", "no_progress", "verbose", "rpc_tracker", "rpc_key"}
    shared |= {"rpc_session_timeout", "rpc_parallel"}
    assert shared <= tune.keys() and shared <= model.keys()
    assert {k: tune[k] for k in shared - {"trials"}} == {k: model[k] for k in shared - {"trials"}}
    assert (tune["trials"], model["trials"]) == (64, 256)
    assert "plot" in tune and "plot" not in model


def test_plot_without_matplotlib_is_refused_before_tuning(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes `import matplotlib...` raise ImportError, as if not installed.
    for name in ("matplotlib", "matplotlib.backend_bases", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    work_dir = tmp_path / "w"
    err = _error_of(["--plot", str(tmp_path / "c.png"), "--work-dir", str(work_dir)], capsys)
    assert "--plot" in err and "needs matplotlib, which is not installed" in err
    assert 'pip install "ms-droplet[plot]"' in err
    assert not work_dir.exists()  # refused before the work_dir was touched


def test_plot_and_json_paths_are_checked_before_tuning(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    work_dir = ["--work-dir", str(tmp_path / "w")]
    err = _error_of(["--plot", str(tmp_path / "curve.txt"), *work_dir], capsys)
    assert "--plot must name an image file ending in .png" in err and "curve.txt" in err
    err = _error_of(["--plot", str(tmp_path / "no" / "c.png"), *work_dir], capsys)
    assert "--plot" in err and "no such directory" in err
    err = _error_of(["--json", str(tmp_path / "no" / "r.json"), *work_dir], capsys)
    assert "--json" in err and "no such directory" in err and "--json - for stdout" in err
    err = _error_of(
        ["tune-model", "--model", "mlp", "--json", "/no/such/dir/r.json", *work_dir], capsys
    )
    assert "--json" in err and "no such directory" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.tuning
def test_cli_real_run_writes_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    work_dir = tmp_path / "w"
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
            str(work_dir),
            "--json",
            "-",
            "--plot",
            str(tmp_path / "curve.png"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # --json -: stdout holds the JSON alone
    assert "best latency" in out.stderr and " us" in out.stderr  # the table moved to stderr
    assert result["schema_version"] == 2 and result["command"] == "tune"
    assert result["workload"] == "GMM:0" and result["strategy"] == "droplet"
    assert "llvm" in result["target"]
    assert result["best_secs"] > 0 and result["gflops"] > 0
    assert result["trials"] == 8
    assert result["trials_per_phase"]["exploration"] == 4
    assert sum(result["trials_per_phase"].values()) == 8
    (report,) = result["reports"]
    assert report["exploration"] == 4 and report["stop_reason"]
    assert result["database"] == str(work_dir / "database_tuning_record.json")
    curve = result["curve"]
    assert [p["trial"] for p in curve] == list(range(1, 9))
    assert [p["phase"] for p in curve] == ["exploration"] * 4 + ["descent"] * 4
    valid = [p["secs"] for p in curve if p["secs"] is not None]
    assert min(valid) == pytest.approx(curve[-1]["best_secs"])
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.tuning
def test_cli_tune_model_writes_json(tmp_path, capsys):
    # 2 trials, 1 a batch, over the 6 tasks of the zoo MLP: tasks 0 and 1 get one trial each.
    path = tmp_path / "model.json"
    argv = ["tune-model", "--model", "mlp", "--trials", "2", "--num-trials-per-iter", "1"]
    argv += ["--latency-rounds", "3", "--no-progress", "--work-dir", str(tmp_path / "w")]
    meta_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = meta_logger.level
    try:
        assert main([*argv, "--json", str(path)]) == 0
    finally:
        meta_logger.setLevel(level)  # main() quiets MetaSchedule's logger; leave it as it was
    assert "output vs untuned | match" in capsys.readouterr().out  # the table is still printed
    result = json.loads(path.read_text())
    assert result["schema_version"] == 2 and result["command"] == "tune-model"
    assert result["model"] == "mlp" and result["batch_size"] == 1
    assert result["trials"] == 2 and result["max_trials"] == 2
    assert result["output_match"] is True and result["latency_rounds"] == 3
    assert result["best_secs"] > 0 and result["untuned_secs"] > 0 and result["speedup"] > 0
    assert len(result["tasks"]) == 6 and sum(t["trials"] for t in result["tasks"]) == 2
    assert len(result["no_valid_trial"]) == 4
    assert {"name", "weight", "valid", "best_secs", "applied"} <= result["tasks"][0].keys()
    assert result["database"] == str(tmp_path / "w" / "database_tuning_record.json")


@pytest.mark.tuning
def test_cli_run_whose_every_build_fails_warns_and_exits_3(tmp_path, capsys, caplog, monkeypatch):
    # The run, for real and fast: every build times out (a 1 ms limit instead of a slow
    # machine's 30 s). The run ends normally with no valid record; the CLI must say why.
    from ms_droplet import builder as builder_module
    from ms_droplet.failures import EXIT_ALL_FAILED

    real = builder_module.FastBuilder
    monkeypatch.setattr(
        builder_module, "FastBuilder", lambda: real(max_workers=1, timeout_sec=0.001)
    )
    path = tmp_path / "r.json"
    argv = ["tune", "--workload", "GMM:0", "--trials", "4", "--num-trials-per-iter", "4"]
    argv += ["--no-progress", "--work-dir", str(tmp_path / "w"), "--json", str(path)]
    meta_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = meta_logger.level
    try:
        assert main(argv) == EXIT_ALL_FAILED == 3
    finally:
        meta_logger.setLevel(level)  # main() quiets MetaSchedule's logger; leave it as it was
    captured = capsys.readouterr()
    assert re.search(r"\nfailed +\| 4 of 4: builder timeout 4\n", captured.out)  # the table
    # The warning goes to the root logger's handler: stderr, or pytest's capture of it.
    warning = captured.err + caplog.text
    assert "every one of the 4 candidates of this run failed (builder timeout 4)" in warning
    assert "main cause is builder timeout" in warning and "FastBuilder(timeout_sec=" in warning
    result = json.loads(path.read_text())
    assert result["failures"] == {"builder timeout": 4} and result["trials"] == 4
    assert [p["failure"] for p in result["curve"]] == ["builder timeout"] * 4
    assert result["best_secs"] is None
