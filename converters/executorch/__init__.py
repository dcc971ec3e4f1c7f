"""ExecuTorch: one .pte lowered to XNNPACK, bounded dynamic batch and sequence; see converters.executorch.convert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from converters.registry import ArtifactFormat, register_format

MODEL_FILE = "model.pte"
RUNTIME = "executorch"
METHOD = "forward"
QUANTIZED_KERNELS_LIBRARY = "libexecutorch_kernels_quantized"  # the wheel's build of quantized_ops_lib
EMBEDDING_KERNEL = "quantized_decomposed::embedding_byte.dtype_out"


@dataclass(frozen=True)
class ExecuTorchOptions:
    quantization: Literal["int8", "fp32"] = "int8"  # the linear layers
    embedding: Literal["int8", "fp32"] = "int8"  # the word-embedding table; int8 needs the quantized kernels
    max_batch: int = 64
    max_sequence: int | None = None  # None: the model's max_seq_length


EXECUTORCH = register_format(
    ArtifactFormat(
        name="executorch",
        options_type=ExecuTorchOptions,
        converter="converters.executorch.convert",
        runner="converters.executorch.runner",
        # With transformers' own mask, lowering fails ("tensors used as indices must be long...").
        additive_mask=True,
    )
)
