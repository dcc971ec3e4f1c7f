"""The one embedding graph every converter starts from.

token ids + attention mask (+ token type ids where the model has them) -> transformer ->
attention-mask-aware pooling -> optional Dense layers -> Normalize -> optional PCA projection
(a centred linear layer) -> L2 normalise. Strings stay outside: the model's own tokenizer
produces the ids.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError
from core.families import Family, family_for
from core.families.base import MASK_FILL
from core.manifest import GraphSpec
from core.pca import Projection

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def model_config(spec: GraphSpec, pad_token_id: int) -> dict:
    """The config.json fields that libraries loading an exported graph read (transformers.js and optimum pick the
    model class by model_type; fastembed pads with pad_token_id)."""
    return {
        "model_type": spec.model_type,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "vocab_size": spec.vocab_size,
        "pad_token_id": pad_token_id,
    }


class Pool(nn.Module):
    """Pooling that ignores padded positions, so padding to a shape bucket never changes the result."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ConfigError(f"pooling mode {mode!r} is not supported (supported: {', '.join(POOLING_MODES)})")
        self.mode = mode

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Inputs are right-padded: the first token is always real, the last real one sits at length - 1.
        if self.mode == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "lasttoken":  # a one-hot weighted sum rather than a gather: every converter lowers it
            positions = torch.cumsum(torch.ones_like(mask), dim=1)
            last = (positions == mask.sum(dim=1, keepdim=True)).unsqueeze(-1).to(hidden.dtype)
            return (hidden * last).sum(dim=1)
        if self.mode == "max":
            return (hidden + (1.0 - weights) * MASK_FILL).max(dim=1).values
        if self.mode == "weightedmean":  # weight = position + 1
            positions = torch.cumsum(torch.ones_like(mask), dim=1).unsqueeze(-1).to(hidden.dtype)
            weights = weights * positions
        total = (hidden * weights).sum(dim=1)
        count = weights.sum(dim=1).clamp(min=1e-9)
        return total / (count.sqrt() if self.mode == "mean_sqrt_len_tokens" else count)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # Same epsilon as torch.nn.functional.normalize, written out so every exporter sees plain ops.
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)


def projection_layer(projection: Projection) -> nn.Linear:
    """The PCA projection as a centred linear layer (see core.pca)."""
    weight, bias = projection.linear_weights()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return linear


class EmbeddingGraph(nn.Module):
    """Sentence embedding from token ids; what every artifact contains.

    ``additive_mask`` builds the float attention masks here (as the family defines them: padding, sliding
    windows, causal) instead of inside transformers: the transformers mask code emits boolean and
    ``new_ones`` ops that the TFLite, Core ML and ExecuTorch paths cannot lower. The ONNX path keeps the 2D
    mask for families that ONNX Runtime fuses, because its attention fusion matches the pattern transformers
    emits.
    """

    def __init__(
        self,
        encoder: nn.Module,
        family: Family,
        pooling: str,
        dense: list[nn.Module],
        normalize: bool,
        projection: Projection | None,
        *,
        additive_mask: bool,
        uses_token_type_ids: bool,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.family = family
        self.pool = Pool(pooling)
        self.dense = nn.ModuleList(dense)
        self.normalize = normalize
        self.projection = projection_layer(projection) if projection is not None else None
        self.additive_mask = additive_mask
        self.uses_token_type_ids = uses_token_type_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mask = attention_mask
        if self.additive_mask:
            dtype = self.encoder.get_input_embeddings().weight.dtype  # fp16 graphs need an fp16 mask
            mask = self.family.attention_masks(attention_mask, dtype, self.encoder.config)
        kwargs = {"token_type_ids": token_type_ids} if self.uses_token_type_ids else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state
        x = self.pool(hidden, attention_mask)
        for layer in self.dense:
            x = layer(x)
        if self.normalize:
            x = l2_normalize(x)
        if self.projection is not None:
            x = l2_normalize(self.projection(x))
        return x


def _dense_as_module(st_dense: nn.Module) -> nn.Module:
    return nn.Sequential(st_dense.linear, st_dense.activation_function)


def build_graph(st_model, projection: Projection | None = None, *, additive_mask: bool) -> EmbeddingGraph:
    """Fold a loaded SentenceTransformer (and an optional PCA projection) into one EmbeddingGraph."""
    transformer, *rest = list(st_model)
    pooling = "mean"
    dense: list[nn.Module] = []
    normalize = False
    for module in rest:
        kind = type(module).__name__
        if kind == "Pooling":
            modes = (module.pooling_mode,) if isinstance(module.pooling_mode, str) else tuple(module.pooling_mode)
            if len(modes) != 1:
                raise ConfigError(f"pooling that concatenates several modes {modes} is not supported")
            if getattr(module, "include_prompt", True) is False:
                raise ConfigError("pooling that leaves the prompt tokens out (include_prompt: false) is not supported")
            pooling = modes[0]
        elif kind == "Dense":
            dense.append(_dense_as_module(module))
        elif kind == "Normalize":
            normalize = True
    input_names = tuple(st_model.tokenizer.model_input_names)
    family = family_of(st_model)
    graph = EmbeddingGraph(
        transformer.auto_model,
        family,
        pooling,
        dense,
        normalize,
        projection,
        # Only families ONNX Runtime fuses gain from transformers' own mask pattern.
        additive_mask=additive_mask or family.ort_fusion is None,
        uses_token_type_ids="token_type_ids" in input_names,
    )
    return graph.eval()


def family_of(st_model) -> Family:
    return family_for(st_model[0].auto_model.config.model_type)


def graph_spec(st_model, projection: Projection | None) -> GraphSpec:
    graph = build_graph(st_model, projection, additive_mask=True)
    config = st_model[0].auto_model.config
    source_dim = st_model.get_embedding_dimension()
    input_names = ("input_ids", "attention_mask") + (("token_type_ids",) if graph.uses_token_type_ids else ())
    return GraphSpec(
        family=graph.family.name,
        model_type=config.model_type,
        input_names=input_names,
        output_name="sentence_embedding",
        pooling=graph.pool.mode,
        dense_layers=len(graph.dense),
        normalized=graph.normalize or projection is not None,
        source_dim=source_dim,
        embedding_dim=projection.dims if projection is not None else source_dim,
        pca_dims=projection.dims if projection is not None else None,
        max_seq_length=int(st_model.max_seq_length),
        **graph.family.graph_fields(config),
    )


def example_inputs(spec: GraphSpec, batch: int, seq: int) -> tuple[torch.Tensor, ...]:
    """Dummy inputs in graph order with a padded tail, so exporters trace the masking paths."""
    ids = torch.randint(1000, 2000, (batch, seq), dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq // 2 :] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[name] for name in spec.input_names)
