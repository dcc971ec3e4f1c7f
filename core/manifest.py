"""manifest.json: the contract an app reads, and the record that lets `verify` and `export --config` work.

Every file in the artifact except manifest.json and report.md (which record results about the
others), and a signed release's model.sig and provenance.json (written after it, covering it), is listed with its
sha256; `check_files` fails on a missing, extra-large or altered file.
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

from core.errors import ArtifactError, ToolchainError
from core.safe_io import contained, field, read_json

MANIFEST = "manifest.json"
SCHEMA = "embedding-toolchain/manifest/1"
SIGNATURE = "model.sig"  # model-signing's bundle over every file of a signed artifact (pipelines.signing)
PROVENANCE = "provenance.json"  # the in-toto statement signed with it
UNCHECKED_FILES = {MANIFEST, "report.md", SIGNATURE, PROVENANCE}
MAX_MANIFEST_BYTES = 4 << 20  # manifest.json and report.md: a few kB in practice
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
    "openvino",
    "mediapipe",
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


def file_sizes(artifact_dir: Path) -> dict[str, int]:
    """Bytes of every checksummed file: archive extraction refuses a member of another size before writing it."""
    return {p.relative_to(artifact_dir).as_posix(): p.stat().st_size for p in artifact_files(artifact_dir)}


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


# What every reader of a manifest relies on; results (parity, speed, verdict) are optional.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "target": str, "artifact": str, "format": str, "file": str, "runtime": str,
    "embedding_dim": int, "inputs": list, "output": dict, "tokenizer": dict, "model": dict, "gate": dict,
    "files": dict, "build": dict, "pca": (dict, type(None)), "shapes": (list, type(None)),
}
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "prompts": dict, "default_prompt_name": (str, type(None)), "isa": (dict, type(None)), "file_bytes": dict,
    "graph": dict, "normalized": bool, "size_bytes": int, "precision": str, "vectors": (dict, type(None)),
    "dims_sweep": (dict, type(None)), "arm64": dict,
}
NUMBER = (int, float)
# What the reports read of the dims sweep and of a distilled model's record (pipelines.dims, pipelines.distill).
SWEEP_FIELDS = {"max_drop": NUMBER, "smallest_within_max_drop": int, "rows": list}
SWEEP_ROW_FIELDS = {"dims": int, "precision": str, "bytes_per_vector": int, "spearman": NUMBER,
                    "spearman_drop": NUMBER, "recall_at_10": NUMBER, "mrr": NUMBER, "mrr_drop": NUMBER}
DISTILLATION_FIELDS = {"teacher": str, "kept_layers": list, "teacher_layers": int, "spearman_teacher": NUMBER,
                       "spearman_student": NUMBER, "seconds": NUMBER, "matryoshka_dims": (list, type(None))}
# The gate the artifact passed at export: a record that layouts copy for apps (verify applies the target's own).
GATE_FIELDS = {"min_mean_cosine": NUMBER, "min_cosine": NUMBER, "max_spearman_drop": NUMBER, "pca_extra_drop": NUMBER}
SHA256_HEX = frozenset("0123456789abcdef")


def validate_manifest(manifest: dict[str, Any], artifact_dir: Path, where: str) -> None:
    """Types of every field a reader uses, and every path in it inside the artifact: a damaged or hostile manifest
    is one ArtifactError naming what is wrong, never a KeyError later or a read outside the folder."""
    for key, kind in REQUIRED_FIELDS.items():
        field(manifest, key, kind, ArtifactError, where)
    for key, kind in OPTIONAL_FIELDS.items():
        if key in manifest:
            field(manifest, key, kind, ArtifactError, where)
    if manifest["embedding_dim"] <= 0:
        raise ArtifactError(f"{where}: 'embedding_dim' must be positive")
    contained(artifact_dir, manifest["file"], ArtifactError, f"{where} 'file'")
    tokenizer = manifest["tokenizer"]
    contained(artifact_dir, field(tokenizer, "file", str, ArtifactError, f"{where} tokenizer"), ArtifactError,
              f"{where} tokenizer 'file'")
    field(tokenizer, "pad_token_id", int, ArtifactError, f"{where} tokenizer")
    if manifest["pca"] is not None:
        contained(artifact_dir, field(manifest["pca"], "file", str, ArtifactError, f"{where} pca"), ArtifactError,
                  f"{where} pca 'file'")
    for spec in manifest["inputs"]:
        field(spec if isinstance(spec, dict) else {}, "name", str, ArtifactError, f"{where} inputs")
    for key in ("name", "source", "sha256"):
        field(manifest["model"], key, str, ArtifactError, f"{where} model")
    check_fields(manifest["gate"], GATE_FIELDS, ArtifactError, f"{where} gate")
    check_fields(manifest["model"].get("distillation"), DISTILLATION_FIELDS, ArtifactError,
                 f"{where} model.distillation")
    sweep = manifest.get("dims_sweep")
    check_fields(sweep, SWEEP_FIELDS, ArtifactError, f"{where} dims_sweep")
    for row in sweep["rows"] if sweep else []:
        check_fields(row if isinstance(row, dict) else {}, SWEEP_ROW_FIELDS, ArtifactError, f"{where} dims_sweep row")
    for name, digest in manifest["files"].items():
        contained(artifact_dir, name, ArtifactError, f"{where} 'files'")
        if not isinstance(digest, str) or len(digest) != 64 or not SHA256_HEX.issuperset(digest):
            raise ArtifactError(f"{where}: the checksum of {name!r} is not a sha256 hex digest")
    for name, size in manifest.get("file_bytes", {}).items():
        if name not in manifest["files"] or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ArtifactError(f"{where}: 'file_bytes' has a bad entry for {name!r}")


def check_fields(entry: dict | None, kinds: dict, error: type[ToolchainError], where: str) -> None:
    """Every key of ``kinds`` present in ``entry`` with its type (nothing to check for None)."""
    for key, kind in kinds.items() if entry is not None else ():
        field(entry, key, kind, error, where)


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST
    if not artifact_dir.is_dir():
        raise ArtifactError(f"{str(artifact_dir)!r} is not a directory; pass an artifact folder from `cli.py export`")
    if not path.is_file():
        raise ArtifactError(f"{str(artifact_dir)!r} has no {MANIFEST}; it was not made by this toolchain")
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symlink; an artifact's manifest is a plain file")
    manifest = read_json(path, ArtifactError, "artifact manifest", cap=MAX_MANIFEST_BYTES)
    if manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{path} is not a manifest of this toolchain (schema is not {SCHEMA!r})")
    validate_manifest(manifest, artifact_dir, str(path))
    return manifest


def check_files(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise ArtifactError naming the first file that is missing, unexpected, a symlink, or altered."""
    links = sorted(p.relative_to(artifact_dir).as_posix() for p in artifact_dir.rglob("*") if p.is_symlink())
    if links:
        raise ArtifactError(f"{links[0]} in {artifact_dir} is a symlink; an artifact holds plain files only")
    expected: dict[str, str] = manifest.get("files", {})
    sizes: dict[str, int] = manifest.get("file_bytes", {})
    for name, digest in sorted(expected.items()):
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(f"{name} is listed in the manifest but missing from {artifact_dir}")
        if name in sizes and path.stat().st_size != sizes[name]:
            raise ArtifactError(f"{name} has {path.stat().st_size} bytes, the manifest says {sizes[name]}: the file "
                                "was altered or truncated")
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
