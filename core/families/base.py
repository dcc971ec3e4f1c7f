"""What one transformer family needs from the toolchain: one frozen object per family, registered under the
``config.model_type`` values it covers (optimum's per-architecture config, for embedding graphs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import ConfigError

# Finite and far below any attention logit, yet representable in fp16 (an fp32-min mask becomes
# -inf/NaN once a converter casts it to half precision).
MASK_FILL = -10000.0
GRAPH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B, 1, 1, S) additive bias: 0 where a key is real, MASK_FILL where it is padding."""
    return (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASK_FILL


def distance_bias(sequence: int, allowed, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, S, S) additive bias, 0 where ``allowed(query_index, key_index)`` holds, MASK_FILL elsewhere."""
    positions = torch.arange(sequence, device=device)
    keep = allowed(positions[:, None], positions[None, :])
    return ((~keep).to(dtype) * MASK_FILL)[None, None]


@dataclass(frozen=True)
class Family:
    """A bidirectional encoder by default; subclasses override what differs."""

    name: str
    model_types: tuple[str, ...]
    # ONNX Runtime transformer-optimizer model type whose fusions match this family's graph; None: exported
    # unfused (the summary and manifest say so).
    ort_fusion: str | None = None
    # Whether ONNX Runtime's Attention fusion matches this family's attention (MPNet adds a relative
    # position bias to the scores, which the pattern does not cover; the other fusions still apply).
    fuses_attention: bool = True
    # Config field names where the family's config differs from BERT's (DistilBERT: hidden_dim, ...).
    config_fields: Mapping[str, str] = field(default_factory=dict)
    # Artifact formats this family cannot be converted to, with the reason (one line each).
    refused_formats: Mapping[str, str] = field(default_factory=dict)

    def graph_fields(self, config: Any) -> dict[str, int]:
        """hidden_size, intermediate_size, heads, layers and vocab_size, whatever the config calls them."""
        values = {}
        for name in GRAPH_FIELDS:
            attribute = self.config_fields.get(name, name)
            value = getattr(config, attribute, None)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{self.name} config has no positive integer {attribute!r}; config.json is broken")
            values[name] = value
        return values

    def attention_masks(self, attention_mask: torch.Tensor, dtype: torch.dtype, config: Any) -> Any:
        """What the encoder takes as ``attention_mask`` when the graph builds its own additive masks."""
        return padding_bias(attention_mask, dtype)

    def expected_fusions(self, layers: int) -> dict[str, int]:
        """Least fused-op counts of a complete ONNX Runtime fusion (empty when the family is exported unfused)."""
        if self.ort_fusion != "bert":
            return {}
        expected = {"SkipLayerNormalization": 2 * layers, "BiasGelu": layers}
        return {"Attention": layers, **expected} if self.fuses_attention else expected


@dataclass(frozen=True)
class SlidingWindowEncoder(Family):
    """Bidirectional encoder whose layers alternate global and sliding-window attention (ModernBERT)."""

    def attention_masks(self, attention_mask: torch.Tensor, dtype: torch.dtype, config: Any) -> Any:
        padding = padding_bias(attention_mask, dtype)
        window = int(config.sliding_window)
        band = distance_bias(attention_mask.shape[1], lambda q, k: (q - k).abs() <= window, dtype,
                             attention_mask.device)
        return {"full_attention": padding, "sliding_attention": padding + band}


@dataclass(frozen=True)
class Decoder(Family):
    """Causal decoder used as an embedder (last-token pooling, right padding: the last real token sees the
    whole sentence and no padding)."""

    def attention_masks(self, attention_mask: torch.Tensor, dtype: torch.dtype, config: Any) -> Any:
        padding = padding_bias(attention_mask, dtype)
        sequence, device = attention_mask.shape[1], attention_mask.device
        masks = {"full_attention": padding + distance_bias(sequence, lambda q, k: k <= q, dtype, device)}
        window = getattr(config, "sliding_window", None)
        if window and "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            masks["sliding_attention"] = padding + distance_bias(
                sequence, lambda q, k: (k <= q) & (k > q - int(window)), dtype, device)
        return masks


FAMILIES: dict[str, Family] = {}
_BY_MODEL_TYPE: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family; refuses a name or a model type that another family already covers."""
    taken = [t for t in family.model_types if t in _BY_MODEL_TYPE]
    if family.name in FAMILIES or taken:
        raise ConfigError(f"family {family.name!r} (model types {taken or family.model_types}) is already registered")
    FAMILIES[family.name] = family
    _BY_MODEL_TYPE.update({model_type: family for model_type in family.model_types})
    return family


def family_for(model_type: str) -> Family:
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise ConfigError(f"model type {model_type!r} is not a supported family (supported model types: {known})")
    return _BY_MODEL_TYPE[model_type]
