"""Browsers: onnxruntime-web, int8 on WASM (SIMD + threads) and an fp16 variant for WebGPU, laid out as
transformers.js loads a local model. Verified in headless Chromium (converters.web)."""

from dataclasses import replace

from converters.base import AccuracyTarget
from converters.web import WebOptions
from targets.base import ArtifactPlan, Gate, Target, register

_WASM = WebOptions().wasm

WEB = register(
    Target(
        name="web",
        description="onnxruntime-web: int8 for WASM, fp16 for WebGPU (transformers.js layout)",
        plans=(
            ArtifactPlan(
                folder="",
                format="onnx_web",
                # Kept (fp32) layers cost WASM time and download bytes: kept only where a model's mean needs them
                # (MPNet: 0.88 with none); the worst sentences are left to the gate, which measures them held-out.
                options=WebOptions(wasm=replace(_WASM, quant=replace(
                    _WASM.quant, accuracy=AccuracyTarget(mean_cosine=0.993, min_cosine=0.9)))),
                gate=Gate(min_mean_cosine=0.99, min_cosine=0.97, max_spearman_drop=1.0),
                description="onnxruntime-web int8 (WASM)",
            ),
        ),
    )
)
