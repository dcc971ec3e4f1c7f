"""NVIDIA GPUs: ONNX fp16 (fused transformer ops, fp32 inputs/outputs) for ONNX Runtime's CUDA provider."""

from converters.onnx import OnnxOptions
from targets.base import ArtifactPlan, Gate, Target, register

GPU = register(
    Target(
        name="gpu",
        description="ONNX fp16 with transformer fusions for ONNX Runtime CUDA (TensorRT where present)",
        plans=(
            ArtifactPlan(
                folder="",
                format="onnx",
                options=OnnxOptions(precision="fp16", fuse=True),
                gate=Gate(min_mean_cosine=0.999, min_cosine=0.995, max_spearman_drop=0.1),
                description="ONNX fp16",
            ),
        ),
    )
)
