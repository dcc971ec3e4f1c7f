"""x86 servers and desktops: ONNX int8 for ONNX Runtime on x86 CPUs.

Recipe chosen by measured parity (converters.onnx.rank_matmul_sensitivity / select_keep_fp32 on
STS-B dev): per-channel dynamic int8 for the weight MatMuls, word embeddings int8 with one scale
per row, and the three MatMuls whose int8 error costs most parity stored as block-wise int8
(MatMulNBits) instead. Unfused: QAttention measured slower here with no parity gain.
"""

from converters.onnx import OnnxOptions, QuantConfig
from targets.base import ArtifactPlan, Gate, Target, register

# The MatMuls most sensitive to per-tensor activation quantization in all-MiniLM-L6-v2, most sensitive first.
SENSITIVE_MATMULS = (
    r"^/encoder/encoder/layer\.0/output/dense/MatMul$",
    r"^/encoder/encoder/layer\.4/intermediate/dense/MatMul$",
    r"^/encoder/encoder/layer\.2/output/dense/MatMul$",
)

X86 = register(
    Target(
        name="x86",
        description="ONNX int8 (dynamic, per-channel weights, accuracy-aware) for ONNX Runtime on x86 CPUs",
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
                        keep_fp32=SENSITIVE_MATMULS,
                        keep_as="block_int8",
                    ),
                ),
                gate=Gate(min_mean_cosine=0.995, min_cosine=0.97, max_spearman_drop=0.5),
                description="ONNX int8",
            ),
        ),
    )
)
