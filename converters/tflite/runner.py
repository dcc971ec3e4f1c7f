"""LiteRT: runs a TFLite artifact through its per-bucket signatures. Needs ai-edge-litert and numpy (no torch)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from converters.base import Shape
from core.errors import ArtifactError, require
from core.manifest import Artifact


class TFLiteRunner:
    """One interpreter (XNNPACK is its default delegate) and one signature runner per bucket."""

    def __init__(self, model_path: Path, shapes: list[Shape], threads: int | None) -> None:
        interpreter_module = require("ai_edge_litert.interpreter", "mobile")
        self.shapes: list[Shape] | None = shapes
        self.description = f"ai-edge-litert {metadata.version('ai-edge-litert')} (XNNPACK delegate)"
        self._interpreter = interpreter_module.Interpreter(model_path=str(model_path), num_threads=threads)
        available = self._interpreter.get_signature_list()
        missing = [s.name for s in shapes if s.name not in available]
        if missing:
            raise ArtifactError(f"{model_path.name} has no signature {missing[0]!r}; the manifest does not match it")
        self._runners = {s.name: self._interpreter.get_signature_runner(s.name) for s in shapes}
        self._input_dtypes = {
            name: {k: v["dtype"] for k, v in runner.get_input_details().items()}
            for name, runner in self._runners.items()
        }

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        if shape is None or shape.name not in self._runners:
            raise ArtifactError(f"TFLite runs only its fixed shapes {[s.name for s in self.shapes]}; got {shape}")
        feed = {}
        for name, dtype in self._input_dtypes[shape.name].items():
            array = inputs[name]
            if array.shape != (shape.batch, shape.sequence):
                raise ArtifactError(f"input {name} has shape {array.shape}; signature {shape.name} needs it padded")
            feed[name] = array.astype(dtype, copy=False)  # the converter downcasts int64 ids to int32
        (output,) = self._runners[shape.name](**feed).values()
        return np.asarray(output, dtype=np.float32)


def load_runner(artifact: Artifact, threads: int | None) -> TFLiteRunner:
    if not artifact.manifest.shapes:
        raise ArtifactError("a TFLite manifest must list its fixed shapes; the artifact is incomplete")
    return TFLiteRunner(artifact.model_path, list(artifact.manifest.shapes), threads)
