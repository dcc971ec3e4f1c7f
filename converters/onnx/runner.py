"""ONNX Runtime: runs an ONNX artifact. Needs onnxruntime and numpy only (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from converters.base import Shape
from core.manifest import Artifact


class OrtRunner:
    shapes: list[Shape] | None = None

    def __init__(self, path: Path, threads: int | None, providers: list[str] | None = None) -> None:
        session_options = ort.SessionOptions()
        if threads:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            str(path), session_options, providers=[p for p in wanted if p in available] or ["CPUExecutionProvider"]
        )
        self.provider = self.session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {self.provider}"
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        return self.session.run(None, {name: inputs[name] for name in self.input_names})[0]


def load_runner(artifact: Artifact, threads: int | None) -> OrtRunner:
    return OrtRunner(artifact.model_path, threads)
