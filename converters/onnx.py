"""ONNX: export, transformer fusions, int8 (dynamic / static QDQ) and fp16, and the ONNX Runtime runner.

Export uses the legacy TorchScript exporter (opset 17) with eager attention and the 2D mask
handled by transformers: that is the pattern ONNX Runtime's BERT fusions match (the dynamo
export and a hand-built float mask both defeat the Attention fusion).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch

from converters import Conversion, Shape
from pipelines.graph import EmbeddingGraph, GraphSpec, example_inputs

OPSET = 17
ADDITIVE_MASK = False  # keep transformers' own 2D-mask pattern: ONNX Runtime's Attention fusion matches it
FUSED_OP_TYPES = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
                  "LayerNormalization", "QAttention", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear",
                  "MatMulNBits")


@dataclass(frozen=True)
class FusionConfig:
    """ONNX Runtime transformer fusions (onnxruntime.transformers.optimizer), toggled one by one."""

    attention: bool = True
    skip_layer_norm: bool = True
    embed_layer_norm: bool = True
    bias_gelu: bool = True
    gelu_approximation: bool = False  # FastGelu changes numerics; off by default


@dataclass(frozen=True)
class QuantConfig:
    """int8 settings. Per-channel weights matter: per-tensor loses about 3 points of mean cosine here."""

    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    # None: pick from the CPU (VNNI: full-range s8 weights; AVX2 without VNNI: reduce_range avoids u8*s8 overflow).
    reduce_range: bool | None = None
    # Regular expressions over MatMul node names kept in fp32 (accuracy-aware exclusions).
    keep_fp32: tuple[str, ...] = ()
    calibration_sentences: int = 256  # static only


@dataclass(frozen=True)
class OnnxOptions:
    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    fuse: bool = True
    fusion: FusionConfig = field(default_factory=FusionConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    # fp16: op types left in fp32 if parity needs it (LayerNorm sums can pass fp16's range).
    fp16_keep_fp32_ops: tuple[str, ...] = ()


def cpu_isa() -> str:
    """The int8-relevant ISA of this CPU, from /proc/cpuinfo flags (Linux); 'unknown' elsewhere."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def export_fp32(graph: EmbeddingGraph, spec: GraphSpec, path: Path) -> None:
    dynamic = {name: {0: "batch", 1: "sequence"} for name in spec.input_names}
    dynamic[spec.output_name] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example_inputs(spec, 2, 16),
            str(path),
            input_names=list(spec.input_names),
            output_names=[spec.output_name],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def fuse(model_path: Path, out_path: Path, spec: GraphSpec, config: FusionConfig) -> dict[str, int]:
    """Offline transformer fusions; returns the fused-op counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = config.attention
    options.enable_skip_layer_norm = config.skip_layer_norm
    options.enable_embed_layer_norm = config.embed_layer_norm
    options.enable_bias_gelu = config.bias_gelu
    options.enable_gelu_approximation = config.gelu_approximation
    optimized = optimize_model(
        str(model_path),
        model_type="bert",
        num_heads=spec.num_attention_heads,
        hidden_size=spec.hidden_size,
        optimization_options=options,
        opt_level=0,  # graph fusions only; ONNX Runtime applies its own online passes at load time
    )
    optimized.save_model_to_file(str(out_path))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def _matmul_weight_names(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in initializers]


def quantize_int8(
    model_path: Path,
    out_path: Path,
    spec: GraphSpec,
    config: QuantConfig,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict:
    """Quantize weights of MatMuls with constant weights to int8; returns what was done for the manifest."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    isa = cpu_isa()
    reduce_range = config.reduce_range if config.reduce_range is not None else isa not in ("avx512_vnni", "avx_vnni")
    model = onnx.load(str(model_path))
    excluded = [n for n in _matmul_weight_names(model) if any(re.search(p, n) for p in config.keep_fp32)]
    common = dict(
        per_channel=config.per_channel,
        reduce_range=reduce_range,
        nodes_to_exclude=excluded,
        # Gather: the word-embedding table is most of the file; int8 rows cost no measurable parity.
        op_types_to_quantize=["MatMul", "Attention", "Gemm", "Gather", "EmbedLayerNormalization"],
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if config.mode == "dynamic":
        quantize_dynamic(str(model_path), str(out_path), weight_type=QuantType.QInt8, **common)
    else:
        if not calibration:
            raise ValueError("static quantization needs calibration batches")

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self._iter = iter(calibration)

            def get_next(self):
                return next(self._iter, None)

        quantize_static(
            str(model_path),
            str(out_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            **common,
        )
    return {
        "mode": config.mode,
        "weight_type": "int8",
        "per_channel": config.per_channel,
        "reduce_range": reduce_range,
        "isa": isa,
        "kept_fp32": excluded,
    }


def to_fp16(model_path: Path, out_path: Path, spec: GraphSpec, keep_fp32_ops: tuple[str, ...]) -> None:
    """fp16 weights and compute with fp32 inputs/outputs, via ONNX Runtime's transformer converter
    (onnxconverter-common 1.16 writes an invalid model for this graph: a Cast type mismatch)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(model_path)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=list(keep_fp32_ops) or None)
    model.save_model_to_file(str(out_path))


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: OnnxOptions,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> Conversion:
    details: dict = {"opset": OPSET, "exporter": "torch.onnx (TorchScript)"}
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        exported = Path(scratch) / "exported.onnx"
        export_fp32(graph, spec, exported)
        details["fp32_bytes"] = exported.stat().st_size
        current = exported
        if options.fuse:
            fused = Path(scratch) / "fused.onnx"
            details["fused_ops"] = fuse(exported, fused, spec, options.fusion)
            current = fused
        final = out_dir / "model.onnx"
        if options.precision == "int8":
            details["quantization"] = quantize_int8(current, final, spec, options.quant, calibration)
        elif options.precision == "fp16":
            to_fp16(current, final, spec, options.fp16_keep_fp32_ops)
        else:
            os.replace(current, final)
    details["op_counts"] = op_counts(onnx.load(str(final)))
    return Conversion(model_file="model.onnx", precision=options.precision, runtime="onnxruntime", details=details)


class OrtRunner:
    shapes: list[Shape] | None = None

    def __init__(self, path: Path, threads: int | None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        if threads:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            str(path), session_options, providers=[p for p in wanted if p in available] or ["CPUExecutionProvider"]
        )
        self.provider = self.session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {self.provider}"
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        return self.session.run(None, {name: inputs[name] for name in self.input_names})[0]


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> OrtRunner:
    return OrtRunner(artifact_dir / manifest["file"], threads)
