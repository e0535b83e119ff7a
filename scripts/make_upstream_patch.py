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
"""Write (and check) a patch against apache/tvm that adds ``"droplet"`` natively.

The patch is generated from this package's modules, so the two never drift:

* ``ms_droplet``'s private modules (``_neighbors.py``, ``_samples.py``, ``_acceptance.py``,
  ``_descent.py``, ``_options.py``, ``_state.py``, ``_trace.py``, ``_driver.py``; see
  ``MODULES``) become private modules of TVM's ``search_strategy`` package
  (``_droplet_neighbors.py``, ...), ``ms_droplet/strategy.py`` becomes ``droplet.py``. Separate
  modules keep the pure core testable without TVM objects, exactly as here, and keep each file
  small.
* Imports are rewritten mechanically; every rewrite must match exactly as often as expected,
  otherwise generation fails (a change here that the generator does not know is an error, not
  a silently wrong patch).
* Two ms_droplet-only concerns are left out: the work_dir lock (``workdir.py``: an ``fcntl``
  flock, POSIX-only while TVM supports Windows; and a JSONDatabase writer lock belongs in the
  database, not in one search strategy) and the stop request of ``interrupt.py`` (only the
  ``ms-droplet`` CLI's signal handlers set it; upstream nothing would). Both reach the strategy
  only through its hook module ``_hooks.py``, which is not copied: the one textual replace
  (``HOOKS_IMPORT``) makes ``droplet.py`` use the no-op ``RunHooks`` of ``_droplet_state.py``.
* ``search_strategy/__init__.py`` (export) and ``search_strategy.py`` (``SearchStrategy.create``
  and its ``Literal[...]`` names) are edited with difflib against the installed TVM wheel's
  copies, which match ``python/tvm/...`` of the repository.
* The test ``scripts/upstream/test_meta_schedule_droplet_search.py`` goes to
  ``tests/python/s_tir/meta_schedule/``.

A second, independent patch fixes a TVM bug that ms_droplet mends at run time
(``ms_droplet/tvm_fixes.py``): ``meta-schedule-logging-handlers.patch`` makes
``create_loggers`` keep handlers it did not create instead of crashing on them, with its test
``tests/python/s_tir/meta_schedule/test_meta_schedule_logging.py``.

A third, independent patch, ``local-builder-lazy-tensor-intrin.patch``, makes ``LocalBuilder``'s
default build import ``tvm.s_tir.tensor_intrin`` only for builds that need it (CUDA tensor-core
ones, or a build that failed on a missing registration), as ``ms_droplet.FastBuilder`` does; its
test is ``tests/python/s_tir/meta_schedule/test_meta_schedule_builder_tensor_intrin.py``.

Usage::

    python scripts/make_upstream_patch.py                 # writes build/upstream/*.patch
    python scripts/make_upstream_patch.py --out x.patch
    python scripts/make_upstream_patch.py --check         # generate, apply, test, lint

``--check`` lays the patched files over a copy of the installed ``tvm`` package (Python files
copied, everything else symlinked), runs the added test with that ``tvm`` first on
``PYTHONPATH`` (``TVM_DEVICE_BACKEND_AUTOLOAD=0``, TVM's built-in backends loaded by a
``sitecustomize`` in every process, and the run fails if ``ms_droplet`` was imported), and
lints the new and edited files with ruff under TVM's settings (TVM's ``pyproject.toml``
``[tool.ruff]``: E, F, I, UP, RUF; line length 100; py310).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ms_droplet"
TEMPLATES = Path(__file__).resolve().parent / "upstream"
DEFAULT_OUT = ROOT / "build" / "upstream" / "droplet.patch"  # build/ is git-ignored

SS_DIR = "python/tvm/s_tir/meta_schedule/search_strategy"
TEST_DIR = "tests/python/s_tir/meta_schedule"
TEST_NAME = "test_meta_schedule_droplet_search.py"
SS_MODULE = "tvm.s_tir.meta_schedule.search_strategy"
LOGGING_FILE = "python/tvm/s_tir/meta_schedule/logging.py"
LOGGING_TEST_NAME = "test_meta_schedule_logging.py"
LOGGING_PATCH = "meta-schedule-logging-handlers.patch"
BUILDER_FILE = "python/tvm/s_tir/meta_schedule/builder/local_builder.py"
BUILDER_TEST_NAME = "test_meta_schedule_builder_tensor_intrin.py"
BUILDER_PATCH = "local-builder-lazy-tensor-intrin.patch"

# ms_droplet module -> file in TVM's search_strategy package
MODULES = {
    "_neighbors": "_droplet_neighbors.py",
    "_samples": "_droplet_samples.py",
    "_acceptance": "_droplet_acceptance.py",
    "_descent": "_droplet_descent.py",
    "_options": "_droplet_options.py",
    "_state": "_droplet_state.py",
    "_trace": "_droplet_trace.py",
    "_driver": "_droplet_driver.py",
    "strategy": "droplet.py",
}

# strategy.py takes its hooks (work_dir lock, stop requests) from ms_droplet/_hooks.py, which
# stays out of the patch; upstream the strategy uses the no-op default instead.
HOOKS_IMPORT = (
    "try:  # ms_droplet's work_dir lock and stop requests; the no-op default where it is absent\n"
    "    from ._hooks import HOOKS\n"
    "except ImportError:\n"
    "    HOOKS = RunHooks()\n",
    "HOOKS = RunHooks()\n",
)

# TVM's Python lint: ruff with the [tool.ruff] settings of apache/tvm's pyproject.toml
# (pre-commit pins ruff v0.12.3; the checks run with the ruff installed here).
TVM_RUFF_CHECK = [
    "--isolated",
    "--line-length=100",
    "--target-version=py310",
    "--select=E,F,I,UP,RUF",
    # TVM's ignore list, plus RUF036 (`None` not last in a union): preview only in ruff v0.12.3,
    # reported by newer ruff on TVM's own signatures in builder/local_builder.py.
    "--ignore=UP028,UP030,UP031,RUF043,RUF059,RUF036",
    "--config=lint.isort.known-first-party=['tvm']",
    "--config=lint.per-file-ignores={'__init__.py'=['E402','F401','F403','F405']}",
]
TVM_RUFF_FORMAT = ["--isolated", "--line-length=100", "--target-version=py310"]


class GenerationError(RuntimeError):
    """A source no longer looks like what the generator knows how to rewrite."""


def _installed_tvm() -> Path:
    spec = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('tvm').origin)"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TVM_DEVICE_BACKEND_AUTOLOAD": "0"},
    )
    return Path(spec.stdout.strip()).parent


def _replace(src: str, old: str, new: str, what: str, count: int = 1) -> str:
    found = src.count(old)
    if found != count:
        raise GenerationError(f"{what}: expected {count} occurrence(s) of {old!r}, found {found}")
    return src.replace(old, new)


def _sub(src: str, pattern: str, new: str, what: str, count: int | None = 1) -> str:
    out, found = re.subn(pattern, new, src, flags=re.MULTILINE)
    if (count is None and found == 0) or (count is not None and found != count):
        raise GenerationError(f"{what}: pattern {pattern!r} matched {found} time(s)")
    return out


def _common(src: str, what: str) -> str:
    """Rewrites shared by every module: package-internal names and lint comments."""
    for ours, theirs in MODULES.items():
        stem = theirs[:-3]
        src = re.sub(rf"from \.{ours} import", f"from .{stem} import", src)
        src = src.replace(f"ms_droplet.{ours}", f".{stem}")
    src = src.replace("ms_droplet.DropletSearch", ".droplet.DropletSearch")
    # TVM's isort knows `tvm` as first-party: a blank line between it and third-party imports.
    src = re.sub(
        r"^((?:import|from) (?!tvm\b)[a-z]\S*.*\n)((?:import|from) tvm\b)",
        r"\1\n\2",
        src,
        flags=re.M,
    )
    # TVM's ruff does not select flake8-blind-except: a `noqa: BLE001` would be RUF100.
    src = src.replace("# noqa: BLE001 - ", "# ")
    if "ms_droplet" in src:
        at = src.index("ms_droplet")
        raise GenerationError(
            f"{what}: 'ms_droplet' left after rewriting: {src[at - 60 : at + 40]!r}"
        )
    return src


def _descent(src: str) -> str:
    # RUF005 (TVM selects RUF): unpacking instead of tuple concatenation, same tuples.
    src = _sub(
        src,
        r"\b(\w+)\[:(\w+)\] \+ \(([\w\[\]]+),\) \+ \1\[\2 \+ 1 :\]",
        r"(*\1[:\2], \3, *\1[\2 + 1 :])",
        "_descent.py",
        count=2,
    )
    return _common(src, "_descent.py")


def _strategy(src: str) -> str:
    what = "strategy.py"
    src = _replace(
        src,
        "from tvm.s_tir.meta_schedule.search_strategy import (\n"
        "    EvolutionarySearch,\n"
        "    MeasureCandidate,\n"
        "    PySearchStrategy,\n"
        ")\n",
        "",
        what,
    )
    # Relative imports inside TVM's package, after the ms_droplet-internal ones (isort order).
    src = _replace(
        src,
        "from ._trace import replay\n",
        "from ._trace import replay\n"
        "from .evolutionary_search import EvolutionarySearch\n"
        "from .search_strategy import MeasureCandidate, PySearchStrategy\n",
        what,
    )
    src = _replace(src, *HOOKS_IMPORT, what)
    return _common(src, what)


def _driver(src: str) -> str:
    what = "_driver.py"
    src = _replace(
        src,
        "from tvm.s_tir.meta_schedule.arg_info import ArgInfo\n"
        "from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate\n",
        "",
        what,
    )
    src = _replace(
        src, "from ._descent import", "from ..arg_info import ArgInfo\nfrom ._descent import", what
    )
    src = _replace(
        src,
        "from ._trace import TraceSpace\n",
        "from ._trace import TraceSpace\nfrom .search_strategy import MeasureCandidate\n",
        what,
    )
    return _common(src, what)


def generated_modules() -> dict[str, str]:
    """TVM repository path -> content of every new module, generated from ms_droplet."""
    out = {}
    for ours, theirs in MODULES.items():
        src = (PKG / f"{ours}.py").read_text()
        rewrite = {"strategy": _strategy, "_descent": _descent, "_driver": _driver}.get(ours)
        src = rewrite(src) if rewrite else _common(src, f"{ours}.py")
        ast.parse(src)
        out[f"{SS_DIR}/{theirs}"] = src
    out[f"{TEST_DIR}/{TEST_NAME}"] = _common((TEMPLATES / TEST_NAME).read_text(), TEST_NAME)
    return out


def edited_files(tvm_dir: Path) -> dict[str, tuple[str, str]]:
    """TVM repository path -> (original, edited) for the files that register ``"droplet"``."""
    ss = tvm_dir / "s_tir" / "meta_schedule" / "search_strategy"
    init = (ss / "__init__.py").read_text()
    new_init = _replace(
        init,
        "from .evolutionary_search import EvolutionarySearch\n",
        "from .droplet import DropletReport, DropletSearch\n"
        "from .evolutionary_search import EvolutionarySearch\n",
        "search_strategy/__init__.py",
    )
    base = (ss / "search_strategy.py").read_text()
    what = "search_strategy/search_strategy.py"
    # Both Literal[...] lists of names (the type alias and create's parameter) get "droplet".
    edited = _sub(
        base,
        r'^( +)((?:kind: )?)Literal\[\n((?:\1    "[a-z-]+",\n)+)\1\]',
        r'\1\2Literal[\n\3\1    "droplet",\n\1]',
        what,
        count=2,
    )
    edited = _replace(
        edited,
        "        from . import (  # pylint: disable=import-outside-toplevel\n"
        "            EvolutionarySearch,\n",
        "        from . import (  # pylint: disable=import-outside-toplevel\n"
        "            DropletSearch,\n"
        "            EvolutionarySearch,\n",
        what,
    )
    edited = _sub(
        edited,
        r'^(        raise ValueError\(f"Unknown SearchStrategy: \{kind\}"\)\n)',
        '        if kind == "droplet":\n'
        "            return DropletSearch(*args, **kwargs)\n"
        r"\1",
        what,
    )
    return {
        f"{SS_DIR}/__init__.py": (init, new_init),
        f"{SS_DIR}/search_strategy.py": (base, edited),
    }


def _diff(path: str, old: str | None, new: str) -> str:
    if old is None:
        lines = difflib.unified_diff(
            [], new.splitlines(keepends=True), "/dev/null", f"b/{path}", n=3
        )
        head = f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
    else:
        lines = difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
        )
        head = f"diff --git a/{path} b/{path}\n"
    body = "".join(lines)
    if not body.endswith("\n"):
        raise GenerationError(f"{path}: files must end with a newline")
    return head + body


def make_patch(tvm_dir: Path | None = None) -> str:
    """The whole patch, as text."""
    tvm_dir = tvm_dir or _installed_tvm()
    parts = [_diff(path, old, new) for path, (old, new) in sorted(edited_files(tvm_dir).items())]
    parts += [_diff(path, None, new) for path, new in sorted(generated_modules().items())]
    return "".join(parts)


def logging_edit(tvm_dir: Path) -> tuple[str, str]:
    """(original, fixed) ``meta_schedule/logging.py``: ``create_loggers`` keeps foreign handlers.

    TVM lists ``handler.get_name()`` of every handler on the global logger as a handler of its
    ``dictConfig``: an unnamed one (a user's ``StreamHandler()``, pytest >= 9.2's log capture)
    crashes it with ``AttributeError``, a named one it did not configure with ``ValueError``.
    ms_droplet mends this at run time (``ms_droplet/tvm_fixes.py``); this is the fix in place.
    """
    what = "meta_schedule/logging.py"
    base = (tvm_dir / "s_tir" / "meta_schedule" / "logging.py").read_text()
    fixed = _replace(
        base,
        '            "handlers": [handler.get_name() for handler in global_logger.handlers]\n'
        '            + [global_logger_name + ".console", global_logger_name + ".file"],\n',
        '            "handlers": [global_logger_name + ".console", '
        'global_logger_name + ".file"],\n',
        what,
    )
    fixed = _replace(
        fixed,
        "    logging.config.dictConfig(p_config)\n",
        "    # dictConfig can attach only the handlers it configures. Handlers attached to the\n"
        "    # global logger by others (a user, a test harness; named or not) are set aside and\n"
        "    # attached again, so that they keep receiving records.\n"
        '    configured = p_config["handlers"]\n'
        "    foreign = [h for h in global_logger.handlers if h.get_name() not in configured]\n"
        "    logging.config.dictConfig(p_config)\n"
        "    for handler in foreign:\n"
        "        global_logger.addHandler(handler)\n",
        what,
    )
    return base, fixed


def _fix_patch(edit, path: str, test_name: str, tvm_dir: Path | None) -> str:
    """A fix of one TVM file, ``edit(tvm_dir) -> (original, fixed)`` at ``path``, with the TVM
    test it adds (template ``scripts/upstream/<test_name>``)."""
    base, fixed = edit(tvm_dir or _installed_tvm())
    test = _common((TEMPLATES / test_name).read_text(), test_name)
    return _diff(path, base, fixed) + _diff(f"{TEST_DIR}/{test_name}", None, test)


def make_logging_patch(tvm_dir: Path | None = None) -> str:
    """The patch fixing ``create_loggers`` with handlers it did not create, with its test."""
    return _fix_patch(logging_edit, LOGGING_FILE, LOGGING_TEST_NAME, tvm_dir)


def builder_edit(tvm_dir: Path) -> tuple[str, str]:
    """(original, fixed) ``builder/local_builder.py``: tensor intrinsics imported on demand.

    ``default_build`` imports ``tvm.s_tir.tensor_intrin`` in every ``LocalBuilder`` worker, and
    ``LocalBuilder`` starts new workers for every batch: 12-17 s per import on 2 cores, up to
    45 s on a slow one, inside the first candidate's 30 s build timeout. Only two of the
    module's registrations are looked up at build time, both by CUDA tensor-core (``mma``)
    lowering; ms_droplet's ``FastBuilder`` relies on the same facts (``docs/builder.md``).
    """
    what = "builder/local_builder.py"
    base = (tvm_dir / "s_tir" / "meta_schedule" / "builder" / "local_builder.py").read_text()
    fixed = _replace(
        base, "import os\nimport tempfile\n", "import os\nimport sys\nimport tempfile\n", what
    )
    fixed = _replace(
        fixed,
        "from tvm.ir import IRModule\n",
        "from tvm.ir import IRModule, save_json\n",
        what,
    )
    fixed = _replace(
        fixed,
        '@register_global_func("s_tir.meta_schedule.builder.default_build")\n',
        '_TENSOR_INTRIN_MODULE = "tvm.s_tir.tensor_intrin"\n'
        "# Building looks up only two functions that importing _TENSOR_INTRIN_MODULE\n"
        "# registers, both for CUDA tensor cores: the index maps of the code generator of\n"
        "# `mma_store` and of the warp memory lowering of the `m16n8k8.matrixC` scope.\n"
        "# Tensorization itself happens at schedule time, in the tuning process.\n"
        '_TENSOR_INTRIN_CONSUMERS = ("tirx.mma_store", "m16n8k8.matrix")\n'
        "# What a failed lookup of such a function reports (`ICHECK(func.has_value())`).\n"
        '_MISSING_REGISTRATION = "has_value()"\n'
        "\n"
        "\n"
        "def _needs_tensor_intrin(mod: IRModule, target: Target) -> bool:\n"
        '    """Whether building ``mod`` for ``target`` needs ``tvm.s_tir.tensor_intrin``."""\n'
        '    if target.kind.name != "cuda":\n'
        "        return False\n"
        "    text = save_json(mod)\n"
        "    return any(consumer in text for consumer in _TENSOR_INTRIN_CONSUMERS)\n"
        "\n"
        "\n"
        "def _import_tensor_intrin() -> None:\n"
        "    # pylint: disable=import-outside-toplevel\n"
        "    import tvm.s_tir.tensor_intrin  # pylint: disable=unused-import\n"
        "\n"
        "\n"
        '@register_global_func("s_tir.meta_schedule.builder.default_build")\n',
        what,
    )
    fixed = _replace(
        fixed,
        "    The built Module.\n"
        '    """\n'
        "    # pylint: disable=import-outside-toplevel\n"
        "    import tvm.s_tir.tensor_intrin  # pylint: disable=unused-import\n"
        "    from tvm.driver import build as tvm_build\n",
        "    The built Module.\n"
        "\n"
        "    Notes\n"
        "    -----\n"
        "    ``tvm.s_tir.tensor_intrin`` is imported only when the build needs it: when ``mod``\n"
        "    uses CUDA tensor-core intrinsics whose lowering looks up its registrations, or when\n"
        "    the build fails on a missing registration (then the build is tried once more).\n"
        "    Importing it takes seconds to tens of seconds, counted in the build's timeout, and\n"
        "    LocalBuilder starts new workers for every batch.\n"
        '    """\n'
        "    # pylint: disable=import-outside-toplevel\n"
        "    from tvm.driver import build as tvm_build\n",
        what,
    )
    fixed = _replace(
        fixed,
        "    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)\n"
        "    return tvm_build(mod, target=target)\n",
        "    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)\n"
        "    if _TENSOR_INTRIN_MODULE not in sys.modules and _needs_tensor_intrin(mod, target):\n"
        "        _import_tensor_intrin()\n"
        "    try:\n"
        "        return tvm_build(mod, target=target)\n"
        "    except Exception as error:  # pylint: disable=broad-except\n"
        "        if _TENSOR_INTRIN_MODULE in sys.modules or "
        "_MISSING_REGISTRATION not in str(error):\n"
        "            raise\n"
        "    # A consumer of the registrations that _needs_tensor_intrin does not know yet.\n"
        "    _import_tensor_intrin()\n"
        "    return tvm_build(mod, target=target)\n",
        what,
    )
    return base, fixed


def make_builder_patch(tvm_dir: Path | None = None) -> str:
    """The patch making LocalBuilder import tensor intrinsics only for builds that need them."""
    return _fix_patch(builder_edit, BUILDER_FILE, BUILDER_TEST_NAME, tvm_dir)


# patch file name -> (generator, the TVM test it adds)
PATCHES = {
    "droplet.patch": (make_patch, TEST_NAME),
    LOGGING_PATCH: (make_logging_patch, LOGGING_TEST_NAME),
    BUILDER_PATCH: (make_builder_patch, BUILDER_TEST_NAME),
}


def build_tree(tvm_dir: Path, dest: Path) -> Path:
    """A TVM source-like tree under ``dest``: ``python/tvm`` (copied .py, symlinked rest)."""
    pkg = dest / "python" / "tvm"
    for dirpath, dirnames, filenames in os.walk(tvm_dir):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(tvm_dir)
        (pkg / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            src = Path(dirpath) / name
            if name.endswith(".py"):
                shutil.copy2(src, pkg / rel / name)
            else:
                os.symlink(src, pkg / rel / name)
    return dest


def apply_patch(patch: Path, tree: Path) -> None:
    for args in (["--check"], []):
        subprocess.run(["git", "apply", *args, str(patch)], cwd=tree, check=True)


# TVM_DEVICE_BACKEND_AUTOLOAD=0 keeps ms_droplet's `tvm.backends` entry point from running (it
# would wrap SearchStrategy.create), but it also skips TVM's built-in backends (the CUDA script
# namespaces that tensor intrinsics need): load those, and only those, by hand. A
# sitecustomize on PYTHONPATH does it in every Python process of the check, the test's own and
# the worker processes it starts (LocalBuilder's workers import the tensor intrinsics).
_SITECUSTOMIZE = """
import tvm
from tvm.backend._autoload_backends import _load_builtin_backends
if not tvm._RUNTIME_ONLY:
    _load_builtin_backends()
"""

_RUNNER = """
import sys
import tvm
import pytest
code = pytest.main(sys.argv[1:])
assert tvm.__file__.startswith({tree!r}), f"wrong tvm: {{tvm.__file__}}"
leaked = sorted(m for m in sys.modules if m == "ms_droplet" or m.startswith("ms_droplet."))
if leaked:
    print("ms_droplet was imported during the upstream test:", leaked)
    sys.exit(3)
sys.exit(code)
"""


def check(patch_text: str, keep: bool = False, test_name: str = TEST_NAME) -> int:
    """Apply the patch to a copy of the installed tvm, run the added test and TVM's lint."""
    tvm_dir = _installed_tvm()
    tmp = Path(tempfile.mkdtemp(prefix="droplet-upstream-"))
    try:
        tree = build_tree(tvm_dir, tmp / "tvm")
        patch = tmp / "change.patch"
        patch.write_text(patch_text)
        apply_patch(patch, tree)
        print(f"check: {test_name}: patch applies to a copy of {tvm_dir} ({tree})")
        site = tmp / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tree / "python"), str(site)]),
            "TVM_DEVICE_BACKEND_AUTOLOAD": "0",
        }
        test = tree / TEST_DIR / test_name
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _RUNNER.format(tree=str(tree / "python")),
                "-q",
                "-p",
                "no:cacheprovider",
                "--durations=5",
                "--rootdir",
                str(tree),
                "-c",
                os.devnull,
                str(test),
            ],
            cwd=tmp,
            env=env,
        )
        if result.returncode:
            print(f"check: FAILED: the added test ({test.name}) exit status {result.returncode}")
            return 1
        print("check: the added test passes with the patched tvm (ms_droplet not imported)")
        files = [str(tree / p) for p in re.findall(r"^\+\+\+ b/(\S+)", patch_text, re.M)]
        ruff = [sys.executable, "-m", "ruff"] if shutil.which("ruff") is None else ["ruff"]
        lint = subprocess.run([*ruff, "check", *TVM_RUFF_CHECK, *files], cwd=tmp)
        fmt = subprocess.run([*ruff, "format", "--check", "--diff", *TVM_RUFF_FORMAT, *files])
        if lint.returncode or fmt.returncode:
            print("check: FAILED: TVM's ruff settings report the files above")
            return 1
        print(
            f"check: ruff check + ruff format --check (TVM's settings) clean on {len(files)} files"
        )
        return 0
    finally:
        if keep:
            print(f"check: tree kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where to write the droplet patch; the other patches go to the same folder",
    )
    parser.add_argument(
        "--check", action="store_true", help="apply to a copy of the installed tvm, test, lint"
    )
    parser.add_argument("--keep", action="store_true", help="with --check: keep the temp tree")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, (generate, test_name) in PATCHES.items():
        text = generate()
        out = args.out if name == "droplet.patch" else args.out.parent / name
        out.write_text(text)
        print(f"wrote {out} ({text.count(chr(10))} lines)")
        if args.check:
            failed |= check(text, keep=args.keep, test_name=test_name)
    return failed


if __name__ == "__main__":
    sys.exit(main())
