"""Core ML: an ML Program (fp16) with enumerated (batch, sequence) shapes; see converters.coreml.convert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from converters.base import AccuracyTarget, Shape
from converters.registry import ArtifactFormat, register_format

MODEL_FILE = "model.mlpackage"
MAX_ENUMERATED_SHAPES = 128  # Core ML's limit
MULTI_INPUT_ENUMERATION_TARGET = "iOS18"
EMULATION_LABEL = "emulated"  # every emulated result says so: it is not a Core ML prediction
# Where an fp16 program misses its accuracy target, these op types move to fp32, one rung at a time; the last
# rung is an fp32 program. LayerNorm first: the variance of a large residual stream loses too much in fp16
# (all-mpnet-base-v2: cosine 0.48-0.85 with fp16 LayerNorm, 1.0000 without), while PyTorch's fp16 kernels,
# which accumulate in fp32, hide it.
FP16_FALLBACKS: tuple[tuple[str, ...], ...] = (("layer_norm",), ("layer_norm", "softmax", "reduce_mean", "reduce_sum"))


@dataclass(frozen=True)
class CoreMLOptions:
    # Every (batch, sequence) pair becomes one enumerated shape; inputs are padded up to the next bucket.
    sequence_buckets: tuple[int, ...] | None = None  # None: converters.base.sequence_buckets(model limit)
    batch_sizes: tuple[int, ...] = (1,)
    precision: Literal["fp16", "fp32"] = "fp16"
    minimum_deployment_target: str = MULTI_INPUT_ENUMERATION_TARGET
    # MIL op types always kept in fp32 under fp16 (e.g. "layer_norm").
    fp32_ops: tuple[str, ...] = ()
    # fp16 only: the saved program runs op by op (coremltools reference ops, fp16 storage) on calibration
    # sentences and odd texts; below this target the next rung of FP16_FALLBACKS is converted instead.
    accuracy: AccuracyTarget | None = None



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
