"""x86 servers and desktops: ONNX int8 for ONNX Runtime's CPU provider."""

from converters.onnx import OnnxOptions, QuantConfig
from targets import ArtifactPlan, Gate, Target, register

X86 = register(
    Target(
        name="x86",
        description="ONNX int8 (dynamic, per-channel weights) for ONNX Runtime on x86 CPUs",
        extra="x86",
        plans=(
            ArtifactPlan(
                folder="",
                format="onnx",
                # Unfused int8 measured faster than QAttention on AVX-512 VNNI here; fusions go to the gpu target.
                options=OnnxOptions(precision="int8", fuse=False, quant=QuantConfig(mode="dynamic", per_channel=True)),
                gate=Gate(min_mean_cosine=0.99, min_cosine=0.95, max_spearman_drop=0.5),
                description="ONNX int8",
            ),
        ),
    )
)
