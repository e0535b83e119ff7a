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
"""ONNX versions of the model zoo, built with ``onnx.helper`` (nothing is downloaded).

Files to try ``ms-droplet tune-model --onnx`` with, and the reference models of the tests and
benchmarks that import ONNX. Each graph mirrors the :mod:`ms_droplet.models` model of the same
name (same architecture, sizes, input name and shape; see its table), with seeded random
weights stored as initializers (scaled as :func:`ms_droplet.models.random_weight` does, so
activations stay at unit scale). float32, opset 17, one input ``"x"`` and one output
``"output"``:

=============== ====================== ===================================================
``resnet18``    ``(N, 3, 224, 224)``   ``(N, 1000)``: Conv, BatchNormalization, Relu,
                                       MaxPool, Add, GlobalAveragePool, Flatten, Gemm.
``transformer`` ``(N, 128, 512)``      ``(N, 128, 512)``: MatMul, Add, Reshape, Transpose,
                                       Mul, Softmax, LayerNormalization; GELU written with
                                       Erf (ONNX has ``Gelu`` only from opset 20).
``mlp``         ``(N, 784)``           ``(N, 10)``: Gemm and Relu, 784 -> 512 -> 256 -> 10.
=============== ====================== ===================================================

``batch_size=None`` leaves ``N`` symbolic (``dim_param`` ``"batch"``), for the handling of
dynamic shapes: the user must fix it before tuning.
"""

from __future__ import annotations

import math
import os

import numpy as np

ONNX_MODEL_NAMES = ("resnet18", "transformer", "mlp")

OPSET = 17
# The IR version that goes with opset 17: readable by older onnxruntime builds too.
IR_VERSION = 8


class _Graph:
    """Collects the nodes and seeded initializers of one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        """``normal * sqrt(1 / fan_in)``: a dense or convolution weight."""
        value = self.rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
        return self.const(name, value.astype(np.float32))

    def near(self, name: str, shape: tuple[int, ...], center: float) -> str:
        """``center + 0.1 * normal``: a bias, shift or mean (0) or a scale (1)."""
        value = center + 0.1 * self.rng.standard_normal(shape)
        return self.const(name, value.astype(np.float32))

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        from onnx import helper  # pylint: disable=import-outside-toplevel

        self._count += 1
        output = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    # Layers.

    def conv_bn(self, x: str, prefix: str, cin: int, cout: int, kernel: int, stride: int) -> str:
        """A bias-free convolution (padding ``kernel // 2``) then inference batch norm."""
        w = self.weight(f"{prefix}.weight", (cout, cin, kernel, kernel), cin * kernel * kernel)
        pad = kernel // 2
        y = self.op(
            "Conv",
            [x, w],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
        )
        bn = f"{prefix}_bn"
        gamma = self.near(f"{bn}.gamma", (cout,), 1.0)
        beta = self.near(f"{bn}.beta", (cout,), 0.0)
        mean = self.near(f"{bn}.moving_mean", (cout,), 0.0)
        var = self.const(
            f"{bn}.moving_var", self.rng.uniform(0.5, 1.5, size=(cout,)).astype(np.float32)
        )
        return self.op("BatchNormalization", [y, gamma, beta, mean, var], epsilon=1e-5)

    def linear(self, x: str, prefix: str, cin: int, cout: int) -> str:
        """``x @ W + b`` with ``W`` stored ``(cin, cout)`` (MatMul then Add; any leading dims)."""
        w = self.weight(f"{prefix}.weight", (cin, cout), cin)
        b = self.near(f"{prefix}.bias", (cout,), 0.0)
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def gemm(self, x: str, prefix: str, cin: int, cout: int) -> str:
        """``x @ W.T + b`` with ``W`` stored ``(cout, cin)`` as PyTorch does (Gemm, 2-D ``x``)."""
        w = self.weight(f"{prefix}.weight", (cout, cin), cin)
        b = self.near(f"{prefix}.bias", (cout,), 0.0)
        return self.op("Gemm", [x, w, b], transB=1)

    def layer_norm(self, x: str, prefix: str, dim: int) -> str:
        gamma = self.near(f"{prefix}.weight", (dim,), 1.0)
        beta = self.near(f"{prefix}.bias", (dim,), 0.0)
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)


def _resnet18(g: _Graph, x: str) -> tuple[str, tuple]:
    width, num_classes = 64, 1000
    y = g.op("Relu", [g.conv_bn(x, "conv1", 3, width, 7, 2)])
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage in range(4):
        cout = width * 2**stage
        for index in range(2):
            stride = 2 if stage > 0 and index == 0 else 1
            prefix = f"blocks.{2 * stage + index}"
            out = g.op("Relu", [g.conv_bn(y, f"{prefix}.conv1", cin, cout, 3, stride)])
            out = g.conv_bn(out, f"{prefix}.conv2", cout, cout, 3, 1)
            shortcut = y
            if stride != 1 or cin != cout:
                shortcut = g.conv_bn(y, f"{prefix}.downsample", cin, cout, 1, stride)
            y = g.op("Relu", [g.op("Add", [out, shortcut])])
            cin = cout
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
    return g.gemm(y, "fc", cin, num_classes), (num_classes,)


def _transformer(g: _Graph, x: str) -> tuple[str, tuple]:
    seq_len, d_model, num_heads, ffn_dim = 128, 512, 8, 2048
    head_dim = d_model // num_heads
    # Reshape's 0 copies the input's dimension: the batch may be symbolic.
    heads_shape = g.const("heads_shape", np.array([0, 0, num_heads, head_dim], np.int64))
    model_shape = g.const("model_shape", np.array([0, 0, d_model], np.int64))

    def heads(name: str, perm: list[int]) -> str:
        y = g.op("Reshape", [g.linear(x, f"{name}_proj", d_model, d_model), heads_shape])
        return g.op("Transpose", [y], perm=perm)

    q = heads("q", [0, 2, 1, 3])  # (batch, heads, seq, head_dim)
    k_t = heads("k", [0, 2, 3, 1])  # (batch, heads, head_dim, seq)
    v = heads("v", [0, 2, 1, 3])
    scale = g.const("attn_scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), scale])
    attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    attn = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), model_shape])
    y = g.layer_norm(
        g.op("Add", [x, g.linear(attn, "out_proj", d_model, d_model)]), "norm1", d_model
    )
    # GELU (erf form, as relax's gelu): 0.5 * h * (1 + erf(h / sqrt(2))).
    h = g.linear(y, "fc1", d_model, ffn_dim)
    erf = g.op(
        "Erf", [g.op("Mul", [h, g.const("inv_sqrt2", np.array(1 / math.sqrt(2), np.float32))])]
    )
    one = g.const("one", np.array(1.0, np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    gelu = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [erf, one])])
    ffn = g.linear(gelu, "fc2", ffn_dim, d_model)
    return g.layer_norm(g.op("Add", [y, ffn]), "norm2", d_model), (seq_len, d_model)


def _mlp(g: _Graph, x: str) -> tuple[str, tuple]:
    sizes = (784, 512, 256, 10)
    y = x
    for index in range(len(sizes) - 1):
        y = g.gemm(y, f"layers.{index}", sizes[index], sizes[index + 1])
        if index + 2 < len(sizes):
            y = g.op("Relu", [y])
    return y, (sizes[-1],)


_INPUT_SHAPES = {
    "resnet18": (3, 224, 224),
    "transformer": (128, 512),
    "mlp": (784,),
}
_BUILDERS = {"resnet18": _resnet18, "transformer": _transformer, "mlp": _mlp}


def _check_arguments(name: str, batch_size) -> None:
    if name not in _BUILDERS:
        raise ValueError(
            f"name must be one of ONNX_MODEL_NAMES, got {name!r}; "
            f"valid choices: {', '.join(ONNX_MODEL_NAMES)}"
        )
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be an integer >= 1 or None, got {batch_size!r}; "
            "valid choices: a positive integer, or None for a symbolic batch dimension"
        )


def make_onnx_model(name: str, batch_size: int | None = 1, seed: int = 0):
    """An ONNX model of the zoo, with seeded random weights.

    Parameters
    ----------
    name : str
        One of :data:`ONNX_MODEL_NAMES`: ``"resnet18"``, ``"transformer"``, ``"mlp"``.
    batch_size : int or None
        The batch dimension of the input and output; ``None`` makes it symbolic
        (``dim_param`` ``"batch"``).
    seed : int
        Seed of the weights (``numpy.random.default_rng``).

    Returns
    -------
    onnx.ModelProto
        A float32, opset-17 model with input ``"x"`` and output ``"output"`` that passes
        ``onnx.checker.check_model``.

    Raises
    ------
    ValueError
        For an unknown name or a batch size that is not a positive integer or ``None`` (the
        message names the parameter, the rule, the value and the valid choices).
    """
    _check_arguments(name, batch_size)
    from onnx import TensorProto, helper  # pylint: disable=import-outside-toplevel

    batch = "batch" if batch_size is None else batch_size
    g = _Graph(seed)
    output, output_shape = _BUILDERS[name](g, "x")
    # Every builder ends with the node that makes the result: name its output "output".
    assert g.nodes[-1].output[0] == output
    g.nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        g.nodes,
        f"ms_droplet_{name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *_INPUT_SHAPES[name]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, *output_shape])],
        initializer=g.initializers,
    )
    return helper.make_model(
        graph,
        producer_name="ms_droplet",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )


def write_onnx_model(
    name: str, path: str | os.PathLike, batch_size: int | None = 1, seed: int = 0
) -> str:
    """Write :func:`make_onnx_model` ``(name, batch_size, seed)`` to ``path``; return the path.

    Raises
    ------
    ValueError
        As :func:`make_onnx_model`.
    """
    import onnx  # pylint: disable=import-outside-toplevel

    model = make_onnx_model(name, batch_size=batch_size, seed=seed)
    path = os.fspath(path)
    onnx.save(model, path)
    return path
