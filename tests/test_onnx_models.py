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
"""The ONNX model zoo: valid graphs, onnxruntime runs them, TVM's ONNX import matches it."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ms_droplet.onnx_models import (  # noqa: E402
    ONNX_MODEL_NAMES,
    make_onnx_model,
    write_onnx_model,
)

INPUT_SHAPES = {"resnet18": (3, 224, 224), "transformer": (128, 512), "mlp": (784,)}
OUTPUT_SHAPES = {"resnet18": (1000,), "transformer": (128, 512), "mlp": (10,)}


def _random_input(name: str, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *INPUT_SHAPES[name])).astype(np.float32)


def _run_ort(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"x": x})[0]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_names_match_the_relax_zoo():
    from ms_droplet.models import MODEL_NAMES

    assert ONNX_MODEL_NAMES == MODEL_NAMES


@pytest.mark.parametrize("name", ONNX_MODEL_NAMES)
def test_checker_and_onnxruntime(name):
    model = make_onnx_model(name, batch_size=2)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert _dims(model.graph.input[0]) == [2, *INPUT_SHAPES[name]]
    assert _dims(model.graph.output[0]) == [2, *OUTPUT_SHAPES[name]]
    out = _run_ort(model, _random_input(name, 2))
    assert out.shape == (2, *OUTPUT_SHAPES[name])
    assert out.dtype == np.float32
    # Seeded weights scaled for unit activations: finite, neither vanishing nor exploding.
    assert np.isfinite(out).all()
    assert 0.1 < float(np.abs(out).mean()) < 10.0


def _tvm_matches_ort(name: str) -> None:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from ms_droplet.relax import compile_untuned, run_model

    model = make_onnx_model(name, batch_size=2, seed=3)
    x = _random_input(name, 2, seed=4)
    expected = _run_ort(model, x)
    mod = from_onnx(model, keep_params_in_input=False)
    executable = compile_untuned(mod, tvm.target.Target("llvm"))
    outputs = run_model(executable, "main", [x])
    assert len(outputs) == 1
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_tvm_matches_onnxruntime(name):
    _tvm_matches_ort(name)


@pytest.mark.slow
def test_tvm_matches_onnxruntime_resnet18():
    _tvm_matches_ort("resnet18")


@pytest.mark.parametrize("name", ONNX_MODEL_NAMES)
def test_symbolic_batch(name):
    model = make_onnx_model(name, batch_size=None)
    onnx.checker.check_model(model)
    assert _dims(model.graph.input[0]) == ["batch", *INPUT_SHAPES[name]]
    assert _dims(model.graph.output[0]) == ["batch", *OUTPUT_SHAPES[name]]
    if name != "resnet18":  # the graphs are the same; resnet18 is the slow one to run
        assert _run_ort(model, _random_input(name, 3)).shape == (3, *OUTPUT_SHAPES[name])


def test_seed_sets_the_weights():
    def weights(seed):
        return [
            onnx.numpy_helper.to_array(t)
            for t in make_onnx_model("mlp", seed=seed).graph.initializer
        ]

    first, again, other = weights(0), weights(0), weights(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_write_onnx_model(tmp_path):
    path = tmp_path / "mlp.onnx"
    written = write_onnx_model("mlp", path, batch_size=4, seed=2)
    assert written == str(path)
    loaded = onnx.load(written)
    assert loaded.SerializeToString() == make_onnx_model("mlp", 4, 2).SerializeToString()


def test_unknown_name():
    with pytest.raises(ValueError) as info:
        make_onnx_model("vgg16")
    message = str(info.value)
    for part in ("name", "must be one of", "'vgg16'", "resnet18, transformer, mlp"):
        assert part in message


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "2"])
def test_bad_batch_size(batch_size, tmp_path):
    for call in (
        lambda: make_onnx_model("mlp", batch_size=batch_size),
        lambda: write_onnx_model("mlp", tmp_path / "m.onnx", batch_size=batch_size),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "batch_size must be an integer >= 1 or None" in message
        assert repr(batch_size) in message
        assert "None for a symbolic batch dimension" in message
    assert not (tmp_path / "m.onnx").exists()
