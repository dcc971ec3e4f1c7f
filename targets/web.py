"""Browsers: onnxruntime-web, int8 on WASM (SIMD + threads) and an fp16 variant for WebGPU, laid out as
transformers.js loads a local model. Verified in headless Chromium (converters.web)."""

from converters.web import WebOptions
from targets.base import ArtifactPlan, Gate, Target, register

WEB = register(
    Target(
        name="web",
        description="onnxruntime-web: int8 for WASM, fp16 for WebGPU (transformers.js layout)",
        plans=(
            ArtifactPlan(
                folder="",
                format="onnx_web",
                options=WebOptions(),
                gate=Gate(min_mean_cosine=0.99, min_cosine=0.97, max_spearman_drop=1.0),
                description="onnxruntime-web int8 (WASM)",
            ),
        ),
    )
)
