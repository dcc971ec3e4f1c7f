"""ONNX: export, transformer fusions, int8 (dynamic / static QDQ) and fp16; run by ONNX Runtime.

Options live here (no torch): targets import them without loading the export stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from converters.base import AccuracyTarget
from converters.registry import ArtifactFormat, register_format
from core.config import BuildConfig
from core.cpu import PORTABLE_ISA, isa_class


@dataclass(frozen=True)
class FusionConfig:
    """ONNX Runtime transformer fusions (onnxruntime.transformers.optimizer), toggled one by one."""

    attention: bool = True
    skip_layer_norm: bool = True
    embed_layer_norm: bool = True
    bias_gelu: bool = True
    gelu_approximation: bool = False  # FastGelu changes numerics; off by default


@dataclass(frozen=True)
class QuantConfig:
    """int8 settings. Per-channel weights matter: per-tensor loses about 3 points of mean cosine here."""

    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    # The CPU class the artifact is for (core.cpu.ISA_CLASSES): full-range int8 weights where the class never
    # saturates u8 x s8 products (VNNI, AMX), weights within [-64, 64] (reduce_range) elsewhere.
    isa: str = PORTABLE_ISA
    # Where the runtime is not an x86 CPU (WASM): True for full-range weights, False for [-64, 64]; None: by isa.
    full_range: bool | None = None
    # Regular expressions over MatMul node names always kept out of per-tensor dynamic int8.
    keep_fp32: tuple[str, ...] = ()
    # Measured per model at export: which further MatMuls to keep (None: only keep_fp32).
    accuracy: AccuracyTarget | None = None
    # How the kept nodes are stored: "fp32", or "block_int8" (MatMulNBits, 8-bit weights per block of 32 with
    # int8 compute on per-block activation scales): fp32's parity at int8 size. Only classes with full-range
    # int8 (VNNI, AMX) get blocks; elsewhere kept nodes stay fp32 (converters.onnx.quantize says why).
    keep_as: Literal["fp32", "block_int8"] = "fp32"
    # Activation smoothing (converters.smoothing) with accuracy-aware int8: the alphas to try; the export measures
    # each and none, and keeps the best (the manifest records every trial). () for none.
    smoothing: tuple[float, ...] = ()
    # Word-embedding table: ONNX Runtime quantizes Gather data per tensor (one scale for 30k rows), which costs
    # the worst sentences most; "per_row" stores int8 rows with one fp32 scale each (same size), "fp32" keeps it.
    embedding: Literal["per_tensor", "per_row", "fp32"] = "per_tensor"
    calibration_sentences: int = 256  # static only


@dataclass(frozen=True)
class OnnxOptions:
    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    fuse: bool = True
    fusion: FusionConfig = field(default_factory=FusionConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    # fp16: op types left in fp32 if parity needs it (LayerNorm sums can pass fp16's range).
    fp16_keep_fp32_ops: tuple[str, ...] = ()


def with_build(options: OnnxOptions, config: BuildConfig) -> OnnxOptions:
    """--quantization and --isa apply to int8 artifacts; fp16 and fp32 ones stay as they are."""
    if options.precision != "int8":
        return options
    quant = options.quant
    if config.quantization is not None:  # one of core.config.QUANTIZATION_MODES: the build checked it
        quant = replace(quant, mode=config.quantization)
        if quant.mode == "static":
            # QDQ quantizes the standard ops only (a fused Attention would stay fp32): ONNX Runtime fuses the
            # QDQ groups itself when it loads the model.
            options = replace(options, fuse=False)
    if config.isa is not None:
        quant = replace(quant, isa=isa_class(config.isa).name)
    return replace(options, quant=quant)


ONNX = register_format(
    ArtifactFormat(
        name="onnx",
        options_type=OnnxOptions,
        converter="converters.onnx.convert",
        runner="converters.onnx.runner",
        # Keep transformers' own 2D-mask pattern: ONNX Runtime's Attention fusion matches it.
        additive_mask=False,
        with_build=with_build,
    )
)
