"""manifest.json: the contract an app reads, and the record that lets `verify` and `export --config` work.

Every file in the artifact except manifest.json and report.md (which record results about the
others) is listed with its sha256; `check_files` fails on a missing, extra-large or altered file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from core.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA = "embedding-toolchain/manifest/1"
UNCHECKED_FILES = {MANIFEST, "report.md"}
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "litert-torch",
    "ai-edge-litert",
    "executorch",
    "coremltools",
    "numpy",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(artifact_dir: Path) -> list[Path]:
    """Every file in the artifact that the checksums cover, sorted (directories such as .mlpackage are walked)."""
    files = (p for p in artifact_dir.rglob("*") if p.is_file())
    return sorted(p for p in files if p.relative_to(artifact_dir).as_posix() not in UNCHECKED_FILES)


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file in a directory (an .mlpackage is a folder)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checksums(artifact_dir: Path) -> dict[str, str]:
    return {p.relative_to(artifact_dir).as_posix(): sha256_file(p) for p in artifact_files(artifact_dir)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    if not Path(artifact_dir).is_dir():
        raise ArtifactError(f"{str(artifact_dir)!r} is not a directory; pass an artifact folder from `cli.py export`")
    if not path.is_file():
        raise ArtifactError(f"{str(artifact_dir)!r} has no {MANIFEST}; it was not made by this toolchain")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.__class__.__name__}); the artifact is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{path} is not a manifest of this toolchain (schema is not {SCHEMA!r})")
    return manifest


def check_files(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise ArtifactError naming the first file that is missing, unexpected or altered."""
    expected: dict[str, str] = manifest.get("files", {})
    for name, digest in sorted(expected.items()):
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(f"{name} is listed in the manifest but missing from {artifact_dir}")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{name} does not match its sha256 in the manifest: the file was altered or truncated")
    extra = sorted(set(checksums_names(artifact_dir)) - set(expected))
    if extra:
        raise ArtifactError(f"{extra[0]} is in {artifact_dir} but not in the manifest; the artifact was modified")


def checksums_names(artifact_dir: Path) -> list[str]:
    return [p.relative_to(artifact_dir).as_posix() for p in artifact_files(artifact_dir)]


def find_artifacts(path: Path) -> list[Path]:
    """An artifact dir itself, or every artifact dir below a target/model folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.exists():
        raise ArtifactError(f"{str(path)!r} does not exist; pass an artifact directory made by `cli.py export`")
    found = sorted(p.parent for p in path.rglob(MANIFEST) if ".tmp" not in p.parent.name)
    if not found:
        raise ArtifactError(f"no artifact (no {MANIFEST}) found under {str(path)!r}; it was not made by this toolchain")
    return found
