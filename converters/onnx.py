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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch

from converters import Conversion, Shape
from pipelines.graph import EmbeddingGraph, GraphSpec, example_inputs

OPSET = 17
ADDITIVE_MASK = False  # keep transformers' own 2D-mask pattern: ONNX Runtime's Attention fusion matches it


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
    # Regular expressions over MatMul node names kept out of per-tensor dynamic int8 (accuracy-aware exclusions).
    keep_fp32: tuple[str, ...] = ()
    # How the kept nodes are stored: "fp32", or "block_int8" (MatMulNBits, 8-bit weights per block of 32 with
    # int8 compute on per-block activation scales): fp32's parity on this model at int8 size, and faster than fp32.
    keep_as: Literal["fp32", "block_int8"] = "fp32"
    # Word-embedding table: ONNX Runtime quantizes Gather data per tensor (one scale for 30k rows), which costs
    # the worst sentences most; "per_row" stores int8 rows with one fp32 scale each (same size), "fp32" keeps it.
    embedding: Literal["per_tensor", "per_row", "fp32"] = "per_tensor"
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


def _word_embedding_gather(model: onnx.ModelProto, spec: GraphSpec) -> str | None:
    """Name of the Gather reading the (vocab, hidden) table, or None if the graph has none (e.g. fused)."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and shapes.get(node.input[0]) == (spec.vocab_size, spec.hidden_size):
            return node.name
    return None


def _quantize_gather_rows(model: onnx.ModelProto, node_name: str) -> None:
    """Replace Gather(table, ids) by Cast(Gather(int8 table, ids)) * Gather(row scales, ids), in place.

    Symmetric int8 per row: each token's vector gets its own scale, so a few large rows no longer
    coarsen every other row as one per-tensor scale does. The scales add vocab x 4 bytes.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.name == node_name)
    init = next(i for i in graph.initializer if i.name == node.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    scale = np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    graph.initializer.remove(init)
    prefix = init.name
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{prefix}_int8_rows"),
            numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_row_scale"),
        ]
    )
    ids, out = node.input[1], node.output[0]
    new_nodes = [
        helper.make_node("Gather", [f"{prefix}_int8_rows", ids], [f"{out}_int8"], name=f"{node_name}_int8", axis=0),
        helper.make_node("Cast", [f"{out}_int8"], [f"{out}_f"], name=f"{node_name}_cast", to=TensorProto.FLOAT),
        helper.make_node("Gather", [f"{prefix}_row_scale", ids], [f"{out}_scale"], name=f"{node_name}_scale", axis=0),
        helper.make_node("Mul", [f"{out}_f", f"{out}_scale"], [out], name=f"{node_name}_dequant"),
    ]
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)


def _block_quantize(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The named MatMuls as MatMulNBits: 8-bit weights, one scale per block of 32 along K, accuracy_level 4.

    The per-tensor dynamic activation scale is what hurts the sensitive MatMuls (FFN inputs after GELU have
    outliers); MatMulNBits quantizes activations per block instead, so parity matches fp32 at int8 cost.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    others = [n for n in _matmul_weight_names(model) if n not in names]
    algo = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(
        model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4, nodes_to_exclude=others, algo_config=algo
    )  # nodes_to_include only adds to op_types_to_quantize, so the rest are excluded by name
    quantizer.process()
    return quantizer.model.model


def quantize_int8(
    model_path: Path,
    out_path: Path,
    spec: GraphSpec,
    config: QuantConfig,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict:
    """Quantize weights of MatMuls with constant weights to int8; returns what was done for the manifest."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    isa = cpu_isa()
    reduce_range = config.reduce_range if config.reduce_range is not None else isa not in ("avx512_vnni", "avx_vnni")
    model = onnx.load(str(model_path))
    excluded = [n for n in _matmul_weight_names(model) if any(re.search(p, n) for p in config.keep_fp32)]
    source: onnx.ModelProto | str = str(model_path)
    if config.keep_as == "block_int8" and excluded:
        model = source = _block_quantize(model, excluded)
    word_gather = _word_embedding_gather(model, spec)
    common = dict(
        per_channel=config.per_channel,
        reduce_range=reduce_range,
        nodes_to_exclude=excluded + ([word_gather] if config.embedding != "per_tensor" and word_gather else []),
        # Gather: the word-embedding table is most of the file, so it has to be int8 to meet the size budget.
        op_types_to_quantize=["MatMul", "Attention", "Gemm", "Gather", "EmbedLayerNormalization"],
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if config.mode == "dynamic":
        quantize_dynamic(source, str(out_path), weight_type=QuantType.QInt8, **common)
    else:
        if not calibration:
            raise ValueError("static quantization needs calibration batches")

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self._iter = iter(calibration)

            def get_next(self):
                return next(self._iter, None)

        quantize_static(
            source,
            str(out_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            **common,
        )
    if config.embedding == "per_row" and word_gather:
        quantized = onnx.load(str(out_path))
        _quantize_gather_rows(quantized, word_gather)
        onnx.save(quantized, str(out_path))
    return {
        "mode": config.mode,
        "weight_type": "int8",
        "per_channel": config.per_channel,
        "embedding": config.embedding,
        "kept_as": config.keep_as,
        "reduce_range": reduce_range,
        "isa": isa,
        "kept_fp32": excluded,
    }


def _mean_cosine(
    model_path: Path, feeds: list[dict[str, np.ndarray]], reference: np.ndarray, threads: int | None
) -> float:
    """Mean cosine of the model's outputs over ``feeds`` (concatenated in order) against ``reference`` rows."""
    from pipelines.verify import row_cosines  # imported here: pipelines.verify imports the targets, which import us

    runner = OrtRunner(model_path, threads, ["CPUExecutionProvider"])
    got = np.concatenate([runner.run(batch) for batch in feeds])
    return float(np.nan_to_num(row_cosines(got, reference), nan=-1.0).mean())


def _node_pattern(name: str) -> str:
    return f"^{re.escape(name)}$"


def rank_matmul_sensitivity(
    model_path: Path,
    spec: GraphSpec,
    feeds: list[dict[str, np.ndarray]],
    reference: np.ndarray,
    config: QuantConfig = QuantConfig(),
    candidates: list[str] | None = None,
    threads: int | None = None,
) -> list[tuple[str, float]]:
    """Mean-cosine gain of keeping each weight MatMul in fp32 while the rest stay int8, largest first.

    ``feeds``: token batches; ``reference``: the fp32 embeddings of their rows, in the same order.
    One quantization and one run per candidate (all weight MatMuls by default): about 3 s each here.
    """
    candidates = candidates or _matmul_weight_names(onnx.load(str(model_path), load_external_data=False))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "q.onnx"
        quantize_int8(model_path, out, spec, config)
        base = _mean_cosine(out, feeds, reference, threads)
        gains = []
        for name in candidates:
            trial = replace(config, keep_fp32=config.keep_fp32 + (_node_pattern(name),))
            quantize_int8(model_path, out, spec, trial)
            gains.append((name, _mean_cosine(out, feeds, reference, threads) - base))
    return sorted(gains, key=lambda item: item[1], reverse=True)


def select_keep_fp32(
    model_path: Path,
    spec: GraphSpec,
    feeds: list[dict[str, np.ndarray]],
    reference: np.ndarray,
    ranking: list[tuple[str, float]],
    target_mean_cosine: float,
    config: QuantConfig = QuantConfig(),
    threads: int | None = None,
) -> tuple[tuple[str, ...], float]:
    """Greedy: add ranked nodes to ``keep_fp32`` until the measured mean cosine reaches the target.

    Gains are not additive (errors partly cancel), so every step is re-measured rather than summed.
    Returns the node-name regexes and the mean cosine they reach (the best found if the target is missed).
    """
    kept: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "q.onnx"
        quantize_int8(model_path, out, spec, config)
        score = _mean_cosine(out, feeds, reference, threads)
        for name, _ in ranking:
            if score >= target_mean_cosine:
                break
            kept += (_node_pattern(name),)
            quantize_int8(model_path, out, spec, replace(config, keep_fp32=config.keep_fp32 + kept))
            score = _mean_cosine(out, feeds, reference, threads)
    return kept, score


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
