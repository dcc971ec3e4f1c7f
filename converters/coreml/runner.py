"""Running and inspecting a Core ML artifact. Core ML predicts only on macOS; elsewhere the saved spec is
inspected, the saved program runs op by op on coremltools' reference ops (``ProgramExecutor``), and the
graph runs in float16 PyTorch (``Fp16EmulationRunner``). Both stand-ins are labelled emulated.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.base import Shape, StructuralReport
from converters.coreml import EMULATION_LABEL, enumerated_shape
from core.errors import ArtifactError, require
from core.graph import EmbeddingGraph, build_graph
from core.manifest import Artifact
from core.model_source import load_sentence_transformer, resolve_model
from core.pca import Projection


def native_prediction_available() -> bool:
    """True where coremltools can call the Core ML framework (macOS with its native extension)."""
    if sys.platform != "darwin":
        return False
    require("coremltools", "apple")
    from coremltools.models import model as ct_model

    return ct_model._MLModelProxy is not None


# ---- inspection (reads the saved spec; works on Linux) ----


def _dtype_name(proto_enum: Any, value: int) -> str:
    return proto_enum.Name(value).lower()


def _input_feature(feature: Any, proto: Any) -> dict[str, Any]:
    array = feature.type.multiArrayType
    enumerated = sorted(tuple(s.shape) for s in array.enumeratedShapes.shapes) or [tuple(array.shape)]
    return {
        "name": feature.name,
        "dtype": _dtype_name(proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType, array.dataType),
        "shapes": [list(s) for s in enumerated],
        "default": list(array.shape),
    }


def _dims(tensor_type: Any) -> list[int | None]:
    """Tensor dims from the program; None where symbolic (the model description omits a shape with one)."""
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor_type.dimensions]


def summarize_program(model_path: Path) -> dict[str, Any]:
    """Facts from the saved .mlpackage: type, I/O, op counts by type and by compute precision, weights."""
    ct = require("coremltools", "apple")
    from coremltools import proto
    from coremltools.proto import MIL_pb2

    model_spec = ct.utils.load_spec(str(model_path))
    model_type = model_spec.WhichOneof("Type")
    summary: dict[str, Any] = {
        "model_type": model_type,
        "specification_version": model_spec.specificationVersion,
        "inputs": [_input_feature(f, proto) for f in model_spec.description.input],
        "package_bytes": sum(p.stat().st_size for p in Path(model_path).rglob("*") if p.is_file()),
    }
    if model_type != "mlProgram":
        return summary
    function = model_spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    output_types: dict[str, Any] = {}
    op_counts: Counter[str] = Counter()
    precisions: Counter[str] = Counter()
    by_precision: dict[str, Counter[str]] = {}
    weights: Counter[str] = Counter()
    for op in block.operations:
        op_counts[op.type] += 1
        output_types.update({out.name: out.type.tensorType for out in op.outputs})
        dtype = _dtype_name(MIL_pb2.DataType, op.outputs[0].type.tensorType.dataType) if op.outputs else ""
        if op.type == "const":
            if op.attributes["val"].WhichOneof("value") == "blobFileValue":
                weights[dtype] += 1
        elif op.type != "cast" and dtype.startswith(("float", "bfloat")):
            # The precision an op computes in is the dtype of its float output; casts only convert.
            precisions[dtype] += 1
            by_precision.setdefault(dtype, Counter())[op.type] += 1
    summary.update(
        {
            "outputs": [
                {
                    "name": name,
                    "dtype": _dtype_name(MIL_pb2.DataType, output_types[name].dataType),
                    "dims": _dims(output_types[name]),
                }
                for name in block.outputs
            ],
            "op_counts": dict(sorted(op_counts.items())),
            "op_precisions": dict(sorted(precisions.items())),
            "ops_by_precision": {k: dict(sorted(v.items())) for k, v in sorted(by_precision.items())},
            "weight_dtypes": dict(sorted(weights.items())),
        }
    )
    return summary


def _non_finite_weights(model_path: Path) -> list[str]:
    """Names of weight tensors holding inf/NaN: an fp32 value past fp16's range (65504) becomes inf."""
    return [
        op.outputs[0].name
        for op in _load_program(model_path).functions["main"].operations
        if op.op_type == "const"
        and isinstance(op.outputs[0].val, np.ndarray)
        and op.outputs[0].val.size > 1
        and np.issubdtype(op.outputs[0].val.dtype, np.floating)
        and not np.isfinite(op.outputs[0].val).all()
    ]


def inspect_spec(artifact: Artifact) -> dict[str, Any]:
    """Structural checks of the artifact's Core ML program against its manifest; raise ArtifactError on a mismatch.

    Manifest keys used: embedding_dim and inputs[].name (required); file, shapes, precision (when present).
    """
    manifest, model_path = artifact.manifest, artifact.model_path
    if not model_path.is_dir():
        raise ArtifactError(f"{model_path.name} is missing from {artifact.folder}; the Core ML artifact is incomplete")
    summary = summarize_program(model_path)
    name = model_path.name
    if summary["model_type"] != "mlProgram":
        raise ArtifactError(f"{name} is a {summary['model_type']} model, not an ML Program")
    inputs, outputs = summary["inputs"], summary["outputs"]
    expected_names = [item.name for item in manifest.inputs]
    if [i["name"] for i in inputs] != expected_names:
        raise ArtifactError(f"{name} inputs {[i['name'] for i in inputs]} differ from the manifest's {expected_names}")
    if any(i["dtype"] != "int32" for i in inputs):
        raise ArtifactError(f"{name} inputs must be int32, found {[i['dtype'] for i in inputs]}")
    if any(i["shapes"] != inputs[0]["shapes"] for i in inputs):
        raise ArtifactError(f"{name} inputs enumerate different shapes; every token input must share them")
    if manifest.shapes is not None:
        listed = sorted([s.batch, s.sequence] for s in manifest.shapes)
        if listed != inputs[0]["shapes"]:
            raise ArtifactError(f"{name} enumerates shapes {inputs[0]['shapes']}, the manifest lists {listed}")
    if len(outputs) != 1 or outputs[0]["dims"][-1:] != [manifest.embedding_dim]:
        found = [o["dims"] for o in outputs]
        raise ArtifactError(f"{name} outputs {found}; expected one (batch, {manifest.embedding_dim}) embedding")
    if manifest.precision == "fp16" and not summary["op_precisions"].get("float16"):
        raise ArtifactError(f"{name} is recorded as fp16 but no op computes in float16")
    bad = _non_finite_weights(model_path)
    if bad:
        raise ArtifactError(f"{name} has non-finite weights ({', '.join(bad[:3])}): values overflowed fp16")
    summary["shapes"] = inputs[0]["shapes"]
    return summary


# ---- runners ----


def _shapes(summary: dict[str, Any]) -> list[Shape]:
    return [enumerated_shape(b, s) for b, s in summary["inputs"][0]["shapes"]]


class CoreMLRunner:
    """Core ML's own prediction (macOS only)."""

    def __init__(self, model_path: Path) -> None:
        ct = require("coremltools", "apple")
        summary = summarize_program(model_path)
        self.shapes: list[Shape] | None = _shapes(summary)
        self.input_names = [i["name"] for i in summary["inputs"]]
        self.output_name = summary["outputs"][0]["name"]
        self.model = ct.models.MLModel(str(model_path), compute_units=ct.ComputeUnit.ALL)

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        feeds = {name: inputs[name].astype(np.int32) for name in self.input_names}
        return np.asarray(self.model.predict(feeds)[self.output_name], dtype=np.float32)


def load_runner(artifact: Artifact, threads: int | None) -> CoreMLRunner | Fp16EmulationRunner:
    """Core ML's own prediction on macOS; elsewhere the labelled fp16 emulation. Core ML picks its own threads."""
    if not native_prediction_available():
        return Fp16EmulationRunner(artifact)
    return CoreMLRunner(artifact.model_path)


def structural_checks(artifact: Artifact) -> StructuralReport:
    """What Linux can check of the real artifact: its spec, and (off macOS) its own program, op by op."""
    summary = inspect_spec(artifact)
    native = native_prediction_available()
    facts: dict[str, Any] = {
        "spec": {k: summary[k] for k in ("model_type", "shapes", "op_precisions") if k in summary},
        "native_prediction": native,
    }
    if native:
        return StructuralReport(facts)
    facts["program_execution"] = "coremltools reference ops, fp16 storage between ops (emulated)"
    return StructuralReport(facts, program_runners={"program": load_program_executor(artifact)})


# ---- fp16 emulation on Linux (labelled "emulated": not Core ML) ----


def half_precision_copy(graph: EmbeddingGraph) -> EmbeddingGraph:
    """The graph in float16: a proxy for an fp16 Core ML program (a copy: the source model keeps fp32)."""
    return copy.deepcopy(graph).half().eval()


def emulate(half_graph: EmbeddingGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run a ``half_precision_copy`` on CPU. Returns float32 (B, dim)."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    tensors = [torch.from_numpy(np.asarray(inputs[n], dtype=np.int64)) for n in names if n in inputs]
    with torch.no_grad():
        return half_graph(*tensors).float().numpy()


class Fp16EmulationRunner:
    """Off macOS: the source graph in float16 PyTorch. Emulated.

    It takes any batch and length (``shapes`` None) rather than the artifact's batch-1 buckets: padding is
    masked, so batching changes the math of no real token, and parity over STS-B dev runs many times faster.
    The saved program itself runs on its enumerated shapes in ``structural_checks``."""

    emulated = True
    description = "fp16 PyTorch emulation (Core ML prediction needs macOS)"

    def __init__(self, artifact: Artifact) -> None:
        st_model = load_sentence_transformer(resolve_model(artifact.manifest.model.source))
        pca = artifact.manifest.pca
        projection = Projection.load(artifact.folder / pca.file) if pca else None
        self.graph = half_precision_copy(build_graph(st_model, projection, additive_mask=True))
        self.shapes: list[Shape] | None = None

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        return emulate(self.graph, inputs)


def _load_program(model_path: Path) -> Any:
    ct = require("coremltools", "apple")
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    model = ct.models.MLModel(str(model_path), skip_model_load=True)
    model_spec = model.get_spec()
    return load_mil(model_spec, model_spec.specificationVersion, file_weights_dir=model.weights_dir)


def _f32(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


class _FastKernels:
    """fp32 torch kernels for the ops whose coremltools reference is slow or missing: numpy has no fp16 BLAS,
    gelu calls math.erf per element, and silu has no reference implementation. The caller rounds each result
    to the op's declared dtype (fp16 products are exact in fp32, so this is fp16 storage with fp32
    accumulation)."""

    def __init__(self) -> None:
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.by_op_type: dict[str, Callable[[Any], np.ndarray]] = {
            "linear": self.linear,
            "matmul": self.matmul,
            "gelu": self.gelu,
            "silu": self.silu,
        }

    def linear(self, op: Any) -> np.ndarray:
        if op.name not in self._weights:
            self._weights[op.name] = (_f32(op.weight.val), _f32(op.bias.val) if op.bias is not None else None)
        weight, bias = self._weights[op.name]
        return torch.nn.functional.linear(_f32(op.x.val), weight, bias).numpy()

    def matmul(self, op: Any) -> np.ndarray:
        x, y = _f32(op.x.val), _f32(op.y.val)
        if op.transpose_x.val:
            x = x.transpose(-1, -2)
        if op.transpose_y.val:
            y = y.transpose(-1, -2)
        return torch.matmul(x, y).numpy()

    def silu(self, op: Any) -> np.ndarray:
        return torch.nn.functional.silu(_f32(op.x.val)).numpy()

    def gelu(self, op: Any) -> np.ndarray:
        x, mode = _f32(op.x.val), op.mode.val
        if mode == "SIGMOID_APPROXIMATION":
            return (x * torch.sigmoid(1.702 * x)).numpy()
        return torch.nn.functional.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none").numpy()


class ProgramExecutor:
    """Runs the saved ML Program op by op with coremltools' numpy reference implementations (value_inference;
    linear, matmul and gelu through _FastKernels).

    Each op's result is rounded to the dtype the program declares for it, so fp16 storage between ops
    is reproduced; what happens inside an op on the GPU or Neural Engine is not. Labelled "emulated".
    """

    label = EMULATION_LABEL

    def __init__(self, model_path: Path) -> None:
        from coremltools.converters.mil.mil import types

        self._types = types
        summary = summarize_program(model_path)
        self.shapes: list[Shape] | None = _shapes(summary)
        self.input_names = [i["name"] for i in summary["inputs"]]
        self.function = _load_program(model_path).functions["main"]
        self._kernels = _FastKernels().by_op_type
        for op in self.function.operations:
            if op.blocks:
                raise ArtifactError(f"{model_path.name} has control flow ({op.op_type}); it cannot be emulated")
            # numpy 2 refuses np.bool_ where it wants a Python bool (keepdims=...); the proto loader makes np.bool_.
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.bool_):
                op.outputs[0]._sym_val.val = bool(op.outputs[0].val)

    def _set(self, var: Any, sym_type: Any, value: Any) -> None:
        types = self._types
        primitive = sym_type.get_primitive() if types.is_tensor(sym_type) else sym_type
        holder = sym_type()
        holder.val = np.asarray(value).astype(types.nptype_from_builtin(primitive))
        if not types.is_tensor(sym_type):
            holder.val = holder.val.item()  # a Python scalar, as the op definitions expect
        var._sym_type = sym_type
        var._sym_val = holder

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        types = self._types
        for name in self.input_names:
            array = np.asarray(inputs[name], dtype=np.int32)
            if array.shape not in {(s.batch, s.sequence) for s in self.shapes}:  # Core ML refuses other shapes
                raise ArtifactError(f"input shape {array.shape} is not one of the enumerated shapes {self.shapes}")
            self._set(self.function.inputs[name], types.tensor(types.int32, array.shape), array)
        logger = logging.getLogger("coremltools")
        level = logger.level
        logger.setLevel(logging.ERROR)  # value_inference warns on every float64 -> fp16 store
        try:
            for op in self.function.operations:
                if op.op_type == "const":
                    continue
                out_types = op.type_inference()
                out_types = out_types if isinstance(out_types, tuple) else (out_types,)
                kernel = self._kernels.get(op.op_type)
                try:
                    values = kernel(op) if kernel else op.value_inference()
                except NotImplementedError as exc:
                    raise ArtifactError(f"op {op.op_type} ({op.name}) has no reference implementation: {exc}") from None
                values = values if isinstance(values, tuple | list) else (values,)
                for var, sym_type, value in zip(op.outputs, out_types, values, strict=True):
                    self._set(var, sym_type, value)
        finally:
            logger.setLevel(level)
        return np.asarray(self.function.outputs[0].val, dtype=np.float32)


def load_program_executor(artifact: Artifact) -> ProgramExecutor:
    """The artifact's program run on this machine by coremltools' reference ops (emulated, not Core ML)."""
    return ProgramExecutor(artifact.model_path)
