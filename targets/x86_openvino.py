"""x86 servers with OpenVINO: the same embedding graph as an OpenVINO IR, computed in bf16 where the CPU has
AVX512-BF16 (AMX Xeons, AMD Zen 4 and later) and fp32 elsewhere. Where ONNX Runtime's int8 loses to it
(measured by `cli.py bench --vs-peers`), this is the x86 artifact to ship. The export times OpenVINO's compile
properties (OpenVinoOptions.compile_candidates) on calibration sentences and records the fastest per compiled
model: on an AMX Xeon, snippets off for batches (1.75-1.80x the fastest peer's batch-32 throughput for
all-MiniLM-L6-v2), the default for single sentences."""

from converters.openvino import OpenVinoOptions
from targets.base import ArtifactPlan, Gate, Target, register

X86_OPENVINO = register(
    Target(
        name="x86-openvino",
        description="OpenVINO IR (bf16 compute on AVX512-BF16/AMX CPUs, fp32 elsewhere) for Intel's x86 runtime",
        plans=(
            ArtifactPlan(
                folder="",
                format="openvino",
                options=OpenVinoOptions(precision="bf16", fp16_weights=True),
                gate=Gate(min_mean_cosine=0.995, min_cosine=0.98, max_spearman_drop=0.3),
                description="OpenVINO bf16",
            ),
        ),
    )
)
