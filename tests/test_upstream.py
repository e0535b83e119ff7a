"""scripts/make_upstream_patch.py: the patch proposing "droplet" to apache/tvm."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_upstream_patch.py"


def _load():
    spec = importlib.util.spec_from_file_location("make_upstream_patch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _load()


@pytest.fixture(scope="module")
def patch_text(gen):
    return gen.make_patch()


def test_patch_has_the_expected_paths(gen, patch_text):
    ss = "python/tvm/s_tir/meta_schedule/search_strategy"
    new = set(re.findall(r"^diff --git a/\S+ b/(\S+)\nnew file", patch_text, re.M))
    edited = set(re.findall(r"^--- a/(\S+)", patch_text, re.M))
    assert new == {
        f"{ss}/droplet.py",
        f"{ss}/_droplet_acceptance.py",
        f"{ss}/_droplet_descent.py",
        f"{ss}/_droplet_driver.py",
        f"{ss}/_droplet_neighbors.py",
        f"{ss}/_droplet_options.py",
        f"{ss}/_droplet_samples.py",
        f"{ss}/_droplet_state.py",
        f"{ss}/_droplet_trace.py",
        "tests/python/s_tir/meta_schedule/test_meta_schedule_droplet_search.py",
    }
    assert edited == {f"{ss}/__init__.py", f"{ss}/search_strategy.py"}
    assert "ms_droplet" not in patch_text
    assert '+            "droplet",' in patch_text
    assert '+        if kind == "droplet":' in patch_text
    assert "+from .droplet import DropletReport, DropletSearch" in patch_text


def test_generated_modules_follow_the_package(gen):
    """Generation, not copies: the algorithm's code is this package's, only imports differ."""
    modules = gen.generated_modules()
    ss = "python/tvm/s_tir/meta_schedule/search_strategy"
    ours = (ROOT / "ms_droplet" / "_neighbors.py").read_text()
    assert modules[f"{ss}/_droplet_neighbors.py"] == ours
    droplet = modules[f"{ss}/droplet.py"]
    assert "from .search_strategy import MeasureCandidate, PySearchStrategy" in droplet
    for gone in ("acquire_work_dir", "release_work_dir", "stop_requested", "import os\n"):
        assert gone not in droplet
    # The lock and stop requests live in ms_droplet/_hooks.py, which is not copied: the
    # upstream strategy uses the no-op default hooks.
    assert "_hooks" not in droplet and "HOOKS = RunHooks()\n" in droplet
    assert not any("hooks" in name for name in modules)
    for name, src in modules.items():
        compile(src, name, "exec")


def _applied(gen, tmp_path, text, name):
    """A copy of the installed wheel's tree with the patch ``text`` (saved as ``name``) applied."""
    tree = gen.build_tree(gen._installed_tvm(), tmp_path / "tvm")
    patch = tmp_path / name
    patch.write_text(text)
    gen.apply_patch(patch, tree)
    return tree


def _fix_patch_touches_only(text, files):
    """A fix patch changes exactly ``files`` and says nothing of this package."""
    assert set(re.findall(r"^\+\+\+ b/(\S+)", text, re.M)) == files
    assert "ms_droplet" not in text


def test_patch_applies_to_the_installed_wheel(gen, patch_text, tmp_path):
    tree = _applied(gen, tmp_path, patch_text, "droplet.patch")
    ss = tree / "python/tvm/s_tir/meta_schedule/search_strategy"
    assert (ss / "droplet.py").is_file()
    assert 'if kind == "droplet":' in (ss / "search_strategy.py").read_text()
    # The installed package itself is untouched (its .py files were copied, not linked).
    installed = gen._installed_tvm() / "s_tir/meta_schedule/search_strategy"
    assert not (installed / "droplet.py").exists()


def test_writes_the_patch_file(tmp_path):
    out = tmp_path / "droplet.patch"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True)
    assert out.read_text().startswith("diff --git a/python/tvm/")
    assert (
        (tmp_path / "meta-schedule-logging-handlers.patch")
        .read_text()
        .startswith("diff --git a/python/tvm/s_tir/meta_schedule/logging.py")
    )
    assert (
        (tmp_path / "local-builder-lazy-tensor-intrin.patch")
        .read_text()
        .startswith("diff --git a/python/tvm/s_tir/meta_schedule/builder/local_builder.py")
    )


def test_logging_patch_applies_and_fixes_create_loggers(gen, tmp_path):
    """Its own patch: logging.py keeps foreign handlers; a new TVM test; nothing else."""
    text = gen.make_logging_patch()
    _fix_patch_touches_only(
        text,
        {
            "python/tvm/s_tir/meta_schedule/logging.py",
            "tests/python/s_tir/meta_schedule/test_meta_schedule_logging.py",
        },
    )
    tree = _applied(gen, tmp_path, text, "logging.patch")
    fixed = (tree / "python/tvm/s_tir/meta_schedule/logging.py").read_text()
    assert "handler.get_name() for handler in global_logger.handlers" not in fixed
    assert "global_logger.addHandler(handler)" in fixed


def test_builder_patch_imports_tensor_intrin_only_when_needed(gen, tmp_path):
    """Its own patch: default_build imports the tensor intrinsics on demand; a new TVM test."""
    text = gen.make_builder_patch()
    _fix_patch_touches_only(
        text,
        {
            "python/tvm/s_tir/meta_schedule/builder/local_builder.py",
            "tests/python/s_tir/meta_schedule/test_meta_schedule_builder_tensor_intrin.py",
        },
    )
    # The unconditional import is gone; the lazy one names the compiler's two consumers.
    assert "-    import tvm.s_tir.tensor_intrin  # pylint: disable=unused-import" in text
    assert '+_TENSOR_INTRIN_CONSUMERS = ("tirx.mma_store", "m16n8k8.matrix")' in text
    tree = _applied(gen, tmp_path, text, "builder.patch")
    fixed = (tree / "python/tvm/s_tir/meta_schedule/builder/local_builder.py").read_text()
    compile(fixed, "local_builder.py", "exec")
    start = fixed.index('@register_global_func("s_tir.meta_schedule.builder.default_build")')
    body = fixed[start : fixed.index("def default_export(", start)]
    assert "_needs_tensor_intrin(mod, target)" in body
    assert "import tvm.s_tir.tensor_intrin" not in body  # only in _import_tensor_intrin
    # The installed package itself is untouched.
    installed = gen._installed_tvm() / "s_tir/meta_schedule/builder/local_builder.py"
    assert "_needs_tensor_intrin" not in installed.read_text()


def test_a_changed_source_fails_loudly(gen):
    with pytest.raises(gen.GenerationError):
        gen._replace("nothing here", "from .interrupt import", "", "demo")


@pytest.mark.slow
def test_check_applies_tests_and_lints(tmp_path):
    """The full check: patched tvm imports, the added TVM-style test passes, TVM's ruff is clean."""
    out = tmp_path / "droplet.patch"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--check"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("ms_droplet not imported") == 3
    assert "clean on 12 files" in result.stdout  # droplet.patch
    # meta-schedule-logging-handlers.patch and local-builder-lazy-tensor-intrin.patch
    assert result.stdout.count("clean on 2 files") == 2
