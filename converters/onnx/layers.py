"""Which ONNX node multiplies by which linear layer's weight, and activation smoothing applied to those nodes.

Nodes are matched to the graph's layers by the weight's bytes, so no naming scheme is assumed: MatMul stores
W transposed, Gemm as is with transB, and ONNX Runtime's fused Attention holds query, key and value side by
side in one (in, 3 x out) initializer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from core.graph import EmbeddingGraph


@dataclass(frozen=True)
class WeightUse:
    node: str  # the ONNX node that multiplies by the layer's weight (its input 1)
    input_axis: int  # the initializer's axis over the layer's input channels


def weight_digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def weight_uses(model: onnx.ModelProto, graph: EmbeddingGraph) -> dict[str, WeightUse]:
    """Graph linear layer -> the node holding its weight (layers the export dropped are absent)."""
    initializers = {i.name: i for i in model.graph.initializer}
    by_digest: dict[str, WeightUse] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weights = numpy_helper.to_array(initializers[node.input[1]])
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not _attribute(node, "transB")):
            by_digest[weight_digest(weights.T)] = WeightUse(node.name, 0)
        elif node.op_type == "Gemm":
            by_digest[weight_digest(weights)] = WeightUse(node.name, 1)
        elif node.op_type == "Attention":
            for part in np.split(weights, 3, axis=1):
                by_digest[weight_digest(part.T)] = WeightUse(node.name, 0)
    found = {}
    for name, module in graph.named_modules():
        if isinstance(module, nn.Linear):
            use = by_digest.get(weight_digest(module.weight.detach().numpy()))
            if use is not None:
                found[name] = use
    return found


def smooth_activations(model: onnx.ModelProto, uses: dict[str, WeightUse], scales: dict[str, np.ndarray]) -> int:
    """In place: each smoothed node reads x / s (one Mul per input tensor and s, before its first reader) and
    holds W * s along its input axis (converters.smoothing). Returns the number of Muls inserted. A weight
    that several nodes share is left as it is (one s could not suit them all)."""
    initializers = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    chosen = {}
    for layer, use in uses.items():
        if layer in scales:
            chosen.setdefault(use.node, (use, scales[layer]))  # query, key and value share one s
    inserted: dict[tuple[str, str], onnx.NodeProto] = {}
    ordered = []
    for node in model.graph.node:
        if node.name in chosen and readers[node.input[1]] == 1:
            use, s = chosen[node.name]
            weight = initializers[node.input[1]]
            array = numpy_helper.to_array(weight)
            shape = [1] * array.ndim
            shape[use.input_axis] = -1
            weight.CopyFrom(numpy_helper.from_array((array * s.reshape(shape)).astype(array.dtype), weight.name))
            key = (node.input[0], weight_digest(s))
            if key not in inserted:
                out = f"{node.input[0]}/smoothed_{len(inserted)}"
                model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"{out}/1_over_s"))
                inserted[key] = helper.make_node("Mul", [node.input[0], f"{out}/1_over_s"], [out], name=f"{out}/Mul")
                ordered.append(inserted[key])
            node.input[0] = inserted[key].output[0]
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return len(inserted)


def _attribute(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
