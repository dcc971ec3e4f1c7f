"""Web artifact: the ONNX converter's int8 graph for WASM and fp16 graph for WebGPU, under the names
transformers.js looks for, with the output named as its feature-extraction pipeline reads it (the export writes
the config.json and tokenizer files it reads beside them)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from converters.base import Calibration, Conversion
from converters.onnx import OnnxOptions
from converters.onnx.convert import convert as convert_onnx
from converters.web import WASM_FILE, WEB_OUTPUT, WEBGPU_FILE, WebOptions
from core.graph import EmbeddingGraph
from core.manifest import GraphSpec


def _onnx_file(graph: EmbeddingGraph, spec: GraphSpec, options: OnnxOptions, calibration: Calibration | None,
               destination: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        conversion = convert_onnx(graph, spec, Path(scratch), options, calibration)
        os.replace(Path(scratch) / conversion.model_file, destination)
    return conversion.details


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: WebOptions,
    calibration: Calibration | None = None,
) -> Conversion:
    web_spec = replace(spec, output_name=WEB_OUTPUT)
    (out_dir / "onnx").mkdir(exist_ok=True)
    details = {"wasm": _onnx_file(graph, web_spec, options.wasm, calibration, out_dir / WASM_FILE)}
    if options.webgpu is not None:
        details["webgpu"] = {"file": WEBGPU_FILE,
                             **_onnx_file(graph, web_spec, options.webgpu, calibration, out_dir / WEBGPU_FILE)}
    return Conversion(model_file=WASM_FILE, precision=options.wasm.precision, runtime="onnxruntime-web",
                      details=details, output_name=WEB_OUTPUT)
