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
"""The layout of ms_droplet.relax: one package face, modules by concern, imports one way."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ms_droplet
from ms_droplet import relax as droplet_relax

PACKAGE_DIR = Path(droplet_relax.__file__).parent

# The modules of the package from the ground up: each may import only modules before it
# (preparation and evaluation stand alone, models from files are compared by evaluation,
# tuning builds on preparation, the pipeline route on tuning). Nothing imports back up, so no
# import circle can form inside the package.
LAYERS = ["prepare", "evaluate", "sources", "tune", "route"]


def _sibling_imports(module: str) -> set[str]:
    """Modules of ms_droplet.relax that ``module`` imports, at the top or inside a function."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "ms_droplet.relax."
        ):
            found.add(node.module.split(".")[2])
    return found


def test_relax_modules_import_one_way():
    assert sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__") == sorted(
        LAYERS
    )
    for index, module in enumerate(LAYERS):
        assert _sibling_imports(module) <= set(LAYERS[:index]), module


def test_relax_package_exports_its_api():
    for name in droplet_relax.__all__:
        value = getattr(droplet_relax, name)
        if callable(value):
            # Defined in a module of the package and handed on unchanged by its face.
            assert value.__module__.startswith("ms_droplet.relax."), name
    # What the CLI, the README and ms_droplet's lazy attributes import from ms_droplet.relax.
    for name in (
        "ModelTuneResult",
        "OutputComparison",
        "TaskRow",
        "canonicalize_model",
        "compare_arrays",
        "compare_outputs",
        "compile_untuned",
        "extract_model_tasks",
        "load_onnx",
        "load_relax_script",
        "measure_latency",
        "pipeline_route_active",
        "pipeline_strategy",
        "run_model",
        "tune_model",
    ):
        assert name in droplet_relax.__all__, name


@pytest.mark.parametrize("name", ["ModelTuneResult", "pipeline_strategy", "tune_model"])
def test_top_level_names_are_the_relax_ones(name):
    assert getattr(ms_droplet, name) is getattr(droplet_relax, name)
    assert getattr(importlib.import_module(".relax", "ms_droplet"), name) is getattr(
        droplet_relax, name
    )
