"""ONNX export, transformer fusions and precision (int8 in converters.onnx.quantize, fp16 here).

Export uses the legacy TorchScript exporter (opset 17) with eager attention and the 2D mask
handled by transformers: that is the pattern ONNX Runtime's BERT fusions match (the dynamo
export and a hand-built float mask both defeat the Attention fusion).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from converters.base import CALIBRATION_LENGTH, Calibration, Conversion
from converters.onnx import FusionConfig, OnnxOptions, QuantConfig
from converters.onnx.quantize import quantize_accuracy_aware, quantize_int8
from core.errors import ConfigError
from core.families import Family, family_for
from core.graph import EmbeddingGraph, example_inputs
from core.manifest import GraphSpec

OPSET = 17


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


def fuse(model_path: Path, out_path: Path, spec: GraphSpec, config: FusionConfig, family: Family) -> dict:
    """Offline transformer fusions of the family's ONNX Runtime model type; the record states what fused
    against what a complete fusion gives (the family's expected counts), or why nothing was fused."""
    expected = family.expected_fusions(spec.num_hidden_layers)
    if family.ort_fusion is None:
        shutil.copyfile(model_path, out_path)
        note = f"exported unfused: ONNX Runtime's optimizer has no fusion for {family.name}"
        return {"type": None, "expected": expected, "fused": {}, "complete": False, "note": note}
    options = FusionOptions(family.ort_fusion)
    options.enable_attention = config.attention
    options.enable_skip_layer_norm = config.skip_layer_norm
    options.enable_embed_layer_norm = config.embed_layer_norm
    options.enable_bias_gelu = config.bias_gelu
    options.enable_gelu_approximation = config.gelu_approximation
    optimized = optimize_model(
        str(model_path),
        model_type=family.ort_fusion,
        num_heads=spec.num_attention_heads,
        hidden_size=spec.hidden_size,
        optimization_options=options,
        opt_level=0,  # graph fusions only; ONNX Runtime applies its own online passes at load time
    )
    optimized.save_model_to_file(str(out_path))
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    missing = {op: f"{fused.get(op, 0)} of {count}" for op, count in expected.items() if fused.get(op, 0) < count}
    note = "fully fused" if not missing else "partly fused: " + ", ".join(f"{k} {v}" for k, v in missing.items())
    return {"type": family.ort_fusion, "expected": expected, "fused": fused, "complete": not missing, "note": note}


def to_fp16(model_path: Path, out_path: Path, spec: GraphSpec, keep_fp32_ops: tuple[str, ...]) -> None:
    """fp16 weights and compute with fp32 inputs/outputs, via ONNX Runtime's transformer converter
    (onnxconverter-common 1.16 writes an invalid model for this graph: a Cast type mismatch)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(model_path)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=list(keep_fp32_ops) or None)
    model.save_model_to_file(str(out_path))


def _int8(
    model: Path, out: Path, graph: EmbeddingGraph, spec: GraphSpec, quant: QuantConfig, calibration: Calibration | None
) -> dict:
    measured = quant.mode == "static" or quant.accuracy is not None
    if measured and calibration is None:
        raise ConfigError("static or accuracy-aware int8 needs calibration sentences; none were given")
    if quant.mode == "static":
        # Static calibrators need equal shapes across batches: pad every batch to the same length.
        batches = calibration.batches(quant.calibration_sentences, 8, 64, pad_to_max_length=True)
        return quantize_int8(model, out, spec, quant, batches)
    if quant.accuracy is not None:
        length = min(CALIBRATION_LENGTH, spec.max_seq_length)
        sentences = calibration.batches(quant.accuracy.sentences, 32, length)
        odd_texts = calibration.edge_texts(length)
        return quantize_accuracy_aware(model, out, spec, quant, quant.accuracy, graph, sentences, odd_texts,
                                       calibration.shared)
    return quantize_int8(model, out, spec, quant)


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: OnnxOptions,
    calibration: Calibration | None = None,
) -> Conversion:
    details: dict = {"opset": OPSET, "exporter": "torch.onnx (TorchScript)"}
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        exported = Path(scratch) / "exported.onnx"
        export_fp32(graph, spec, exported)
        details["fp32_bytes"] = exported.stat().st_size
        current = exported
        if options.fuse:
            fused = Path(scratch) / "fused.onnx"
            details["fusion"] = fuse(exported, fused, spec, options.fusion, family_for(spec.model_type))
            current = fused
        final = out_dir / "model.onnx"
        if options.precision == "int8":
            details["quantization"] = _int8(current, final, graph, spec, options.quant, calibration)
        elif options.precision == "fp16":
            to_fp16(current, final, spec, options.fp16_keep_fp32_ops)
        else:
            os.replace(current, final)
    details["op_counts"] = op_counts(onnx.load(str(final)))
    isa = options.quant.isa if options.precision == "int8" else None
    return Conversion(model_file="model.onnx", precision=options.precision, runtime="onnxruntime", details=details,
                      isa=isa)
