"""Artifact formats registered by name. A format names the module that builds it and the module that runs
it; both are imported on first use, so a missing optional runtime only matters to the target that needs it,
and running an artifact never imports a converter (nor torch, for ONNX and TFLite).

A converter module provides ``convert(graph, spec, out_dir, options, calibration) -> Conversion``.
A runner module provides ``load_runner(artifact, threads) -> Runner`` and, optionally,
``structural_checks(artifact) -> StructuralReport``; ``artifact`` is a ``core.manifest.Artifact`` (the folder and
its manifest, read once).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from converters.base import Runner, StructuralReport
from core.config import BuildConfig
from core.errors import ArtifactError, ConfigError
from core.manifest import Artifact
from core.model_source import ModelSource


@dataclass(frozen=True)
class ArtifactFormat:
    name: str
    options_type: type
    converter: str  # module path of the converter
    runner: str  # module path of the runner
    # Build the (B,1,1,S) float attention mask in the graph (True) or leave it to transformers (False).
    additive_mask: bool
    # Applies the build's options (--quantization, --isa) that this format understands to its options.
    with_build: Callable[[Any, BuildConfig], Any] | None = None
    # Dynamic-shape runtimes that compile per input shape get batches padded to a multiple of this many
    # tokens (padded positions are masked, so embeddings do not change): a few dozen shapes, not one per length.
    sequence_multiple: int = 1
    # Why a model cannot take this format, read from the model's files before anything loads (None: it can); the
    # export reports the refusal in one line and builds the target's other artifacts.
    refusal: Callable[[ModelSource], str | None] | None = None

    def converter_module(self) -> ModuleType:
        return importlib.import_module(self.converter)

    def runner_module(self) -> ModuleType:
        return importlib.import_module(self.runner)

    def load_runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        return self.runner_module().load_runner(artifact, threads)

    def structural_checks(self, artifact: Artifact) -> StructuralReport | None:
        checks = getattr(self.runner_module(), "structural_checks", None)
        return checks(artifact) if checks else None


FORMATS: dict[str, ArtifactFormat] = {}


def register_format(fmt: ArtifactFormat) -> ArtifactFormat:
    if fmt.name in FORMATS:
        raise ConfigError(f"artifact format {fmt.name!r} is already registered; pick another name")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ArtifactFormat:
    if name not in FORMATS:
        raise ArtifactError(f"artifact format {name!r} is unknown (known: {', '.join(FORMATS)})")
    return FORMATS[name]
