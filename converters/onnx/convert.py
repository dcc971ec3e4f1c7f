"""ONNX export, transformer fusions and precision (int8 in converters.onnx.quantize, fp16 here).

Export uses the legacy TorchScript exporter (opset 17) with eager attention and the 2D mask
handled by transformers: that is the pattern ONNX Runtime's BERT fusions match (the dynamo
export and a hand-built float mask both defeat the Attention fusion).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch

from converters.base import Calibration, Conversion
from converters.onnx import FusionConfig, OnnxOptions
from converters.onnx.quantize import quantize_int8
from core.errors import ConfigError
from core.graph import EmbeddingGraph, GraphSpec, example_inputs

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
            details["fused_ops"] = fuse(exported, fused, spec, options.fusion)
            current = fused
        final = out_dir / "model.onnx"
        if options.precision == "int8":
            # Static calibrators need equal shapes across batches: pad every batch to the same length.
            batches = None
            if options.quant.mode == "static":
                if calibration is None:
                    raise ConfigError("static int8 needs calibration sentences; none were given to the converter")
                batches = calibration.batches(options.quant.calibration_sentences, 8, 64, pad_to_max_length=True)
            details["quantization"] = quantize_int8(current, final, spec, options.quant, batches)
        elif options.precision == "fp16":
            to_fp16(current, final, spec, options.fp16_keep_fp32_ops)
        else:
            os.replace(current, final)
    details["op_counts"] = op_counts(onnx.load(str(final)))
    return Conversion(model_file="model.onnx", precision=options.precision, runtime="onnxruntime", details=details)
