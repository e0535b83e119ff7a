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
"""A small model zoo built with ``tvm.relax.frontend.nn`` (nothing is downloaded).

:func:`get_model` returns a :class:`ZooModel`: a Relax ``IRModule`` whose entry function
(``"forward"``) takes the model's inputs followed by its weights (``nn`` exports weights as
function parameters, so ``params=None`` when tuning and compiling, and the weights are passed
at run time), plus the specs of both and seeded random values for them.

=============== ============================================================================
``resnet18``    ResNet-18 (He et al. 2016): 7x7/2 stem convolution, batch norm, ReLU, 3x3/2
                max pooling, four stages of two basic blocks (3x3 convolutions, batch norm,
                ReLU, residual adds; 1x1/2 projection where the shape changes), global average
                pooling and a dense classifier. NCHW, ``image_size=224``, 1000 classes.
``transformer`` One transformer encoder block (post-norm, as in BERT): Q/K/V projections,
                scaled dot-product attention (batched matmuls and softmax), output projection,
                residual add and layer norm, then a GELU feed-forward network, residual add
                and layer norm. ``seq_len=128``, ``d_model=512``, 8 heads, ``ffn_dim=2048``.
``mlp``         Dense layers with ReLU between them: 784 -> 512 -> 256 -> 10.
=============== ============================================================================

Every model takes ``batch_size`` and size options (small sizes make cheap tests).
Batch norm is in inference form (``training=False``, moving statistics as weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MODEL_NAMES = ("resnet18", "transformer", "mlp")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one input or weight of a zoo model."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ZooModel:
    """A model of the zoo, ready for :func:`ms_droplet.relax.tune_model`.

    Attributes
    ----------
    name : str
        The zoo name (``"resnet18"``, ``"transformer"``, ``"mlp"``).
    mod : tvm.IRModule
        The Relax module. Its function :attr:`entry` takes :attr:`inputs` then :attr:`params`.
    entry : str
        Name of the Relax function to run (``"forward"``).
    inputs : tuple[TensorSpec, ...]
        The data inputs.
    params : tuple[TensorSpec, ...]
        The weights, in the order the entry function takes them.
    options : dict
        The options the model was built with (``batch_size`` included).
    """

    name: str
    mod: object
    entry: str
    inputs: tuple[TensorSpec, ...]
    params: tuple[TensorSpec, ...]
    options: dict

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Standard-normal data inputs drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(spec.shape).astype(spec.dtype) for spec in self.inputs]

    def random_params(self, seed: int = 0) -> list[np.ndarray]:
        """Weights drawn from ``seed`` (see :func:`random_weight`)."""
        rng = np.random.default_rng(seed)
        return [random_weight(spec, rng) for spec in self.params]

    def random_arguments(self, seed: int = 0) -> list[np.ndarray]:
        """Inputs then weights: every argument of the entry function, in order."""
        return self.random_inputs(seed) + self.random_params(seed + 1)


def random_weight(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """A random weight that keeps activations at unit scale, chosen by the weight's name.

    * ``*moving_var``: uniform in [0.5, 1.5] (a variance must be positive);
    * ``*gamma`` and norm ``*weight`` (one-dimensional): ``1 + 0.1 * normal``;
    * ``*bias``, ``*beta``, ``*moving_mean``: ``0.1 * normal``;
    * other weights (dense, convolution): ``normal * sqrt(1 / fan_in)``, where ``fan_in`` is
      the product of every dimension but the first (PyTorch's layouts: ``(out, in)``,
      ``(out, in, kh, kw)``).
    """
    name, shape = spec.name, spec.shape
    if name.endswith("moving_var"):
        value = rng.uniform(0.5, 1.5, size=shape)
    elif name.endswith("gamma") or (name.endswith("weight") and len(shape) == 1):
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith(("bias", "beta", "moving_mean")) or len(shape) < 2:
        value = 0.1 * rng.standard_normal(shape)
    else:
        fan_in = math.prod(shape[1:])
        value = rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
    return value.astype(spec.dtype)


def _check_positive(model: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{model}: {key} must be an integer >= 1, got {value!r}")


def _nn_modules():
    """The ``nn.Module`` classes of the zoo, defined on first use (``tvm.relax`` is heavy)."""
    # pylint: disable=import-outside-toplevel
    from tvm import relax
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn.core import wrap_nested

    class BatchNorm2D(nn.Module):
        """Inference-mode batch norm over axis 1 of NCHW data."""

        def __init__(self, channels: int, eps: float = 1e-5) -> None:
            self.gamma = nn.Parameter((channels,))
            self.beta = nn.Parameter((channels,))
            self.moving_mean = nn.Parameter((channels,))
            self.moving_var = nn.Parameter((channels,))
            self.eps = eps

        def forward(self, x):
            out = relax.op.nn.batch_norm(
                x._expr,  # pylint: disable=protected-access
                self.gamma._expr,  # pylint: disable=protected-access
                self.beta._expr,  # pylint: disable=protected-access
                self.moving_mean._expr,  # pylint: disable=protected-access
                self.moving_var._expr,  # pylint: disable=protected-access
                axis=1,
                epsilon=self.eps,
                training=False,
            )
            return wrap_nested(out, "batch_norm")[0]

    def _pool(expr, name):
        return wrap_nested(expr, name)

    class BasicBlock(nn.Module):
        """Two 3x3 convolutions with batch norm and a residual add (ResNet-18/34)."""

        def __init__(self, in_channels: int, channels: int, stride: int) -> None:
            self.conv1 = nn.Conv2D(in_channels, channels, 3, stride, 1, bias=False)
            self.bn1 = BatchNorm2D(channels)
            self.conv2 = nn.Conv2D(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = BatchNorm2D(channels)
            self.downsample = None
            if stride != 1 or in_channels != channels:
                self.downsample = nn.Conv2D(in_channels, channels, 1, stride, 0, bias=False)
                self.downsample_bn = BatchNorm2D(channels)

        def forward(self, x):
            out = nn.op.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x
            if self.downsample is not None:
                shortcut = self.downsample_bn(self.downsample(x))
            return nn.op.relu(nn.op.add(out, shortcut))

    class ResNet18(nn.Module):
        """ResNet-18 on NCHW images."""

        def __init__(self, width: int, num_classes: int) -> None:
            self.conv1 = nn.Conv2D(3, width, 7, 2, 3, bias=False)
            self.bn1 = BatchNorm2D(width)
            blocks = []
            in_channels = width
            for stage in range(4):
                channels = width * 2**stage
                for index in range(2):
                    stride = 2 if stage > 0 and index == 0 else 1
                    blocks.append(BasicBlock(in_channels, channels, stride))
                    in_channels = channels
            self.blocks = nn.ModuleList(blocks)
            self.fc = nn.Linear(in_channels, num_classes)

        def forward(self, x):
            x = nn.op.relu(self.bn1(self.conv1(x)))
            x = _pool(relax.op.nn.max_pool2d(x._expr, 3, 2, 1), "max_pool2d")
            for block in self.blocks:
                x = block(x)
            x = _pool(relax.op.nn.adaptive_avg_pool2d(x._expr, 1), "avg_pool2d")
            x = nn.op.reshape(x, (x.shape[0], x.shape[1]))
            return self.fc(x)

    class EncoderBlock(nn.Module):
        """A post-norm transformer encoder block (multi-head self-attention, GELU FFN)."""

        def __init__(self, d_model: int, num_heads: int, ffn_dim: int) -> None:
            self.num_heads = num_heads
            self.head_dim = d_model // num_heads
            self.q_proj = nn.Linear(d_model, d_model)
            self.k_proj = nn.Linear(d_model, d_model)
            self.v_proj = nn.Linear(d_model, d_model)
            self.out_proj = nn.Linear(d_model, d_model)
            self.norm1 = nn.LayerNorm(d_model)
            self.fc1 = nn.Linear(d_model, ffn_dim)
            self.fc2 = nn.Linear(ffn_dim, d_model)
            self.norm2 = nn.LayerNorm(d_model)

        def _heads(self, x, batch: int, seq: int):
            x = nn.op.reshape(x, (batch, seq, self.num_heads, self.head_dim))
            return nn.op.permute_dims(x, (0, 2, 1, 3))  # (batch, heads, seq, head_dim)

        def forward(self, x):
            batch, seq, d_model = x.shape
            q = self._heads(self.q_proj(x), batch, seq)
            k = self._heads(self.k_proj(x), batch, seq)
            v = self._heads(self.v_proj(x), batch, seq)
            scores = nn.op.matmul(q, nn.op.permute_dims(k, (0, 1, 3, 2)))
            scores = nn.op.multiply(
                scores, nn.op.full((), 1.0 / math.sqrt(self.head_dim), "float32")
            )
            attn = nn.op.matmul(nn.op.softmax(scores, axis=-1), v)
            attn = nn.op.reshape(nn.op.permute_dims(attn, (0, 2, 1, 3)), (batch, seq, d_model))
            x = self.norm1(nn.op.add(x, self.out_proj(attn)))
            ffn = self.fc2(nn.op.gelu(self.fc1(x)))
            return self.norm2(nn.op.add(x, ffn))

    class MLP(nn.Module):
        """Dense layers with ReLU between them."""

        def __init__(self, sizes: tuple[int, ...]) -> None:
            self.layers = nn.ModuleList(
                [nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
            )

        def forward(self, x):
            for index, layer in enumerate(self.layers):
                x = layer(x)
                if index + 1 < len(self.layers):
                    x = nn.op.relu(x)
            return x

    return nn, ResNet18, EncoderBlock, MLP


def resnet18(
    batch_size: int = 1, image_size: int = 224, width: int = 64, num_classes: int = 1000
) -> ZooModel:
    """ResNet-18 on ``(batch_size, 3, image_size, image_size)`` float32 images.

    ``width`` is the channel count of the first stage (64 in the paper; the stages have
    ``width * (1, 2, 4, 8)``).
    """
    _check_positive(
        "resnet18",
        batch_size=batch_size,
        image_size=image_size,
        width=width,
        num_classes=num_classes,
    )
    nn, resnet, _, _ = _nn_modules()
    return _export(
        "resnet18",
        resnet(width, num_classes),
        {"x": (batch_size, 3, image_size, image_size)},
        nn,
        dict(batch_size=batch_size, image_size=image_size, width=width, num_classes=num_classes),
    )


def transformer(
    batch_size: int = 1,
    seq_len: int = 128,
    d_model: int = 512,
    num_heads: int = 8,
    ffn_dim: int = 2048,
) -> ZooModel:
    """One transformer encoder block on ``(batch_size, seq_len, d_model)`` float32 inputs."""
    _check_positive(
        "transformer",
        batch_size=batch_size,
        seq_len=seq_len,
        d_model=d_model,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
    )
    if d_model % num_heads:
        raise ValueError(
            f"transformer: d_model ({d_model}) must be a multiple of num_heads ({num_heads})"
        )
    nn, _, block, _ = _nn_modules()
    return _export(
        "transformer",
        block(d_model, num_heads, ffn_dim),
        {"x": (batch_size, seq_len, d_model)},
        nn,
        dict(
            batch_size=batch_size,
            seq_len=seq_len,
            d_model=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
        ),
    )


def mlp(
    batch_size: int = 1,
    in_features: int = 784,
    hidden: tuple[int, ...] = (512, 256),
    num_classes: int = 10,
) -> ZooModel:
    """Dense layers ``in_features -> *hidden -> num_classes`` with ReLU between them."""
    hidden = tuple(hidden)
    _check_positive("mlp", batch_size=batch_size, in_features=in_features, num_classes=num_classes)
    for size in hidden:
        _check_positive("mlp", hidden=size)
    nn, _, _, dense = _nn_modules()
    return _export(
        "mlp",
        dense((in_features, *hidden, num_classes)),
        {"x": (batch_size, in_features)},
        nn,
        dict(
            batch_size=batch_size, in_features=in_features, hidden=hidden, num_classes=num_classes
        ),
    )


_BUILDERS: dict[str, Callable[..., ZooModel]] = {
    "resnet18": resnet18,
    "transformer": transformer,
    "mlp": mlp,
}


def get_model(name: str, batch_size: int = 1, **options) -> ZooModel:
    """A zoo model by name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`: ``"resnet18"``, ``"transformer"``, ``"mlp"``.
    batch_size : int
        The batch dimension of the input.
    **options
        Size options of that model (see :func:`resnet18`, :func:`transformer`, :func:`mlp`).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or a bad size.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](batch_size=batch_size, **options)


def _export(name: str, module, input_shapes: dict, nn, options: dict) -> ZooModel:
    spec = {
        "forward": {key: nn.spec.Tensor(shape, "float32") for key, shape in input_shapes.items()}
    }
    mod, named_params = module.export_tvm(spec=spec)
    # The entry function's parameter names (``fc1.weight``; TVMScript prints ``fc1_weight``):
    # the names ``relax.transform.BindParams`` matches.
    relax_params = list(mod["forward"].params)[len(input_shapes) :]
    params = tuple(
        TensorSpec(str(var.name), tuple(int(d) for d in param.shape), str(param.dtype))
        for var, (_, param) in zip(relax_params, named_params, strict=True)
    )
    inputs = tuple(TensorSpec(key, tuple(shape)) for key, shape in input_shapes.items())
    return ZooModel(
        name=name, mod=mod, entry="forward", inputs=inputs, params=params, options=options
    )
