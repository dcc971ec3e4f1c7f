"""TFLite (LiteRT): one flatbuffer with a signature per (batch, sequence) bucket; see converters.tflite.convert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from converters.base import AccuracyTarget
from converters.registry import ArtifactFormat, register_format

MODEL_FILE = "model.tflite"
RUNTIME = "ai-edge-litert"
# quantization option -> ai_edge_quantizer.recipe function (None: keep fp32)
RECIPES: dict[str, str | None] = {
    "int8": "dynamic_wi8_afp32",  # int8 per-channel weights, int8 compute with on-the-fly activation scales
    "int8-weight-only": "weight_only_wi8_afp32",  # int8 storage, fp32 compute: closer to fp32, slower
    "fp32": None,
}


@dataclass(frozen=True)
class TFLiteOptions:
    sequence_buckets: tuple[int, ...] | None = None  # None: converters.base.sequence_buckets(model limit)
    batch_sizes: tuple[int, ...] = (1,)
    quantization: Literal["int8", "int8-weight-only", "fp32"] = "int8"  # a key of RECIPES
    # int8 only: measured per model, the most sensitive linear layers stay weight-only int8 (fp32 compute)
    # until the artifact reaches this target in LiteRT (None: every layer dynamic-range int8).
    accuracy: AccuracyTarget | None = None


def signature_name(batch: int, sequence: int) -> str:
    return f"b{batch}_s{sequence}"


TFLITE = register_format(
    ArtifactFormat(
        name="tflite",
        options_type=TFLiteOptions,
        converter="converters.tflite.convert",
        runner="converters.tflite.runner",
        additive_mask=True,  # transformers' boolean / new_ones mask ops do not lower through litert-torch
    )
)
