"""ONNX export -> OpenVINO IR. The graph is the onnx format's own fp32 export, so both x86 runtimes run the
same computation; OpenVINO applies its transformations when it compiles the IR on the target CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

from converters.base import Calibration, Conversion
from converters.onnx.convert import export_fp32
from converters.openvino import MODEL_FILE, RUNTIME, WEIGHTS_FILE, OpenVinoFacts, OpenVinoOptions
from converters.openvino.tuning import choose_properties
from core.errors import require
from core.graph import EmbeddingGraph
from core.manifest import GraphSpec
from core.schema import encode


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: OpenVinoOptions,
    calibration: Calibration | None = None,  # sentences to time the compile candidates on
) -> Conversion:
    ov = require("openvino", "x86")
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        exported = Path(scratch) / "exported.onnx"
        export_fp32(graph, spec, exported)
        model = ov.convert_model(str(exported))
        ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=options.fp16_weights)
    compile_choice = choose_properties(out_dir / MODEL_FILE, options.precision, options.compile_candidates, calibration)
    return Conversion(
        model_file=MODEL_FILE,
        weight_files=(WEIGHTS_FILE,),
        precision=options.precision,
        runtime=RUNTIME,
        details={
            "converter": f"openvino {ov.get_version()} convert_model from the ONNX export",
            "weights": "fp16" if options.fp16_weights else "fp32",
            "inference_precision": options.precision,
            "op_counts": _op_counts(model),
            **encode(OpenVinoFacts(compile=compile_choice)),
        },
    )


def _op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return dict(sorted(counts.items()))
