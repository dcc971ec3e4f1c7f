"""OpenVINO runtime on CPU. Needs openvino and numpy only (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.base import Shape
from core.cpu import cpu_flags
from core.errors import require

# OpenVINO compiles primitives for each new input shape on first use (milliseconds each): sequences are
# padded to a multiple of this so a service meets a few dozen shapes, not one per length. Padded positions
# have mask 0, which the graph's pooling and attention ignore, so the embedding does not change.
SEQUENCE_MULTIPLE = 16


class OpenVinoRunner:
    """One compiled model and infer request; dynamic batch and sequence (padded to SEQUENCE_MULTIPLE)."""

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
        length = next(iter(inputs.values())).shape[1]
        extra = -length % SEQUENCE_MULTIPLE
        feeds = {name: np.pad(inputs[name], ((0, 0), (0, extra))) if extra else inputs[name]
                 for name in self.input_names}
        result = self._request.infer(feeds)
        return np.asarray(result[self._output], dtype=np.float32)


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> OpenVinoRunner:
    return OpenVinoRunner(Path(artifact_dir) / manifest["file"], threads, manifest.get("precision", "fp32"))
