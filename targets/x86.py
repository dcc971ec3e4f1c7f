"""x86 servers and desktops: ONNX int8 for ONNX Runtime on x86 CPUs.

Recipe: per-channel dynamic int8 for the weight MatMuls, word embeddings int8 with one scale per row, and,
measured per model at export, the MatMuls whose int8 error costs most parity stored as block-wise int8
(MatMulNBits) instead, until the model reaches the calibration target below (converters.onnx.quantize).
Unfused: QAttention measured slower here with no parity gain.
"""

from converters.onnx import AccuracyTarget, OnnxOptions, QuantConfig
from targets.base import ArtifactPlan, Gate, Target, register

X86 = register(
    Target(
        name="x86",
        description="ONNX int8 (dynamic, per-channel weights, accuracy-aware per model) for ONNX Runtime on x86",
        plans=(
            ArtifactPlan(
                folder="",
                format="onnx",
                options=OnnxOptions(
                    precision="int8",
                    fuse=False,
                    quant=QuantConfig(
                        mode="dynamic",
                        per_channel=True,
                        embedding="per_row",
                        keep_as="block_int8",
                        # A margin above the gate: calibration is held-in (STS-B train), the gate held-out.
                        accuracy=AccuracyTarget(mean_cosine=0.997, min_cosine=0.985),
                    ),
                ),
                gate=Gate(min_mean_cosine=0.995, min_cosine=0.98, max_spearman_drop=0.5),
                description="ONNX int8",
            ),
        ),
    )
)
