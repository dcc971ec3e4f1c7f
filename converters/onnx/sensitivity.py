"""End-to-end int8 sensitivity of every linear layer, measured with fake quantization in PyTorch.

The numerics follow what ONNX Runtime's dynamic int8 does to a weight MatMul: the activation tensor as uint8
with one scale and zero point for the whole tensor (DynamicQuantizeLinear), the weights as symmetric int8
with one scale per output channel. Toggling a layer is a hook, not a re-quantization, so "every layer int8
but this one" costs one forward pass per layer. A layer's local error is a poor guide: one outlier channel
can dominate the output norm and hide the damage done to every other channel, which is what matters after
the next LayerNorm; the sentence embedding is what is measured here.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from core.graph import EmbeddingGraph
from core.metrics import row_cosines

Feeds = list[dict[str, np.ndarray]]


def fake_int8_activation(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then dequantize: uint8, range always holding 0, one scale for the tensor."""
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-12)
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_int8_rows(weight: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """Symmetric int8 with one scale per row: per output channel of a Linear, per token of an embedding table."""
    levels = 64.0 if reduce_range else 127.0
    scale = torch.clamp(weight.abs().amax(dim=1, keepdim=True) / levels, min=1e-12)
    return torch.round(weight / scale) * scale


@dataclass
class Sensitivity:
    layer: str  # qualified module name in the graph
    mean_gain: float  # mean cosine gained by keeping this layer out of int8 (all others int8)
    min_gain: float  # worst-sentence cosine gained likewise


class FakeInt8Graph:
    """A private copy of the graph whose linear layers can be switched to fake int8 one by one."""

    def __init__(self, graph: EmbeddingGraph, reduce_range: bool, int8_embedding_rows: bool) -> None:
        self.graph = copy.deepcopy(graph).eval()
        self.linears = {name: m for name, m in self.graph.named_modules() if isinstance(m, nn.Linear)}
        self._fp32 = {name: m.weight.detach().clone() for name, m in self.linears.items()}
        self._int8 = {name: fake_int8_rows(w, reduce_range) for name, w in self._fp32.items()}
        self._enabled: set[str] = set()
        for name, module in self.linears.items():
            module.register_forward_pre_hook(self._quantize_input(name))
        if int8_embedding_rows:  # always int8 in the artifact, so always int8 here
            table = self.graph.encoder.get_input_embeddings().weight
            with torch.no_grad():
                table.copy_(fake_int8_rows(table, reduce_range=False))

    def _quantize_input(self, name: str):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            return (fake_int8_activation(args[0]), *args[1:]) if name in self._enabled else None

        return hook

    @contextmanager
    def int8(self, layers: set[str]) -> Iterator[None]:
        """Within the block, exactly ``layers`` run as fake int8."""
        self._enabled = set(layers)
        with torch.no_grad():
            for name, module in self.linears.items():
                module.weight.copy_(self._int8[name] if name in layers else self._fp32[name])
        try:
            yield
        finally:
            self._enabled = set()

    def embed(self, feeds: Feeds, input_names: tuple[str, ...]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([
                self.graph(*(torch.from_numpy(batch[name]) for name in input_names)).numpy() for batch in feeds
            ])


def rank_layers(
    graph: EmbeddingGraph, feeds: Feeds, input_names: tuple[str, ...], reduce_range: bool, int8_embedding_rows: bool
) -> tuple[list[Sensitivity], dict[str, float]]:
    """Every linear layer with what keeping it out of int8 gains while all others are int8, most first
    (ranked by the larger of its two gains, each relative to the largest of its kind), and the all-int8
    baseline."""
    fake = FakeInt8Graph(graph, reduce_range, int8_embedding_rows)
    everything = set(fake.linears)
    with fake.int8(set()):
        reference = fake.embed(feeds, input_names)

    def score(layers: set[str]) -> tuple[float, float]:
        with fake.int8(layers):
            cos = np.nan_to_num(row_cosines(fake.embed(feeds, input_names), reference), nan=-1.0)
        return float(cos.mean()), float(cos.min())

    base_mean, base_min = score(everything)
    gains = []
    for name in fake.linears:
        mean, worst = score(everything - {name})
        gains.append(Sensitivity(name, mean - base_mean, worst - base_min))
    top_mean = max(max(g.mean_gain for g in gains), 1e-9)
    top_min = max(max(g.min_gain for g in gains), 1e-9)
    gains.sort(key=lambda g: max(g.mean_gain / top_mean, g.min_gain / top_min), reverse=True)
    return gains, {"mean_cosine": base_mean, "min_cosine": base_min}


def onnx_matmul_for_layers(model: onnx.ModelProto, graph: EmbeddingGraph) -> dict[str, str]:
    """Graph linear layer -> the ONNX MatMul or Gemm node holding its weight, matched by the weight's bytes
    (the exporter stores W transposed for MatMul, as is for Gemm with transB), so no naming scheme is assumed."""
    by_bytes: dict[str, str] = {}
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in initializers:
            weights = numpy_helper.to_array(initializers[node.input[1]])
            for candidate in (weights, weights.T):
                by_bytes[_digest(candidate)] = node.name
    found = {}
    for name, module in graph.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().numpy()
            node = by_bytes.get(_digest(weight)) or by_bytes.get(_digest(weight.T))
            if node is not None:
                found[name] = node
    return found


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()
