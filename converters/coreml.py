"""Core ML: torch.export -> coremltools ML Program (fp16) with enumerated (batch, sequence) shapes.

Enumerated shapes rather than an open range: the Neural Engine only runs shapes Core ML can
specialise for at compile time. Core ML before iOS 18 / macOS 15 allows a single enumerated-shape
input, and this graph has two or three token inputs, so flexible shapes need iOS 18; one fixed
shape works from iOS 16.

Core ML predicts only on macOS. On Linux this module still converts, inspects the saved program,
and emulates fp16 two ways: the EmbeddingGraph in float16 PyTorch (``emulate``), and the saved
program's own ops run by coremltools' reference implementations (``load_program_executor``).
Both are emulations: neither is the Core ML runtime, the GPU or the Neural Engine.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from converters import Conversion, Shape, manifest_shapes
from pipelines.errors import ArtifactError, ConfigError, require
from pipelines.graph import EmbeddingGraph, GraphSpec, example_inputs

MODEL_FILE = "model.mlpackage"
ADDITIVE_MASK = True  # transformers' own mask code emits new_ones, which coremltools cannot convert
MAX_ENUMERATED_SHAPES = 128  # Core ML's limit
MULTI_INPUT_ENUMERATION_TARGET = "iOS18"
EMULATION_LABEL = "emulated"  # every emulated result says so: it is not a Core ML prediction


@dataclass(frozen=True)
class CoreMLOptions:
    # Every (batch, sequence) pair becomes one enumerated shape; inputs are padded up to the next bucket.
    sequence_buckets: tuple[int, ...] = (32, 64, 128, 256)
    batch_sizes: tuple[int, ...] = (1,)
    precision: Literal["fp16", "fp32"] = "fp16"
    minimum_deployment_target: str = MULTI_INPUT_ENUMERATION_TARGET
    # MIL op types kept in fp32 under fp16 (e.g. "layer_norm"), for when fp16 parity needs it.
    fp32_ops: tuple[str, ...] = ()

    def shape_pairs(self) -> list[tuple[int, int]]:
        return [(b, s) for b in sorted(set(self.batch_sizes)) for s in sorted(set(self.sequence_buckets))]


def _shape(batch: int, sequence: int) -> Shape:
    return Shape(batch, sequence, f"{batch}x{sequence}")  # all shapes run through the one model file


def native_prediction_available() -> bool:
    """True where coremltools can call the Core ML framework (macOS with its native extension)."""
    if sys.platform != "darwin":
        return False
    require("coremltools", "apple")
    from coremltools.models import model as ct_model

    return ct_model._MLModelProxy is not None


def _target(ct: Any, name: str) -> Any:
    try:
        return getattr(ct.target, name)
    except AttributeError:
        known = ", ".join(t.name for t in ct.target)
        raise ConfigError(f"Core ML deployment target {name!r} is unknown (known: {known})") from None


def check_options(options: CoreMLOptions, spec: GraphSpec) -> None:
    """Raise ConfigError before any export work if the options cannot produce a valid model."""
    ct = require("coremltools", "apple")
    if not options.sequence_buckets or not options.batch_sizes:
        raise ConfigError("Core ML needs at least one sequence bucket and one batch size")
    if min(options.sequence_buckets) < 2 or min(options.batch_sizes) < 1:
        raise ConfigError("Core ML sequence buckets must be >= 2 tokens and batch sizes >= 1")
    if max(options.sequence_buckets) > spec.max_seq_length:
        raise ConfigError(
            f"sequence bucket {max(options.sequence_buckets)} exceeds the model's max_seq_length "
            f"{spec.max_seq_length}; the tokenizer never produces longer inputs"
        )
    count = len(options.shape_pairs())
    if count > MAX_ENUMERATED_SHAPES:
        raise ConfigError(f"{count} (batch, sequence) shapes; Core ML allows at most {MAX_ENUMERATED_SHAPES}")
    if options.precision not in ("fp16", "fp32"):
        raise ConfigError(f"Core ML precision {options.precision!r} is not supported (fp16, fp32)")
    target = _target(ct, options.minimum_deployment_target)
    if count > 1 and len(spec.input_names) > 1 and target < ct.target.iOS18:
        raise ConfigError(
            f"{len(spec.input_names)} inputs with enumerated shapes need minimum_deployment_target "
            f"{MULTI_INPUT_ENUMERATION_TARGET} or later (Core ML before it allows one such input); "
            f"use {MULTI_INPUT_ENUMERATION_TARGET}, or a single batch size and sequence bucket"
        )


def _export(graph: EmbeddingGraph, spec: GraphSpec, options: CoreMLOptions) -> torch.export.ExportedProgram:
    """torch.export with symbolic dims only where several sizes are enumerated (a single size stays static)."""
    batches, sequences = sorted(set(options.batch_sizes)), sorted(set(options.sequence_buckets))
    dims: dict[int, torch.export.Dim] = {}
    if len(batches) > 1:
        dims[0] = torch.export.Dim("batch", min=batches[0], max=batches[-1])
    if len(sequences) > 1:
        dims[1] = torch.export.Dim("sequence", min=sequences[0], max=sequences[-1])
    dynamic = {name: dims for name in spec.input_names} if dims else None
    with torch.no_grad():
        exported = torch.export.export(graph, example_inputs(spec, batches[-1], sequences[-1]), dynamic_shapes=dynamic)
    # coremltools converts only the ATEN/EDGE dialect, so decompose to core ATen first.
    return exported.run_decompositions({})


def _compute_precision(ct: Any, options: CoreMLOptions) -> Any:
    if options.precision == "fp32":
        return ct.precision.FLOAT32
    keep = frozenset(options.fp32_ops)
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in keep)


def convert(
    graph: EmbeddingGraph, spec: GraphSpec, out_dir: Path, options: CoreMLOptions, calibration: Any = None
) -> Conversion:
    check_options(options, spec)
    ct = require("coremltools", "apple")
    pairs = options.shape_pairs()
    started = time.perf_counter()
    exported = _export(graph, spec, options)

    def input_shape() -> Any:  # a fresh object per input
        return (
            ct.EnumeratedShapes(shapes=[list(p) for p in pairs], default=list(pairs[0])) if len(pairs) > 1 else pairs[0]
        )

    with warnings.catch_warnings():
        # clamp(min=eps) lowers to clip(beta=float32 max), which becomes +inf in fp16 (harmless);
        # real weight overflow is caught by inspect_spec's non-finite weight check instead.
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
        mlmodel = ct.convert(
            exported,
            # Core ML has no int64 I/O; int32 holds any vocabulary id.
            inputs=[ct.TensorType(name=name, shape=input_shape(), dtype=np.int32) for name in spec.input_names],
            outputs=[ct.TensorType(name=spec.output_name, dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=_compute_precision(ct, options),
            minimum_deployment_target=_target(ct, options.minimum_deployment_target),
        )
    mlmodel.short_description = f"Sentence embedding ({spec.embedding_dim} dims, {spec.pooling} pooling)"
    mlmodel.user_defined_metadata.update(
        {"embedding_dim": str(spec.embedding_dim), "normalized": str(spec.normalized).lower()}
    )
    mlmodel.save(str(out_dir / MODEL_FILE))
    _make_reproducible(out_dir / MODEL_FILE)
    seconds = time.perf_counter() - started
    summary = summarize_program(out_dir / MODEL_FILE)
    return Conversion(
        model_file=MODEL_FILE,
        precision=options.precision,
        runtime="coreml",
        shapes=[_shape(b, s) for b, s in pairs],
        input_dtype="int32",
        details={
            "exporter": "torch.export + run_decompositions",
            "converter": f"coremltools {ct.__version__}",
            "model_type": summary["model_type"],
            "minimum_deployment_target": options.minimum_deployment_target,
            "fp32_ops": list(options.fp32_ops),
            "conversion_seconds": round(seconds, 1),
            "package_bytes": summary["package_bytes"],
            "op_counts": summary["op_counts"],
            "op_precisions": summary["op_precisions"],
            "weight_dtypes": summary["weight_dtypes"],
        },
    )


def _make_reproducible(package: Path) -> None:
    """Same model, same bytes: coremltools writes random item UUIDs, today's date and proto maps in hash order."""
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    items = manifest["itemInfoEntries"]
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"])) for old, entry in items.items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in items.items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True), encoding="utf-8")
    spec_path = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date", None)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


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


def inspect_spec(artifact_dir: Path, manifest: dict) -> dict[str, Any]:
    """Structural checks of the artifact's Core ML program against its manifest; raise ArtifactError on a mismatch.

    Manifest keys used: embedding_dim and inputs[].name (required); file, shapes, precision (when present).
    """
    model_path = Path(artifact_dir) / manifest.get("file", MODEL_FILE)
    if not model_path.is_dir():
        raise ArtifactError(f"{model_path.name} is missing from {artifact_dir}; the Core ML artifact is incomplete")
    summary = summarize_program(model_path)
    name = model_path.name
    if summary["model_type"] != "mlProgram":
        raise ArtifactError(f"{name} is a {summary['model_type']} model, not an ML Program")
    inputs, outputs = summary["inputs"], summary["outputs"]
    expected_names = [item["name"] for item in manifest["inputs"]]
    if [i["name"] for i in inputs] != expected_names:
        raise ArtifactError(f"{name} inputs {[i['name'] for i in inputs]} differ from the manifest's {expected_names}")
    if any(i["dtype"] != "int32" for i in inputs):
        raise ArtifactError(f"{name} inputs must be int32, found {[i['dtype'] for i in inputs]}")
    if any(i["shapes"] != inputs[0]["shapes"] for i in inputs):
        raise ArtifactError(f"{name} inputs enumerate different shapes; every token input must share them")
    if "shapes" in manifest and manifest["shapes"] is not None:
        listed = sorted([s["batch"], s["sequence"]] for s in manifest["shapes"])
        if listed != inputs[0]["shapes"]:
            raise ArtifactError(f"{name} enumerates shapes {inputs[0]['shapes']}, the manifest lists {listed}")
    if len(outputs) != 1 or outputs[0]["dims"][-1:] != [int(manifest["embedding_dim"])]:
        found = [o["dims"] for o in outputs]
        raise ArtifactError(f"{name} outputs {found}; expected one (batch, {manifest['embedding_dim']}) embedding")
    if manifest.get("precision") == "fp16" and not summary["op_precisions"].get("float16"):
        raise ArtifactError(f"{name} is recorded as fp16 but no op computes in float16")
    bad = _non_finite_weights(model_path)
    if bad:
        raise ArtifactError(f"{name} has non-finite weights ({', '.join(bad[:3])}): values overflowed fp16")
    summary["shapes"] = inputs[0]["shapes"]
    return summary


# ---- runners ----


def _shapes(summary: dict[str, Any]) -> list[Shape]:
    return [_shape(b, s) for b, s in summary["inputs"][0]["shapes"]]


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


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> CoreMLRunner | Fp16EmulationRunner:
    """Core ML's own prediction on macOS; elsewhere the labelled fp16 emulation. Core ML picks its own threads."""
    if not native_prediction_available():
        return Fp16EmulationRunner(artifact_dir, manifest)
    return CoreMLRunner(Path(artifact_dir) / manifest.get("file", MODEL_FILE))


def structural_checks(artifact_dir: Path, manifest: dict, encoder_factory: Callable[..., Any]) -> dict[str, Any]:
    """What Linux can check of the real artifact: its spec, and its own program run on the test vectors."""
    from pipelines.verify import test_vector_min_cosine

    summary = inspect_spec(artifact_dir, manifest)
    checks: dict[str, Any] = {
        "spec": {k: summary[k] for k in ("model_type", "shapes", "op_precisions") if k in summary},
        "native_prediction": native_prediction_available(),
    }
    if not native_prediction_available():
        executor_encoder = encoder_factory(artifact_dir, runner=load_program_executor(artifact_dir, manifest))
        checks["program_test_vectors_min_cosine"] = round(test_vector_min_cosine(artifact_dir, executor_encoder), 6)
        checks["program_execution"] = "coremltools reference ops, fp16 storage between ops (emulated)"
    return checks


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
    """Off macOS: the source graph in float16 PyTorch, fed through the artifact's own buckets. Emulated."""

    emulated = True
    description = "fp16 PyTorch emulation (Core ML prediction needs macOS)"

    def __init__(self, artifact_dir: Path, manifest: dict) -> None:
        from pipelines.graph import build_graph
        from pipelines.model_source import load_sentence_transformer, resolve_model
        from pipelines.pca import Projection

        st_model = load_sentence_transformer(resolve_model(manifest["model"]["source"]))
        pca = manifest.get("pca")
        projection = Projection.load(Path(artifact_dir) / pca["file"]) if pca else None
        self.graph = half_precision_copy(build_graph(st_model, projection, additive_mask=True))
        self.shapes: list[Shape] | None = manifest_shapes(manifest)

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
    """fp32 torch kernels for the ops whose coremltools reference is slow: numpy has no fp16 BLAS, and gelu
    calls math.erf per element. The caller rounds each result to the op's declared dtype (fp16 products
    are exact in fp32, so this is fp16 storage with fp32 accumulation)."""

    def __init__(self) -> None:
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.by_op_type: dict[str, Callable[[Any], np.ndarray]] = {
            "linear": self.linear,
            "matmul": self.matmul,
            "gelu": self.gelu,
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


def load_program_executor(artifact_dir: Path, manifest: dict) -> ProgramExecutor:
    """The artifact's program run on this machine by coremltools' reference ops (emulated, not Core ML)."""
    return ProgramExecutor(Path(artifact_dir) / manifest.get("file", MODEL_FILE))
