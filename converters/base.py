"""What every format shares: the fixed shapes a static format was built for, what a conversion wrote,
the runner protocol, and calibration sentences for converters that measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


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


@dataclass
class StructuralReport:
    """A format's own checks of an artifact beyond parity (spec, program)."""

    facts: dict[str, Any]
    # Other ways to run the artifact's own program (Core ML's saved program op by op off macOS): verify runs
    # the test vectors through each and records the worst cosine as facts[f"{name}_test_vectors_min_cosine"].
    program_runners: dict[str, Runner] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """Held-in sentences, tokenized on demand, for converters that measure (static int8, accuracy-aware int8).

    ``tokenize(sentences, max_length, pad_to_max_length)`` returns one int64 array per graph input, padded to
    the longest sentence or to ``max_length``.
    """

    sentences: Sequence[str]
    tokenize: Callable[[Sequence[str], int, bool], dict[str, np.ndarray]]

    def batches(
        self, count: int, batch_size: int = 32, max_length: int = 128, pad_to_max_length: bool = False
    ) -> list[dict[str, np.ndarray]]:
        """The first ``count`` sentences in batches; length-sorted so per-batch padding stays small."""
        chosen = sorted(self.sentences[:count], key=len)
        return [
            self.tokenize(chosen[i : i + batch_size], max_length, pad_to_max_length)
            for i in range(0, len(chosen), batch_size)
        ]
