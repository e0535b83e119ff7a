"""Real tuning runs of a tiny kernel with strategy="droplet" (each takes about a minute)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet import DropletSearch, FastBuilder

pytestmark = pytest.mark.tuning


def _records(work_dir):
    with open(os.path.join(work_dir, "database_tuning_record.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_tune_tir_droplet_records_both_phases_and_compiles(tmp_path, host_target):
    mod = create_te_workload("GMM", 0)
    strategy = DropletSearch(exploration_trials=4)
    work_dir = str(tmp_path / "work")
    with FastBuilder() as builder:
        database = ms.tune_tir(
            mod,
            host_target,
            work_dir,
            max_trials_global=12,
            num_trials_per_iter=4,
            strategy=strategy,
            builder=builder,
            runner=ms.runner.LocalRunner(
                evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=2, min_repeat_ms=10)
            ),
            seed=3,
        )
    (report,) = strategy.reports
    assert report.exploration == 4
    assert report.descent >= 1
    records = _records(work_dir)
    assert len(records) == report.exploration + report.descent
    logs = "".join(
        open(os.path.join(work_dir, "logs", name), encoding="utf-8").read()
        for name in os.listdir(os.path.join(work_dir, "logs"))
    )
    assert "droplet: exploration done after 4 trials" in logs
    assert "droplet: summary" in logs

    sch = ms.tir_integration.compile_tir(database, mod, host_target)
    assert sch is not None
    lib = tvm.compile(sch.mod, target=host_target)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 128, 128), dtype="float32")
    y = rng.standard_normal((1, 128, 128), dtype="float32")
    dev = tvm.cpu()
    z = tvm.runtime.tensor(np.zeros((1, 128, 128), dtype="float32"), dev)
    lib(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev), z)
    np.testing.assert_allclose(z.numpy(), x @ y, rtol=1e-4, atol=1e-4)


def test_name_registered_by_import_tvm_alone():
    code = (
        "import sys, tvm\n"
        "from tvm.s_tir.meta_schedule.search_strategy import SearchStrategy\n"
        "assert 'ms_droplet.strategy' not in sys.modules, 'registration imported the strategy'\n"
        "s = SearchStrategy.create('droplet', exploration_trials=2)\n"
        "print(type(s).__name__, s.exploration_trials)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DropletSearch", "2"]
    env = dict(os.environ, TVM_DEVICE_BACKEND_AUTOLOAD="0")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert off.returncode != 0 and "Unknown SearchStrategy: droplet" in off.stderr


def test_tune_relax_accepts_droplet_by_name(tmp_path, host_target):
    from tvm import relax
    from tvm.relax.frontend import nn

    class Tiny(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(32, 16)

        def forward(self, x):
            return nn.op.relu(self.fc(x))

    mod, _ = Tiny().export_tvm(spec={"forward": {"x": nn.spec.Tensor((2, 32), "float32")}})
    mod = relax.transform.LegalizeOps()(mod)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseOps()(mod)
    mod = relax.transform.FuseTIR()(mod)
    work_dir = str(tmp_path / "relax")
    with FastBuilder() as builder:
        ms.relax_integration.tune_relax(
            mod,
            {},
            host_target,
            work_dir,
            max_trials_global=4,
            num_trials_per_iter=2,
            strategy="droplet",
            builder=builder,
        )
    logs = "".join(
        open(os.path.join(work_dir, "logs", name), encoding="utf-8").read()
        for name in os.listdir(os.path.join(work_dir, "logs"))
    )
    assert "droplet: budget" in logs and "droplet: summary" in logs
    assert _records(work_dir)
