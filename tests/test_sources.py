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
"""Models from files: ONNX (with ONNX Runtime as the reference) and Relax TVMScript; the CLI's
``tune-model --onnx/--relax --export``, and the exported library run in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ms_droplet.relax.sources import (  # noqa: E402
    ModelInputError,
    NumericsMismatchError,
    check_against_onnxruntime,
    compare_with_reference,
    load_onnx,
    load_relax_script,
    parse_input_shape,
)


def _tiny_onnx(path, batch="batch", op="Relu", shape=True):
    """x (batch, 64) -> MatMul (64, 32) -> Add -> ``op``: one dense layer, a symbolic batch
    (``shape=False``: the input's shape left out of the file)."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) / 8).astype("float32")
    bias = (0.1 * rng.standard_normal(32)).astype("float32")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"),
            helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
            helper.make_node(op, ["a"], ["y"], name="act"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64] if shape else None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 32])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return str(path)


# ------------------------------------------------------------------ loading, and its errors
def test_onnx_with_a_fixed_batch_loads_and_matches_onnxruntime(tmp_path):
    from ms_droplet.relax import compile_untuned  # pylint: disable=import-outside-toplevel

    path = _tiny_onnx(tmp_path / "tiny.onnx")
    model = load_onnx(path, {"x": (2, 64)})
    assert model.entry == "main" and model.source == "onnx" and model.output_names == ("y",)
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("x", (2, 64), "float32")]
    executable = compile_untuned(model.mod, "llvm")
    result = check_against_onnxruntime(model, executable, seed=3)
    assert result.ok and result.worst == "y" and result.max_abs_diff < 1e-5


def test_a_dynamic_dimension_needs_an_input_shape(tmp_path):
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ModelInputError) as info:
        load_onnx(path)
    message = str(info.value)
    assert f"input 'x' of {path!r} has a dynamic shape (batch, 64)" in message
    assert "--input-shape x=1,64" in message


def test_an_input_without_a_shape_in_the_file_needs_one(tmp_path):
    path = _tiny_onnx(tmp_path / "noshape.onnx", shape=False)
    with pytest.raises(ModelInputError, match="input 'x' of .* has no shape in the file"):
        load_onnx(path)
    assert load_onnx(path, {"x": (3, 64)}).inputs[0].shape == (3, 64)


@pytest.mark.parametrize(
    "shapes, expected",
    [
        ({"z": (1, 64)}, "has no input named 'z'; its inputs are 'x'"),
        ({"x": (1, 32)}, "x=1,32 does not fit input 'x'"),
        ({"x": (1, 64, 1)}, "x=1,64,1 does not fit input 'x'"),
    ],
)
def test_input_shapes_that_do_not_fit_are_refused(tmp_path, shapes, expected):
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ModelInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_onnx(path, shapes)


def test_unreadable_and_missing_onnx_files_are_named(tmp_path):
    with pytest.raises(ModelInputError, match=r"--onnx: no such file '.*nope\.onnx'"):
        load_onnx(str(tmp_path / "nope.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(ModelInputError) as info:
        load_onnx(str(garbage))
    assert f"{str(garbage)!r} is not a readable ONNX model" in str(info.value) or (
        "holds no ONNX graph" in str(info.value)
    )


def test_an_operator_the_frontend_lacks_names_its_node(tmp_path):
    path = _tiny_onnx(tmp_path / "odd.onnx", batch=1, op="NoSuchOperator")
    with pytest.raises(ModelInputError) as info:
        load_onnx(path)
    assert "node 'act'" in str(info.value) and "a NoSuchOperator" in str(info.value)


@pytest.mark.parametrize("text", ["x", "x=", "=1,2", "x=1,0", "x=a,b", "x=1,,2"])
def test_input_shape_text_is_checked(text):
    with pytest.raises(ModelInputError, match=r"--input-shape must be NAME=D1,D2,\.\.\."):
        parse_input_shape(text)
    assert parse_input_shape(" x = 1,3 ".replace(" ", "")) == ("x", (1, 3))


RELAX_SCRIPT = textwrap.dedent(
    """
    from tvm.script import ir as I, relax as R

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(SHAPE, "float32"), w: R.Tensor((16, 8), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.matmul(x, w))
                R.output(y)
            return y
    """
)


def test_a_relax_script_loads_with_its_static_shapes(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(RELAX_SCRIPT.replace("SHAPE", "(4, 16)"))
    model = load_relax_script(str(path))
    assert model.entry == "main" and model.source == "relax"
    assert [(s.name, s.shape) for s in model.inputs] == [("x", (4, 16)), ("w", (16, 8))]


def test_a_relax_script_with_a_symbolic_shape_or_no_module_is_refused(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(RELAX_SCRIPT.replace("SHAPE", '("n", 16)'))
    with pytest.raises(ModelInputError, match="parameter 'x' of Module.main .* no static shape"):
        load_relax_script(str(path))
    path.write_text("x = 1\n")
    with pytest.raises(ModelInputError, match="exactly one IRModule with a Relax function"):
        load_relax_script(str(path))


def test_a_mismatch_names_the_output_and_the_largest_difference():
    expected = [np.zeros((2, 3)), np.ones(4)]
    actual = [np.zeros((2, 3)), np.array([1.0, 1.0, 1.5, 1.0])]
    result = compare_with_reference(expected, actual, names=["logits", "probs"])
    assert not result.ok and result.worst == "probs" and result.max_abs_diff == 0.5
    assert "output 'probs' of the compiled model differs from ONNX Runtime's" in result.message()
    with pytest.raises(NumericsMismatchError, match="shape"):
        compare_with_reference([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(NumericsMismatchError, match="1 outputs where the reference has 2"):
        compare_with_reference(expected, actual[:1])


def test_one_rule_for_nan_and_zero_in_both_comparisons():
    """compare_arrays (the untuned build as reference) and compare_with_reference (ONNX
    Runtime) report the same numbers: NaN in both places is equal, in one only an infinite
    difference; the relative difference skips elements whose reference is zero."""
    from ms_droplet.relax import compare_arrays

    expected = [np.array([0.0, 2.0, np.nan, 4.0])]
    actual = [np.array([1e-5, 2.002, np.nan, 4.0])]
    ours = compare_arrays(expected, actual)
    theirs = compare_with_reference(expected, actual)
    for result in (ours, theirs):
        assert result.max_abs_diff == pytest.approx(2e-3)
        assert result.max_rel_diff == pytest.approx(1e-3)  # not 1e-5 / 0
        assert not result.ok  # 2e-3 > 1e-4 + 1e-4 * 2
    assert compare_arrays(expected, [np.array([0.0, 2.0, np.nan, 4.0])]).ok
    one_nan = compare_arrays(expected, [np.array([0.0, 2.0, 3.0, 4.0])])
    assert one_nan.max_abs_diff == np.inf and not one_nan.ok and one_nan.worst == "output 0"


# ------------------------------------------------------------------ the command line
def _cli(argv, capsys):
    from ms_droplet.cli import main  # pylint: disable=import-outside-toplevel

    code = main(argv)
    return code, capsys.readouterr()


def test_cli_refuses_a_bad_model_before_writing_anything(tmp_path, capsys):
    work_dir = tmp_path / "work"
    base = ["tune-model", "--trials", "2", "--work-dir", str(work_dir), "--no-progress"]
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    cases = [
        (["--onnx", path], "--input-shape x=1,64"),
        (["--onnx", str(tmp_path / "none.onnx")], "no such file"),
        (["--onnx", path, "--input-shape", "x=1"], "x=1 does not fit input 'x'"),
        (["--onnx", path, "--batch-size", "2"], "--batch-size (2) applies to --model only"),
        (["--model", "mlp", "--input-shape", "x=1,2"], "applies to --onnx only"),
        (["--onnx", path, "--input-shape", "x=1,64", "--export", "m.bin"], "ending in .so"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            _cli(base + extra, capsys)
        assert info.value.code == 2
        assert message in capsys.readouterr().err, extra
    assert not work_dir.exists()


LOAD_AND_RUN = """
import json, sys
import numpy as np
import tvm
from tvm import relax

lib = tvm.runtime.load_module(sys.argv[1])
vm = relax.VirtualMachine(lib, tvm.cpu())
x = np.random.default_rng(7).standard_normal((2, 64)).astype("float32")
y = vm["main"](tvm.runtime.tensor(x)).numpy()
print(json.dumps({"x": x.tolist(), "y": y.tolist()}))
"""


@pytest.mark.tuning
def test_cli_tunes_an_onnx_file_checks_it_and_exports_a_library(tmp_path, capsys):
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    library = tmp_path / "tiny.so"
    argv = ["tune-model", "--onnx", path, "--input-shape", "x=2,64", "--trials", "8"]
    argv += ["--num-trials-per-iter", "4", "--work-dir", str(tmp_path / "work")]
    argv += ["--no-progress", "--latency-rounds", "3", "--export", str(library)]
    argv += ["--json", str(tmp_path / "result.json")]
    code, out = _cli(argv, capsys)
    assert code == 0, out.err
    assert "output vs ONNX Runtime | match" in out.out
    assert "tiny.onnx (x 2x64 float32)" in out.out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["model"] == "tiny.onnx" and result["entry"] == "main"
    assert result["reference"]["match"] and result["reference"]["worst_output"] == "y"
    assert result["exported"] == str(library) and library.is_file()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ms-droplet-export-")]
    # A fresh process loads the library and runs it; ONNX Runtime agrees with its output.
    ran = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(library)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(ran.stdout.strip().splitlines()[-1])
    x = np.array(data["x"], dtype="float32")
    (expected,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(np.array(data["y"]), expected, rtol=1e-4, atol=1e-4)
