"""Activation smoothing (SmoothQuant, Xiao et al. 2023) for int8 with one activation scale per tensor.

A few input channels of some linear layers carry values tens of times larger than the rest (LayerNorm outputs,
FFN inputs after GELU); with one scale for the whole tensor the other channels are left a handful of int8
levels. Dividing input channel j by s_j and multiplying the weight's column j by s_j leaves the fp32 product
unchanged and moves part of that range into the weights, which are quantized per output channel:
s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha), the activation maximum taken over calibration sentences.
Layers that read the same tensor (query, key and value) share one s, so a runtime quantizes that tensor once.

Only groups whose input is clearly the harder side are smoothed: the activation's outlier ratio (largest channel
maximum over the median one) at least OUTLIER_MARGIN times the weight's. Elsewhere smoothing moves range into
weights that have outliers of their own: in all-MiniLM-L6-v2 the FFN-down layers (GELU outputs, ratio ~17,
weights ~30) lost min cosine smoothed (fake int8, 1024 STS-B dev sentences: 0.981 all smoothed, 0.988 with this
rule), and each smoothed group costs the runtime one elementwise Mul.

Which alpha, if any, is chosen per model by measurement (converters.sensitivity.KeptLayerSearch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from core.graph import EmbeddingGraph

Feeds = list[dict[str, np.ndarray]]
FLOOR = 1e-5  # keeps s finite for channels that are all zero in the calibration sentences
OUTLIER_MARGIN = 2.0


def linear_layers(graph: nn.Module) -> dict[str, nn.Linear]:
    return {name: module for name, module in graph.named_modules() if isinstance(module, nn.Linear)}


def input_groups_and_maxima(
    graph: EmbeddingGraph, feeds: Feeds, input_names: Sequence[str]
) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """The linear layers grouped by the tensor they read (in one forward pass), and each layer's largest
    absolute input per channel over ``feeds``. Layers that never run (BERT's unused pooler) are left out."""
    maxima: dict[str, torch.Tensor] = {}
    readers: list[tuple[torch.Tensor, list[str]]] = []

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            channels = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], channels) if name in maxima else channels
            if first_batch:
                group = next((names for tensor, names in readers if tensor is args[0]), None)
                if group is None:
                    readers.append((args[0], [name]))
                else:
                    group.append(name)

        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in linear_layers(graph).items()]
    try:
        with torch.no_grad():
            for index, batch in enumerate(feeds):
                first_batch = index == 0
                graph(*(torch.from_numpy(batch[name]) for name in input_names))
    finally:
        for handle in handles:
            handle.remove()
    return [names for _, names in readers], maxima


def smoothing_scales(
    weights: dict[str, torch.Tensor], groups: list[list[str]], maxima: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """s per smoothed linear layer (one vector over its input channels, shared within a group); ``weights`` are
    the layers' fp32 weights, (out, in) as nn.Linear holds them."""
    scales = {}
    for names in groups:
        x_max = torch.stack([maxima[name] for name in names]).amax(dim=0).clamp(min=FLOOR)
        w_max = torch.stack([weights[name].abs().amax(dim=0) for name in names]).amax(dim=0)
        if _outlier_ratio(x_max) < OUTLIER_MARGIN * _outlier_ratio(w_max):
            continue
        s = (x_max**alpha / w_max.clamp(min=FLOOR) ** (1 - alpha)).clamp(min=FLOOR)
        scales.update({name: s.float() for name in names})
    return scales


def _outlier_ratio(channel_max: torch.Tensor) -> float:
    return float(channel_max.max() / channel_max.median().clamp(min=FLOOR))
