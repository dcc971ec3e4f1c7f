"""End-to-end int8 sensitivity of every linear layer, measured with fake quantization in PyTorch, and the
search for how many of the most sensitive layers an artifact must keep at higher precision.

The numerics follow the runtimes' dynamic int8: weights as symmetric int8 with one scale per output channel;
activations quantized on the fly, either as ONNX Runtime's DynamicQuantizeLinear does (uint8, one scale and
zero point for the whole tensor) or as LiteRT's dynamic-range kernels do (int8, one scale and zero point per
row). Toggling a
layer is a hook, not a re-quantization, so "every layer int8 but this one" costs one forward pass per layer.
A layer's local error is a poor guide: one outlier channel can dominate the output norm and hide the damage
done to every other channel, which is what matters after the next LayerNorm; the sentence embedding is what
is measured here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from converters.base import AccuracyTarget
from converters.smoothing import input_groups_and_maxima, linear_layers, smoothing_scales
from core.graph import EmbeddingGraph
from core.metrics import row_cosines

Feeds = list[dict[str, np.ndarray]]


def fake_int8_activation(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then dequantize: uint8, range always holding 0, one scale for the tensor."""
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-12)
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_int8_activation_rows(x: torch.Tensor) -> torch.Tensor:
    """LiteRT's dynamic-range fully-connected kernels (XNNPACK qd8): asymmetric int8, range holding 0, one
    scale and zero point per row (per token vector)."""
    low = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    high = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-12)
    zero = torch.round(-low / scale) - 128
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


ACTIVATIONS = {"tensor": fake_int8_activation, "row": fake_int8_activation_rows}


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

    def __init__(
        self, graph: EmbeddingGraph, reduce_range: bool, int8_embedding_rows: bool, activations: str = "tensor"
    ) -> None:
        self.graph = copy.deepcopy(graph).eval()
        self.activations = activations  # a key of ACTIVATIONS; may be switched between runs
        self.linears = linear_layers(self.graph)
        self.fp32_weights = {name: m.weight.detach().clone() for name, m in self.linears.items()}
        self._reduce_range = reduce_range
        self.smooth({})
        self._enabled: set[str] = set()
        for name, module in self.linears.items():
            module.register_forward_pre_hook(self._quantize_input(name))
        if int8_embedding_rows:  # always int8 in the artifact, so always int8 here
            table = self.graph.encoder.get_input_embeddings().weight
            with torch.no_grad():
                table.copy_(fake_int8_rows(table, reduce_range=False))

    def smooth(self, scales: dict[str, torch.Tensor]) -> None:
        """int8 layers from now on read x / s and hold int8(W * s) (converters.smoothing); {} for none."""
        self._scales = scales
        self._int8 = {
            name: fake_int8_rows(w * scales[name] if name in scales else w, self._reduce_range)
            for name, w in self.fp32_weights.items()
        }

    def _quantize_input(self, name: str):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if name not in self._enabled:
                return None
            x = args[0] / self._scales[name] if name in self._scales else args[0]
            return (ACTIVATIONS[self.activations](x), *args[1:])

        return hook

    @contextmanager
    def int8(self, layers: set[str]) -> Iterator[None]:
        """Within the block, exactly ``layers`` run as fake int8."""
        self._enabled = set(layers)
        with torch.no_grad():
            for name, module in self.linears.items():
                module.weight.copy_(self._int8[name] if name in layers else self.fp32_weights[name])
        try:
            yield
        finally:
            self._enabled = set()

    def embed(self, feeds: Feeds, input_names: tuple[str, ...]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([
                self.graph(*(torch.from_numpy(batch[name]) for name in input_names)).numpy() for batch in feeds
            ])


# How many of the ranked layers each step keeps: one by one first (most models need a few), then in growing
# strides so a model that needs many still takes few measured steps.
KEEP_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
RANKING = "int8 sensitivity ranking"  # the key in Calibration.shared


def meets(step: dict, target: AccuracyTarget) -> bool:
    return step["mean_cosine"] >= target.mean_cosine and step["min_cosine"] >= target.min_cosine


class KeptLayerSearch:
    """Which linear layers an int8 artifact keeps at higher precision, and how many.

    In fake int8 with the format's own activation scheme: the fewest most-sensitive layers that reach
    ``target`` against the fp32 graph on all ``sentences`` and ``odd_texts``. Then ``confirm`` quantizes for
    real and measures in the format's runtime, stepping up where it falls short.

    The ranking (leave one out, on the first ``ranking_batches`` and the odd texts) always uses one activation
    per tensor, the harshest scheme, so it is the same for every format: it is computed only when some layer
    has to be kept, and once per export when ``shared`` (Calibration.shared) is given.
    """

    def __init__(
        self,
        graph: EmbeddingGraph,
        input_names: tuple[str, ...],
        sentences: Feeds,
        odd_texts: Feeds,
        target: AccuracyTarget,
        *,
        activations: str,
        reduce_range: bool = False,
        int8_embedding_rows: bool = False,
        ranking_batches: int = 1,
        shared: dict | None = None,
        smoothing: tuple[float, ...] = (),
    ) -> None:
        self.target = target
        self._shared = shared if shared is not None else {}
        self._fake = FakeInt8Graph(graph, reduce_range, int8_embedding_rows, activations)
        self._input_names = input_names
        self._ranking_feeds = sentences[:ranking_batches] + odd_texts
        self._feeds = sentences + odd_texts
        self.sentence_rows = sum(len(batch["input_ids"]) for batch in sentences)
        with self._fake.int8(set()):
            self.reference = self._fake.embed(self._feeds, input_names)  # fp32 graph, sentences then odd texts
        self.scales: dict[str, torch.Tensor] = {}
        self.smoothing: dict | None = self._choose_smoothing(smoothing, sentences) if smoothing else None
        self.fake_steps = [self._fake_step(0)]
        if not meets(self.fake_steps[0], target):
            for count in counts_from(1, len(self.ranked)):
                self.fake_steps.append(self._fake_step(count))
                if meets(self.fake_steps[-1], target):
                    break
        self.count = self.fake_steps[-1]["kept"]

    def _choose_smoothing(self, alphas: tuple[float, ...], sentences: Feeds) -> dict:
        """No smoothing or one of ``alphas`` (converters.smoothing): whichever leaves the all-int8 fake model the
        least error relative to the target, the worse of mean and min (a smoothing that lifts the mean can cost
        the odd texts). Leaves the fake model smoothed with it."""
        with self._fake.int8(set()):
            groups, maxima = input_groups_and_maxima(self._fake.graph, sentences, self._input_names)
        trials = []
        for alpha in (None, *alphas):
            scales = smoothing_scales(self._fake.fp32_weights, groups, maxima, alpha) if alpha is not None else {}
            self._fake.smooth(scales)
            trials.append((alpha, scales, self._fake_step(0)))
        alpha, self.scales, _ = min(trials, key=lambda trial: self._relative_error(trial[2]))
        self._fake.smooth(self.scales)
        return {"alpha": alpha, "trials": [{"alpha": a, **step} for a, _, step in trials]}

    def _relative_error(self, step: dict) -> float:
        """1 - cosine as a multiple of what the target allows, the worse of mean and min (<= 1 meets it)."""
        return max((1 - step["mean_cosine"]) / max(1 - self.target.mean_cosine, 1e-9),
                   (1 - step["min_cosine"]) / max(1 - self.target.min_cosine, 1e-9))

    def _cosines(self, int8_layers: set[str], feeds: Feeds, reference: np.ndarray) -> np.ndarray:
        with self._fake.int8(int8_layers):
            return np.nan_to_num(row_cosines(self._fake.embed(feeds, self._input_names), reference), nan=-1.0)

    def _fake_step(self, count: int) -> dict:
        keep = {s.layer for s in self.ranked[:count]} if count else set()
        return _step(count, self._cosines(set(self._fake.linears) - keep, self._feeds, self.reference),
                     self.sentence_rows)

    @property
    def _ranking_key(self) -> str:
        """Smoothing changes the ranking: a ranking is shared only between searches with the same smoothing."""
        return f"{RANKING}, smoothed (alpha {self.smoothing['alpha']})" if self.scales else RANKING

    @property
    def ranked(self) -> list[Sensitivity]:
        """Every linear layer, most sensitive first: the larger of its two gains (mean and worst cosine from
        keeping it while all others are int8), each relative to the largest of its kind."""
        key = self._ranking_key
        if key not in self._shared:
            own, self._fake.activations = self._fake.activations, "tensor"
            everything = set(self._fake.linears)
            with self._fake.int8(set()):
                reference = self._fake.embed(self._ranking_feeds, self._input_names)
            base = self._cosines(everything, self._ranking_feeds, reference)
            gains = []
            for name in self._fake.linears:
                kept = self._cosines(everything - {name}, self._ranking_feeds, reference)
                gains.append(Sensitivity(name, float(kept.mean() - base.mean()), float(kept.min() - base.min())))
            self._fake.activations = own
            top_mean = max(max(g.mean_gain for g in gains), 1e-9)
            top_min = max(max(g.min_gain for g in gains), 1e-9)
            self._shared[key] = sorted(gains, key=lambda g: max(g.mean_gain / top_mean, g.min_gain / top_min),
                                           reverse=True)
        return self._shared[key]

    def confirm(self, measure: Callable[[list[str]], np.ndarray]) -> list[dict]:
        """Quantize for real and measure in the format's runtime, from the fake-int8 count upward until the
        target holds. ``measure(kept layers)`` returns the runtime's cosines to ``reference``, row for row.

        Past the fake count the next two steps keep one more ranked layer each (a near miss, common when the
        fake and the runtime's numerics agree, needs no more), then each step keeps a quarter more of the
        remaining layers: where they disagree (LiteRT loses more than its kernels do one by one), the ranking
        guides less, and every step is a full quantization and run."""
        steps = [_step(self.count, measure(self.kept(self.count)), self.sentence_rows)]
        total = len(self.ranked) if not meets(steps[0], self.target) else self.count
        ladder = [min(self.count + 1, total), min(self.count + 2, total)]
        ladder += [self.count + -(-(total - self.count) * quarter // 4) for quarter in range(1, 5)]
        for count in ladder:
            if meets(steps[-1], self.target):
                break
            if count > steps[-1]["kept"]:
                steps.append(_step(count, measure(self.kept(count)), self.sentence_rows))
        return steps

    def kept(self, count: int) -> list[str]:
        return [s.layer for s in self.ranked[:count]] if count else []

    def record(self, steps: list[dict]) -> dict:
        """What the manifest says about the search and the runtime's own measurements."""
        ranked = self._shared.get(self._ranking_key, [])
        return {
            "smoothing": self.smoothing,
            "target": {"mean_cosine": self.target.mean_cosine, "min_cosine": self.target.min_cosine},
            "ranking": "end-to-end fake int8, one activation scale per tensor: cosine gained by keeping each layer "
                       "while all others are int8",
            "most_sensitive": [[s.layer, round(s.mean_gain, 6), round(s.min_gain, 6)] for s in ranked[:8]],
            "fake_int8_steps": self.fake_steps,
            "steps": steps,
            "kept": self.kept(steps[-1]["kept"]),
            "reached": meets(steps[-1], self.target),
        }


def _step(count: int, cos: np.ndarray, sentence_rows: int) -> dict:
    """The mean is over the calibration sentences, the min over those and the odd texts."""
    return {"kept": count, "mean_cosine": round(float(cos[:sentence_rows].mean()), 6),
            "min_cosine": round(float(cos.min()), 6)}


def counts_from(start: int, total: int) -> list[int]:
    """KEEP_STEPS from ``start`` on, capped at ``total`` (which always ends the list)."""
    return sorted({min(k, total) for k in KEEP_STEPS if k >= start} | {min(start, total), total})
