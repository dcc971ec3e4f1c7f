"""Apple devices: Core ML ML Program, fp16 compute, enumerated sequence buckets for the Neural Engine."""

from converters.coreml import CoreMLOptions
from targets.base import ArtifactPlan, Gate, Target, register

APPLE = register(
    Target(
        name="apple",
        description="Core ML fp16 ML Program (iOS 18 / macOS 15) with enumerated shapes",
        plans=(
            ArtifactPlan(
                folder="",
                format="coreml",
                options=CoreMLOptions(batch_sizes=(1,), precision="fp16"),
                gate=Gate(min_mean_cosine=0.99, min_cosine=0.97, max_spearman_drop=0.5),
                description="Core ML fp16",
            ),
        ),
    )
)
