"""Phones and ARM boards: TFLite int8 (LiteRT, XNNPACK delegate), ExecuTorch int8 (XNNPACK backend), and the
same LiteRT int8 model packed for MediaPipe's TextEmbedder (strings in, its own tokenizer, no app tokenizer code).

ExecuTorch is the PyTorch-native path: it is the successor of the qnnpack/lite-interpreter stack
(torch.ao's qnnpack quantization is deprecated, and this torch build has no XNNPACK for
optimize_for_mobile), it installs beside torch 2.13.0 without replacing it, and its XNNPACK
int8 kernels run here on x86 as on ARM, so parity and speed are measured, not assumed.
"""

from converters.base import AccuracyTarget
from converters.executorch import ExecuTorchOptions
from converters.mediapipe import MediaPipeOptions
from converters.tflite import TFLiteOptions
from targets.base import ArtifactPlan, Gate, Target, register

MOBILE_GATE = Gate(min_mean_cosine=0.99, min_cosine=0.97, max_spearman_drop=0.5)

MOBILE = register(
    Target(
        name="mobile",
        description="TFLite int8 with sequence buckets (LiteRT), ExecuTorch int8 (XNNPACK), MediaPipe TextEmbedder",
        plans=(
            ArtifactPlan(
                folder="tflite",
                format="tflite",
                # Batch 1 is the on-device case; buckets follow the model's limit, so truncation matches the source.
                # Measured per model: layers whose dynamic-range int8 costs most stay weight-only int8.
                options=TFLiteOptions(batch_sizes=(1,), quantization="int8",
                                      accuracy=AccuracyTarget(mean_cosine=0.993, min_cosine=0.98)),
                gate=MOBILE_GATE,
                description="TFLite int8",
            ),
            ArtifactPlan(
                folder="executorch",
                format="executorch",
                # Batch bound 32: the planned working memory grows with it (about 250 MB at 32x256).
                options=ExecuTorchOptions(quantization="int8", max_batch=32),
                gate=MOBILE_GATE,
                description="ExecuTorch int8 (XNNPACK)",
            ),
            ArtifactPlan(
                folder="mediapipe",
                format="mediapipe",
                # The LiteRT int8 recipe at the model's own length, packed for MediaPipe's TextEmbedder; gated on
                # strings through MediaPipe's own tokenizer, with the app-side normalisation applied.
                options=MediaPipeOptions(quantization="int8",
                                         accuracy=AccuracyTarget(mean_cosine=0.993, min_cosine=0.98)),
                gate=MOBILE_GATE,
                description="MediaPipe TextEmbedder int8",
            ),
        ),
    )
)
