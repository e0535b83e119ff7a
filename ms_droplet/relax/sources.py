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
"""Models from outside the zoo: an ONNX file, a Relax module in a TVMScript file, a PyTorch
module; and ONNX Runtime as the reference for an ONNX model's outputs.

Each loader returns an :class:`ImportedModel`: the Relax module, its entry function and the
inputs it takes (static shapes: MetaSchedule tunes kernels of known sizes), ready for
:func:`ms_droplet.relax.tune_model`. Weights are constants of the module. Nothing is written
anywhere: a model that cannot be loaded fails here, before a work_dir is touched, with an error
that names the file, the input or the node, and the fix.

ONNX goes through TVM's own frontend (``tvm.relax.frontend.onnx.from_onnx``), PyTorch through
``torch.export`` and ``tvm.relax.frontend.torch.from_exported_program``. ``onnx``,
``onnxruntime`` and ``torch`` are imported only when used (``pip install "ms-droplet[onnx]"``).
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..models import TensorSpec

__all__ = [
    "ImportedModel",
    "ModelInputError",
    "NumericsMismatchError",
    "ReferenceComparison",
    "check_against_onnxruntime",
    "compare_with_reference",
    "load_onnx",
    "load_relax_script",
    "load_torch",
    "onnxruntime_outputs",
    "parse_input_shape",
    "reference_comparison",
]


class ModelInputError(ValueError):
    """A model file or module that cannot be tuned as given (the message says why and how to
    fix it)."""


class NumericsMismatchError(RuntimeError):
    """The compiled model's outputs differ from the reference framework's beyond tolerance."""


@dataclass(frozen=True)
class ImportedModel:
    """A model from a file or a framework, ready for :func:`ms_droplet.relax.tune_model`.

    Attributes
    ----------
    name : str
        For reports: the file's name, or the module's class name.
    mod : tvm.IRModule
        The Relax module; its weights are constants.
    entry : str
        The Relax function to run (``"main"``).
    inputs : tuple[TensorSpec, ...]
        What the entry function takes, in order, with static shapes.
    source : str
        ``"onnx"``, ``"relax"`` (a TVMScript file) or ``"torch"``.
    path : str or None
        The file loaded, if any.
    output_names : tuple[str, ...]
        The source's names of the outputs (ONNX graph outputs), if it names them.
    """

    name: str
    mod: object
    entry: str
    inputs: tuple[TensorSpec, ...]
    source: str
    path: str | None = None
    output_names: tuple[str, ...] = ()

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Inputs drawn from ``seed``: standard normal floats; integers in [0, 16) (a small range,
        so that an index input stays in range for most embeddings); booleans at random."""
        rng = np.random.default_rng(seed)
        out = []
        for spec in self.inputs:
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                out.append(rng.standard_normal(spec.shape).astype(dtype))
            elif dtype.kind in "iu":
                out.append(rng.integers(0, 16, size=spec.shape).astype(dtype))
            else:
                out.append(rng.integers(0, 2, size=spec.shape).astype(dtype))
        return out

    def random_arguments(self, seed: int = 0) -> list[np.ndarray]:
        """Every argument of the entry function: the inputs (weights are constants)."""
        return self.random_inputs(seed)


def parse_input_shape(text: str, option: str = "--input-shape") -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=D1,D2,...`` (e.g. ``input=1,3,224,224``) into a name and a shape.

    Raises
    ------
    ModelInputError
        When ``text`` is not of that form or a dimension is not an integer >= 1.
    """
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if sep and dims.strip() else ()
    except ValueError:
        shape = ()
    if not name.strip() or not shape or any(d < 1 for d in shape):
        raise ModelInputError(
            f"{option} must be NAME=D1,D2,... with every dimension an integer >= 1, got "
            f"{text!r}; e.g. {option} input=1,3,224,224"
        )
    return name.strip(), shape


def _onnx_modules():
    try:
        import onnx  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ModelInputError(
            'reading an ONNX file needs the onnx package: pip install "ms-droplet[onnx]"'
        ) from None
    return onnx


def load_onnx(
    path: str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    option: str = "--onnx",
) -> ImportedModel:
    """Load an ONNX file as a Relax module with static input shapes.

    Parameters
    ----------
    path : str
        The ``.onnx`` file.
    input_shapes : Optional[Mapping[str, Sequence[int]]]
        Shapes for inputs, by name: required for an input with a dynamic dimension (a
        ``dim_param`` such as ``"batch"``), optional otherwise (it must then agree with the
        file).
    option : str
        How the caller names the file, for messages.

    Returns
    -------
    ImportedModel
        Entry ``"main"``; the graph's inputs (initializers excluded) in order.

    Raises
    ------
    ModelInputError
        An unreadable file, one that is not an ONNX model, an input shape that is missing,
        unknown or contradicts the file, or an operator TVM's frontend does not convert (the
        message names the node).
    """
    onnx = _onnx_modules()
    if not os.path.isfile(path):
        raise ModelInputError(f"{option}: no such file {path!r}; give the path of a .onnx file")
    try:
        model = onnx.load(path)
    except Exception as err:  # noqa: BLE001 - protobuf raises several kinds
        raise ModelInputError(
            f"{option}: {path!r} is not a readable ONNX model ({type(err).__name__}: {err}); "
            "give a file written by onnx.save or torch.onnx.export"
        ) from None
    if not model.graph.node:
        raise ModelInputError(
            f"{option}: {path!r} holds no ONNX graph (no nodes); give a file written by "
            "onnx.save or torch.onnx.export"
        )
    given = {name: tuple(int(d) for d in shape) for name, shape in (input_shapes or {}).items()}
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ModelInputError(
            f"--input-shape: {path!r} has no input named {', '.join(map(repr, unknown))}; its "
            f"inputs are {', '.join(map(repr, names))}"
        )
    inputs = []
    for value in graph_inputs:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelInputError(
                f"{option}: input {value.name!r} of {path!r} is not a tensor; tune a model "
                "whose inputs are tensors"
            )
        if not tensor.HasField("shape") and value.name not in given:
            raise ModelInputError(
                f"{option}: input {value.name!r} of {path!r} has no shape in the file; give it "
                f"with --input-shape {value.name}=D1,D2,..."
            )
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in tensor.shape.dim]
        written = "(" + ", ".join(str(d) for d in dims) + ")"
        if value.name in given:
            shape = given[value.name]
            clash = tensor.HasField("shape") and (
                len(shape) != len(dims)
                or any(isinstance(d, int) and d != s for d, s in zip(dims, shape))
            )
            if clash:
                raise ModelInputError(
                    f"--input-shape: {value.name}={','.join(map(str, shape))} does not fit "
                    f"input {value.name!r} of {path!r}, whose shape is {written}; give one "
                    "dimension per axis and keep the fixed ones"
                )
        elif all(isinstance(d, int) for d in dims):
            shape = tuple(dims)
        else:
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
            raise ModelInputError(
                f"{option}: input {value.name!r} of {path!r} has a dynamic shape {written}; "
                f"MetaSchedule tunes fixed shapes: give it with --input-shape "
                f"{value.name}={example} (input_shapes={{{value.name!r}: ...}} in Python)"
            )
        inputs.append(TensorSpec(value.name, shape, dtype))
    _check_onnx_operators(model, path, option)
    # pylint: disable=import-outside-toplevel
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(
            model,
            shape_dict={spec.name: list(spec.shape) for spec in inputs},
            dtype_dict={spec.name: spec.dtype for spec in inputs},
        )
    except Exception as err:  # noqa: BLE001 - the frontend raises anything
        raise ModelInputError(
            f"{option}: TVM's ONNX frontend could not convert {path!r}: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}; simplify the "
            "model (e.g. onnxsim) or export it with another opset"
        ) from err
    return ImportedModel(
        name=os.path.basename(path),
        mod=mod,
        entry="main",
        inputs=tuple(inputs),
        source="onnx",
        path=path,
        output_names=tuple(o.name for o in model.graph.output),
    )


def _check_onnx_operators(model, path: str, option: str) -> None:
    """Name the first node whose operator TVM's frontend has no converter for."""
    # pylint: disable=import-outside-toplevel
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
            raise ModelInputError(
                f"{option}: node {node.name or '(unnamed)'!r} of {path!r} is a "
                f"{node.op_type}{domain}, an operator TVM's ONNX frontend does not convert; "
                "export the model without it (another opset, or a simpler form of the layer), "
                "or tune the parts that convert"
            )


def load_relax_script(path: str, *, option: str = "--relax") -> ImportedModel:
    """Load a Relax module written as TVMScript in a Python file.

    The file is run, and the one ``tvm.IRModule`` with a Relax function it defines (as
    ``@I.ir_module class Module: ...``) is taken; its entry is ``main``, or its only Relax
    function. Parameters must have static shapes.

    Raises
    ------
    ModelInputError
        A missing file, a file that fails to run, no or several such modules, no entry, or a
        parameter with a symbolic shape.
    """
    # pylint: disable=import-outside-toplevel
    import tvm
    from tvm import relax

    if not os.path.isfile(path):
        raise ModelInputError(f"{option}: no such file {path!r}; give a TVMScript (.py) file")
    try:
        namespace = runpy.run_path(path)
    except Exception as err:  # noqa: BLE001 - a user's script can raise anything
        raise ModelInputError(
            f"{option}: running {path!r} failed: {type(err).__name__}: {err}"
        ) from None
    found = {
        name: value
        for name, value in namespace.items()
        if isinstance(value, tvm.IRModule)
        and any(isinstance(f, relax.Function) for f in value.functions.values())
    }
    if len(found) != 1:
        what = ", ".join(sorted(found)) or "none"
        raise ModelInputError(
            f"{option}: {path!r} must define exactly one IRModule with a Relax function "
            f"(@I.ir_module class Module with @R.function def main), found {what}"
        )
    ((name, mod),) = found.items()
    functions = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function)]
    entry = "main" if "main" in functions else (functions[0] if len(functions) == 1 else None)
    if entry is None:
        raise ModelInputError(
            f"{option}: module {name} of {path!r} has Relax functions {', '.join(functions)} "
            "and none is named main; name the entry function main"
        )
    inputs = []
    for param in mod[entry].params:
        # TVM 0.27: a Relax parameter is a Var whose ``ty`` is a TensorType with a ShapeExpr.
        info = getattr(param, "ty", None)
        label = getattr(param, "name", None) or getattr(param, "name_hint", "?")
        values = getattr(getattr(info, "shape", None), "values", None)
        if values is None or not all(isinstance(getattr(v, "value", None), int) for v in values):
            raise ModelInputError(
                f"{option}: parameter {label!r} of {name}.{entry} in {path!r} has no static "
                f"shape ({info}); MetaSchedule tunes fixed shapes: write them as numbers, e.g. "
                "R.Tensor((1, 784), 'float32')"
            )
        inputs.append(TensorSpec(str(label), tuple(int(v.value) for v in values), info.dtype))
    return ImportedModel(
        name=os.path.basename(path),
        mod=mod,
        entry=entry,
        inputs=tuple(inputs),
        source="relax",
        path=path,
    )


def load_torch(module, example_inputs: Sequence) -> ImportedModel:
    """A PyTorch module as a Relax module, through ``torch.export`` and TVM's frontend.

    Parameters
    ----------
    module : torch.nn.Module
        Put in eval mode; its weights become constants.
    example_inputs : Sequence[array or torch.Tensor]
        One example per input: their shapes and dtypes are the model's (static).

    Raises
    ------
    ModelInputError
        When torch is not installed, or the module does not export or convert.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ModelInputError(
            "load_torch needs PyTorch, which ms-droplet does not install: pip install torch"
        ) from None
    # pylint: disable=import-outside-toplevel
    from tvm.relax.frontend.torch import from_exported_program

    examples = tuple(torch.as_tensor(np.asarray(x)) for x in example_inputs)
    try:
        exported = torch.export.export(module.eval(), examples)
        mod = from_exported_program(exported, keep_params_as_input=False)
    except Exception as err:  # noqa: BLE001 - either step raises anything
        raise ModelInputError(
            f"load_torch: {type(module).__name__} did not export or convert: "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from err
    inputs = tuple(
        TensorSpec(f"input{i}", tuple(x.shape), str(x.numpy().dtype))
        for i, x in enumerate(examples)
    )
    return ImportedModel(
        name=type(module).__name__, mod=mod, entry="main", inputs=inputs, source="torch"
    )


def onnxruntime_outputs(path: str, arguments: Sequence[np.ndarray], inputs) -> list[np.ndarray]:
    """Run the ONNX file with ONNX Runtime (CPU) on ``arguments`` (one per input spec in
    ``inputs``, in order); its outputs in the graph's order."""
    try:
        import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ModelInputError(
            'comparing with ONNX Runtime needs it: pip install "ms-droplet[onnx]"'
        ) from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {spec.name: np.asarray(arg) for spec, arg in zip(inputs, arguments)}
    return [np.asarray(out) for out in session.run(None, feed)]


@dataclass(frozen=True)
class ReferenceComparison:
    """The compiled model's outputs against the source framework's
    (:func:`compare_with_reference`).

    ``worst`` names the output furthest beyond its tolerance (or closest to it when every output
    is within)."""

    reference: str
    max_abs_diff: float
    max_rel_diff: float
    worst: str
    rtol: float
    atol: float
    ok: bool

    def message(self) -> str:
        """One line: which output, how far, against what."""
        verdict = "matches" if self.ok else "differs from"
        return (
            f"output {self.worst!r} of the compiled model {verdict} {self.reference}'s "
            f"(rtol={self.rtol:g}, atol={self.atol:g}): largest absolute difference "
            f"{self.max_abs_diff:.3g}, relative {self.max_rel_diff:.3g} over all outputs"
        )


def compare_with_reference(
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    *,
    names: Sequence[str] = (),
    reference: str = "ONNX Runtime",
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> ReferenceComparison:
    """Compare the compiled model's outputs ``actual`` with the reference framework's
    ``expected`` (:func:`ms_droplet.relax.evaluate.compare_arrays`: ``numpy.allclose`` each).

    Raises
    ------
    NumericsMismatchError
        When the number of outputs or an output's shape differs (values that differ are
        reported in the result, ``ok=False``).
    """
    from .evaluate import compare_arrays  # pylint: disable=import-outside-toplevel

    try:
        result = compare_arrays(expected, actual, names=names, rtol=rtol, atol=atol)
    except ValueError as err:
        raise NumericsMismatchError(
            f"the compiled model does not return what {reference} does: {err}"
        ) from None
    return ReferenceComparison(
        reference, result.max_abs_diff, result.max_rel_diff, result.worst, rtol, atol, result.ok
    )


def reference_comparison(
    model: ImportedModel,
    executable,
    arguments: Sequence[np.ndarray],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> ReferenceComparison:
    """Run the compiled ``executable`` of an ONNX ``model`` and ONNX Runtime on the same
    ``arguments`` and compare their outputs (see :func:`compare_with_reference`).

    Raises
    ------
    ModelInputError
        When ``model`` is not from an ONNX file, or onnxruntime is not installed.
    """
    from .evaluate import run_model  # pylint: disable=import-outside-toplevel

    if model.source != "onnx" or model.path is None:
        raise ModelInputError(
            f"{model.name}: only a model loaded by load_onnx has ONNX Runtime as its reference"
        )
    expected = onnxruntime_outputs(model.path, arguments, model.inputs)
    actual = run_model(executable, model.entry, arguments)
    return compare_with_reference(expected, actual, names=model.output_names, rtol=rtol, atol=atol)


def check_against_onnxruntime(
    model: ImportedModel,
    executable,
    *,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> ReferenceComparison:
    """:func:`reference_comparison` on :meth:`ImportedModel.random_inputs` of ``seed``.

    Raises
    ------
    NumericsMismatchError
        When an output differs beyond tolerance: the message names the output and the largest
        difference.
    """
    result = reference_comparison(
        model, executable, model.random_inputs(seed), rtol=rtol, atol=atol
    )
    if not result.ok:
        raise NumericsMismatchError(result.message())
    return result
