"""OpenVINO runtime on CPU. Needs openvino and numpy only (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.base import Shape
from core.cpu import cpu_flags
from core.errors import require


class OpenVinoRunner:
    """One compiled model and infer request; dynamic batch and sequence (the format's sequence_multiple keeps
    the number of distinct shapes small)."""

    shapes: list[Shape] | None = None

    def __init__(self, model_path: Path, threads: int | None, precision: str) -> None:
        ov = require("openvino", "x86")
        # bf16 only where the CPU has it; elsewhere OpenVINO computes in fp32.
        hint = "bf16" if precision == "bf16" and "avx512_bf16" in cpu_flags() else "f32"
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self.description = f"openvino {ov.get_version().split('-')[0]} CPU ({hint})"

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        result = self._request.infer({name: inputs[name] for name in self.input_names})
        return np.asarray(result[self._output], dtype=np.float32)


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> OpenVinoRunner:
    return OpenVinoRunner(Path(artifact_dir) / manifest["file"], threads, manifest.get("precision", "fp32"))
