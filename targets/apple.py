"""Apple devices: Core ML ML Program, fp16 compute, enumerated sequence buckets for the Neural Engine."""

from converters.base import AccuracyTarget
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
                # The saved fp16 program is checked op by op on a few sentences; LayerNorm and then more move to
                # fp32 only where the measurement says so (converters.coreml.FP16_FALLBACKS).
                options=CoreMLOptions(batch_sizes=(1,), precision="fp16",
                                      accuracy=AccuracyTarget(mean_cosine=0.995, min_cosine=0.98, sentences=4)),
                gate=Gate(min_mean_cosine=0.99, min_cosine=0.97, max_spearman_drop=0.5),
                description="Core ML fp16",
            ),
        ),
    )
)
