"""One module per artifact format. Each module provides:

    ADDITIVE_MASK: bool  # build the float attention mask in the graph (True) or leave it to transformers
    convert(graph, spec, out_dir, options, calibration=None) -> Conversion  # writes the model file(s) into out_dir
    load_runner(artifact_dir, manifest, threads) -> Runner  # runs it in the format's real runtime
    structural_checks(artifact_dir, manifest, encoder_factory) -> dict  # optional: checks beyond parity

Modules are imported lazily so a missing optional runtime only matters for the target that needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.errors import ArtifactError

FORMAT_MODULES = {
    "onnx": "converters.onnx",
    "tflite": "converters.tflite",
    "executorch": "converters.executorch",
    "coreml": "converters.coreml",
}


@dataclass(frozen=True)
class Shape:
    """A fixed input shape a static-shape format was built for (a bucket)."""

    batch: int
    sequence: int
    name: str  # signature name or file this shape runs through


@dataclass
class Conversion:
    """What a converter wrote: the model file(s) and facts the manifest records."""

    model_file: str  # main file or directory, relative to the artifact dir
    precision: str  # e.g. "int8", "fp16", "fp32"
    runtime: str  # e.g. "onnxruntime", "ai-edge-litert"
    shapes: list[Shape] | None = None  # None: dynamic batch and sequence
    input_dtype: str = "int64"
    details: dict[str, Any] = field(default_factory=dict)


def manifest_shapes(manifest: dict) -> list[Shape] | None:
    """The fixed shapes a manifest lists (None: any shape)."""
    listed = manifest.get("shapes")
    return None if listed is None else [Shape(int(s["batch"]), int(s["sequence"]), str(s["name"])) for s in listed]


class Runner(Protocol):
    shapes: list[Shape] | None

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        """inputs: int64 (batch, sequence) arrays in graph order, already padded to ``shape`` if fixed."""
        ...


def format_module(name: str):
    if name not in FORMAT_MODULES:
        raise ArtifactError(f"artifact format {name!r} is unknown (known: {', '.join(FORMAT_MODULES)})")
    return importlib.import_module(FORMAT_MODULES[name])


def structural_checks(fmt: str, artifact_dir: Path, manifest: dict) -> dict | None:
    """The format's own checks of the artifact (spec, program execution), where it has any."""
    from pipelines.runtime import ArtifactEncoder

    checks = getattr(format_module(fmt), "structural_checks", None)
    return checks(artifact_dir, manifest, ArtifactEncoder) if checks else None


def load_runner(fmt: str, artifact_dir: Path, manifest: dict, threads: int | None = None) -> Runner:
    return format_module(fmt).load_runner(artifact_dir, manifest, threads)
