"""What every format shares: the fixed shapes a static format was built for, what a conversion wrote,
the runner protocol, and calibration sentences for converters that measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.data import EDGE_TEXTS
from core.errors import ConfigError
from core.manifest import Shape

# Fixed-shape formats trace the graph once per sequence bucket and ExecuTorch plans memory for its bound:
# past this length the artifact grows for little gain on sentences, so longer inputs truncate here (the
# manifest records where, beside the source model's own limit).
SEQUENCE_LIMIT = 512
# Calibration sentences are tokenized up to this many tokens (STS-B sentences stay well below it).
CALIBRATION_LENGTH = 128


def sequence_buckets(max_seq_length: int, requested: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The requested buckets, or powers of two from 32 below the model's limit and the limit itself
    (capped at SEQUENCE_LIMIT), so the largest bucket truncates as the source model does."""
    if requested is not None:
        if not requested:
            raise ConfigError("at least one sequence bucket is needed (or none given, to follow the model's limit)")
        return tuple(sorted(set(requested)))
    limit = min(max_seq_length, SEQUENCE_LIMIT)
    powers = [32 * 2**k for k in range(8) if 32 * 2**k < limit]
    return (*powers, limit)


def fixed_shapes(
    fmt: str, batch_sizes: tuple[int, ...], requested_buckets: tuple[int, ...] | None, max_seq_length: int
) -> list[tuple[int, int]]:
    """Every (batch, sequence) pair a fixed-shape format is built for; ConfigError on options that cannot work."""
    buckets = sequence_buckets(max_seq_length, requested_buckets)
    if not batch_sizes or min(batch_sizes) < 1 or min(buckets) < 2:
        raise ConfigError(
            f"{fmt} needs batch sizes >= 1 and sequence buckets >= 2 tokens; got {batch_sizes}, {buckets}"
        )
    if max(buckets) > max_seq_length:
        raise ConfigError(
            f"{fmt} sequence bucket {max(buckets)} exceeds the model's max_seq_length {max_seq_length}; "
            f"use buckets up to {max_seq_length}"
        )
    return [(b, s) for b in sorted(set(batch_sizes)) for s in buckets]


@dataclass
class Conversion:
    """What a converter wrote: the model file(s) and facts the manifest records."""

    model_file: str  # main file or directory, relative to the artifact dir
    precision: str  # e.g. "int8", "fp16", "fp32"
    runtime: str  # e.g. "onnxruntime", "ai-edge-litert"
    shapes: list[Shape] | None = None  # None: dynamic batch and sequence
    input_dtype: str = "int64"
    max_sequence: int | None = None  # the longest input the artifact takes; None: the model's own limit
    isa: str | None = None  # the x86 CPU class the artifact is built for (core.cpu.ISA_CLASSES); None: any
    details: dict[str, Any] = field(default_factory=dict)
    weight_files: tuple[str, ...] = ()  # files the main file loads beside it (OpenVINO's .bin)
    output_name: str | None = None  # where a format names the output for its consumers; None: the graph's own


class Runner(Protocol):
    shapes: list[Shape] | None

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        """inputs: int64 (batch, sequence) arrays in graph order, already padded to ``shape`` if fixed."""
        ...


@runtime_checkable
class TextRunner(Protocol):
    """A runtime that takes strings and tokenizes inside (MediaPipe's TextEmbedder), as the app calls it."""

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """(len(texts), dim) embeddings; ``normalize``: apply the app-side text normalisation the manifest names
        first, as the app does (False: the raw strings, to measure what it fixes)."""
        ...


@runtime_checkable
class ManyBatchRunner(Runner, Protocol):
    """A dynamic-shape runner that runs several batches at once (parallel streams): the runtime wrapper hands it
    every planned batch of a call (``encode``, an ``embed`` chunk) instead of one at a time."""

    def run_batches(self, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Each batch's output, in order."""
        ...


@runtime_checkable
class TimedInsideRunner(Protocol):
    """A runtime timed inside itself (the web artifact in the browser page: no Python round trip per batch)."""

    def latency_ms(self, batches: list[dict[str, np.ndarray]], repeats: int) -> list[float]:
        """Milliseconds per run of each batch, ``repeats`` passes over ``batches`` in order."""
        ...


@dataclass
class StructuralReport:
    """A format's own checks of an artifact beyond parity (spec, program)."""

    facts: dict[str, Any]
    # Other ways to run the artifact's own program (Core ML's saved program op by op off macOS): verify runs
    # the test vectors through each and records the worst cosine (core.manifest.Structure).
    program_runners: dict[str, Runner] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)  # what the check found that must stop the artifact


@dataclass(frozen=True)
class AccuracyTarget:
    """Accuracy-aware int8: measured on held-in calibration sentences (STS-B train) and odd short texts, the
    most sensitive linear layers are kept at higher precision until the int8 artifact reaches these cosines
    to its own fp32 graph. Set a margin above the target's gate: the gate measures held-out sentences."""

    mean_cosine: float
    min_cosine: float
    sentences: int = 128


@dataclass(frozen=True)
class Calibration:
    """Held-in sentences, tokenized on demand, for converters that measure (static int8, accuracy-aware int8).

    ``tokenize(sentences, max_length, pad_to_max_length)`` returns one int64 array per graph input, padded to
    the longest sentence or to ``max_length``.
    """

    sentences: Sequence[str]
    tokenize: Callable[[Sequence[str], int, bool], dict[str, np.ndarray]]
    # The source model's tokenizer.json, for formats that pack a tokenizer of their own (MediaPipe's vocabulary).
    tokenizer_json: str = ""
    # Facts about the model that several converters of one export measure the same way (the layers'
    # int8 sensitivity ranking), kept so the second converter does not measure them again.
    shared: dict[str, Any] = field(default_factory=dict)

    def texts(self, count: int) -> list[str]:
        """The first ``count`` sentences, length-sorted (the row order of ``batches``)."""
        return sorted(self.sentences[:count], key=len)

    def batches(
        self, count: int, batch_size: int = 32, max_length: int = 128, pad_to_max_length: bool = False
    ) -> list[dict[str, np.ndarray]]:
        """``texts(count)`` in batches; length-sorted so per-batch padding stays small."""
        chosen = self.texts(count)
        return [
            self.tokenize(chosen[i : i + batch_size], max_length, pad_to_max_length)
            for i in range(0, len(chosen), batch_size)
        ]

    def edge_texts(self, max_length: int = 128) -> list[dict[str, np.ndarray]]:
        """One batch of short, symbolic and mixed-script texts (core.data.EDGE_TEXTS)."""
        return [self.tokenize(EDGE_TEXTS, max_length, False)]


def bucket_feeds(
    calibration: Calibration, texts: Sequence[str], shapes: list[Shape], max_length: int
) -> list[tuple[Shape, dict[str, np.ndarray]]]:
    """Each text alone, padded to the smallest batch-1 bucket that fits it, as an app runs a fixed-shape model."""
    buckets = sorted((s for s in shapes if s.batch == 1), key=lambda s: s.sequence)
    if not buckets:
        raise ConfigError("measuring a fixed-shape artifact needs a batch-1 shape; add 1 to batch_sizes")
    feeds = []
    for text in texts:
        length = len(calibration.tokenize([text], max_length, False)["input_ids"][0])
        shape = next((s for s in buckets if s.sequence >= length), buckets[-1])
        feeds.append((shape, calibration.tokenize([text], shape.sequence, True)))
    return feeds
