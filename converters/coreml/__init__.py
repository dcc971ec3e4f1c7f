"""Core ML: an ML Program (fp16) with enumerated (batch, sequence) shapes; see converters.coreml.convert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from converters.base import Shape
from converters.registry import ArtifactFormat, register_format

MODEL_FILE = "model.mlpackage"
MAX_ENUMERATED_SHAPES = 128  # Core ML's limit
MULTI_INPUT_ENUMERATION_TARGET = "iOS18"
EMULATION_LABEL = "emulated"  # every emulated result says so: it is not a Core ML prediction


@dataclass(frozen=True)
class CoreMLOptions:
    # Every (batch, sequence) pair becomes one enumerated shape; inputs are padded up to the next bucket.
    sequence_buckets: tuple[int, ...] | None = None  # None: converters.base.sequence_buckets(model limit)
    batch_sizes: tuple[int, ...] = (1,)
    precision: Literal["fp16", "fp32"] = "fp16"
    minimum_deployment_target: str = MULTI_INPUT_ENUMERATION_TARGET
    # MIL op types kept in fp32 under fp16 (e.g. "layer_norm"), for when fp16 parity needs it.
    fp32_ops: tuple[str, ...] = ()



def enumerated_shape(batch: int, sequence: int) -> Shape:
    return Shape(batch, sequence, f"{batch}x{sequence}")  # all shapes run through the one model file


COREML = register_format(
    ArtifactFormat(
        name="coreml",
        options_type=CoreMLOptions,
        converter="converters.coreml.convert",
        runner="converters.coreml.runner",
        additive_mask=True,  # transformers' own mask code emits new_ones, which coremltools cannot convert
    )
)
