"""Web: the embedding graph for onnxruntime-web in the browser, laid out as transformers.js loads a local model
(``onnx/model_quantized.onnx`` for WASM, ``onnx/model_fp16.onnx`` for WebGPU, tokenizer.json, config.json).

Verified where it runs: headless Chromium (Debian's ``chromium``) loads the artifact from a local static server
sent cross-origin isolated (COOP/COEP: WASM threads need SharedArrayBuffer) and embeds the sentences the Python
side sends; the numbers come back to the gate. The JavaScript packages are pinned in package.json here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from converters.onnx import FusionConfig, OnnxOptions, QuantConfig
from converters.registry import ArtifactFormat, register_format
from core.schema import Range

# transformers.js reads the first of last_hidden_state / logits / token_embeddings; with its default
# `pooling: "none"` the pooled, normalised embedding comes back as it is.
WEB_OUTPUT = "last_hidden_state"
WASM_FILE = "onnx/model_quantized.onnx"  # transformers.js dtype "q8", its default on WASM
WEBGPU_FILE = "onnx/model_fp16.onnx"  # transformers.js dtype "fp16"


@dataclass(frozen=True)
class WebOptions:
    # Fused int8: the fused graph ran in 3.6 ms at batch 1 in WASM against 5.9 ms unfused (MiniLM-L6, 2 threads, short
    # STS-B sentences);
    # block-wise (MatMulNBits) and fp32 kept layers both cost WASM time, so none are kept by default. Full-range
    # weights: onnxruntime-web's WASM SIMD kernel widens u8 x s8 to 16 bits before it multiplies (no saturation);
    # its pinned 1.30 build has no relaxed-SIMD variant, whose dot products would take 7-bit operands.
    # EmbedLayerNormalization stays unfused: fused, its word-embedding table is quantized per tensor (one scale
    # for every row), which costs the worst sentences most; unfused, the table is int8 per row.
    wasm: OnnxOptions = field(default_factory=lambda: OnnxOptions(
        precision="int8", fuse=True, fusion=FusionConfig(embed_layer_norm=False),
        quant=QuantConfig(mode="dynamic", per_channel=True, embedding="per_row", full_range=True)))
    # fp16 with the standard ops only: WebGPU runs every op on the GPU, contrib fusions may fall back to WASM.
    webgpu: OnnxOptions | None = field(default_factory=lambda: OnnxOptions(precision="fp16", fuse=False))
    # WASM threads the page asks for (the browser's figure in the manifest uses these)
    threads: Annotated[int, Range(1, 256)] = 2


WEB = register_format(
    ArtifactFormat(
        name="onnx_web",
        options_type=WebOptions,
        converter="converters.web.convert",
        runner="converters.web.runner",
        additive_mask=False,
    )
)
