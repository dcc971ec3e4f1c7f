"""int8 for ONNX: dynamic or static (QDQ) per-channel weights, per-row int8 word embeddings, and accuracy-aware
int8 chosen per model: activation smoothing where it measures better than none, then the weight MatMuls ranked
by end-to-end sensitivity and the worst kept at higher precision (block-wise int8 or fp32) until the whole model
reaches its calibration target."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from converters.base import AccuracyTarget
from converters.onnx import QuantConfig
from converters.onnx.layers import smooth_activations, weight_uses
from converters.onnx.runner import OrtRunner
from converters.sensitivity import KeptLayerSearch
from core.cpu import cpu_isa, isa_class
from core.graph import EmbeddingGraph
from core.manifest import GraphSpec
from core.metrics import row_cosines

Feeds = list[dict[str, np.ndarray]]


def _weight_node_names(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    weighted = ("MatMul", "Gemm", "Attention")
    return [n.name for n in model.graph.node if n.op_type in weighted and n.input[1] in initializers]


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
    """The named MatMuls as MatMulNBits: 8-bit weights, one scale per block of 32 along K, int8 compute.

    The per-tensor dynamic activation scale is what hurts the sensitive MatMuls (FFN inputs after GELU have
    outliers). With accuracy_level 4 MatMulNBits quantizes activations per block instead, so parity matches
    fp32 at int8 cost; its kernels are VNNI ones, so only classes that never saturate get it.
    """
    others = [n for n in _weight_node_names(model) if n not in names]
    algo = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(
        model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4, nodes_to_exclude=others,
        algo_config=algo,
    )  # nodes_to_include only adds to op_types_to_quantize, so the rest are excluded by name
    quantizer.process()
    return quantizer.model.model


def reduce_range_for(config: QuantConfig) -> bool:
    """Weights within [-64, 64] unless every CPU of the artifact's class accumulates u8 x s8 in int32."""
    if config.full_range is not None:
        return not config.full_range
    return not isa_class(config.isa).full_range_int8


def quantize_int8(
    model_path: Path,
    out_path: Path,
    spec: GraphSpec,
    config: QuantConfig,
    calibration: list[dict[str, np.ndarray]] | None = None,
    keep: Sequence[str] = (),
) -> dict:
    """Quantize weights of MatMuls with constant weights to int8, keeping ``keep`` and the MatMuls that
    ``config.keep_fp32`` names out of per-tensor int8; returns what was done for the manifest."""
    reduce_range = reduce_range_for(config)
    model = onnx.load(str(model_path))
    excluded = [
        n for n in _weight_node_names(model) if n in keep or any(re.search(p, n) for p in config.keep_fp32)
    ]
    source: onnx.ModelProto | str = str(model_path)
    # Where the class cannot run int8-compute blocks, kept layers stay fp32: weight-only blocks (accuracy
    # level 1) measured 5x slower than fp32 at batch 1 in ONNX Runtime 1.31 (MiniLM, AMX Xeon: 10.7 vs 2.1 ms).
    block_int8 = config.keep_as == "block_int8" and not reduce_range
    if block_int8 and excluded:
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
        "kept_as": "block_int8 (int8 compute)" if block_int8 else "fp32",
        "reduce_range": reduce_range,
        "isa": config.isa,
        "built_on": cpu_isa(),
        "kept": excluded,
    }


def run_model(model_path: Path, feeds: Feeds, threads: int | None = None) -> np.ndarray:
    """The model's outputs over ``feeds``, concatenated in order (CPU provider)."""
    runner = OrtRunner(model_path, threads, ["CPUExecutionProvider"])
    return np.concatenate([runner.run(batch) for batch in feeds])


def cosines_to(model_path: Path, feeds: Feeds, reference: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Per-row cosine of the model's outputs to ``reference``; a non-finite row counts as -1."""
    return np.nan_to_num(row_cosines(run_model(model_path, feeds, threads), reference), nan=-1.0)


def quantize_accuracy_aware(
    model_path: Path,
    out_path: Path,
    spec: GraphSpec,
    config: QuantConfig,
    target: AccuracyTarget,
    graph: EmbeddingGraph,
    sentences: Feeds,
    odd_texts: Feeds,
    shared: dict | None = None,
) -> dict:
    """int8 with the fewest kept MatMuls that reach ``target`` against the fp32 graph: mean cosine over the
    calibration ``sentences``, min cosine over those and ``odd_texts`` (short, symbolic, mixed-script inputs,
    where one activation scale per tensor hurts most).

    The kept count is found in fake int8 (converters.sensitivity), then confirmed by quantizing for real and
    running in ONNX Runtime, stepping up if the runtime falls short. Returns the manifest record; the model
    is left at ``out_path``."""
    search = KeptLayerSearch(
        graph, spec.input_names, sentences, odd_texts, target, activations="tensor",
        reduce_range=reduce_range_for(config), int8_embedding_rows=config.embedding == "per_row", shared=shared,
        smoothing=config.smoothing,
    )
    model = onnx.load(str(model_path))
    uses = weight_uses(model, graph)
    source, smoothed = model_path, 0
    if search.scales:
        source = out_path.with_name(out_path.stem + ".smoothed.onnx")
        smoothed = smooth_activations(model, uses, {layer: s.numpy() for layer, s in search.scales.items()})
        onnx.save(model, str(source))
    done: dict = {}

    def measure(layers: list[str]) -> np.ndarray:
        kept = sorted({uses[n].node for n in layers if n in uses})
        done.update(quantize_int8(source, out_path, spec, config, keep=kept))
        return cosines_to(out_path, sentences + odd_texts, search.reference)

    try:
        record = search.record(search.confirm(measure))  # fills ``done`` with the last step's recipe
    finally:
        if source != model_path:
            source.unlink(missing_ok=True)
    return {**done, "smoothed_inputs": smoothed, "accuracy_aware": record}
