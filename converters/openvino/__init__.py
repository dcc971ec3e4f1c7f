"""OpenVINO IR (model.xml + model.bin) for Intel's runtime on x86 CPUs, converted from the ONNX export.

OpenVINO is a second x86 runtime beside ONNX Runtime: it runs bf16 matrix math on CPUs with AVX512-BF16
(AMX Xeons, AMD Zen 4 and later), which ONNX Runtime's CPU provider cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from converters.registry import ArtifactFormat, register_format

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"  # ov.save_model writes it beside the .xml
RUNTIME = "openvino"


@dataclass(frozen=True)
class OpenVinoOptions:
    # Compute precision the runner asks OpenVINO for. "bf16" falls back to fp32 on a CPU without AVX512-BF16
    # (the manifest records the hint; the runtime states what it ran).
    precision: Literal["fp32", "bf16"] = "bf16"
    # Weights stored fp16 in model.bin (half the size; OpenVINO widens them at load), else fp32.
    fp16_weights: bool = True


OPENVINO = register_format(
    ArtifactFormat(
        name="openvino",
        options_type=OpenVinoOptions,
        converter="converters.openvino.convert",
        runner="converters.openvino.runner",
        additive_mask=False,  # converted from the same ONNX export as the onnx format
        # OpenVINO compiles primitives for each new input shape on first use (milliseconds each).
        sequence_multiple=16,
    )
)
