"""int8 for ONNX: dynamic or static (QDQ) per-channel weights, per-row int8 word embeddings, and
accuracy-aware exclusions: measure each weight MatMul's sensitivity and store the worst block-wise."""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from converters.onnx import QuantConfig
from converters.onnx.runner import OrtRunner
from core.cpu import cpu_isa
from core.graph import GraphSpec
from core.metrics import mean_cosine

DEFAULT_QUANT = QuantConfig()


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


def measure_mean_cosine(
    model_path: Path, feeds: list[dict[str, np.ndarray]], reference: np.ndarray, threads: int | None
) -> float:
    """Mean cosine of the model's outputs over ``feeds`` (concatenated in order) against ``reference`` rows."""
    runner = OrtRunner(model_path, threads, ["CPUExecutionProvider"])
    return mean_cosine(np.concatenate([runner.run(batch) for batch in feeds]), reference)


def _node_pattern(name: str) -> str:
    return f"^{re.escape(name)}$"


def rank_matmul_sensitivity(
    model_path: Path,
    spec: GraphSpec,
    feeds: list[dict[str, np.ndarray]],
    reference: np.ndarray,
    config: QuantConfig = DEFAULT_QUANT,
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
        base = measure_mean_cosine(out, feeds, reference, threads)
        gains = []
        for name in candidates:
            trial = replace(config, keep_fp32=config.keep_fp32 + (_node_pattern(name),))
            quantize_int8(model_path, out, spec, trial)
            gains.append((name, measure_mean_cosine(out, feeds, reference, threads) - base))
    return sorted(gains, key=lambda item: item[1], reverse=True)


def select_keep_fp32(
    model_path: Path,
    spec: GraphSpec,
    feeds: list[dict[str, np.ndarray]],
    reference: np.ndarray,
    ranking: list[tuple[str, float]],
    target_mean_cosine: float,
    config: QuantConfig = DEFAULT_QUANT,
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
        score = measure_mean_cosine(out, feeds, reference, threads)
        for name, _ in ranking:
            if score >= target_mean_cosine:
                break
            kept += (_node_pattern(name),)
            quantize_int8(model_path, out, spec, replace(config, keep_fp32=config.keep_fp32 + kept))
            score = measure_mean_cosine(out, feeds, reference, threads)
    return kept, score
