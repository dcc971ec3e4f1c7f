"""Release archives: one .tar.gz per artifact, and safe extraction for `verify ARCHIVE`."""

from __future__ import annotations

import contextlib
import gzip
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import ArtifactError
from core.manifest import check_files, find_artifacts, read_manifest


def safe_extract(archive: Path, destination: Path) -> None:
    """Extract regular files and folders only, refusing any member that would land outside ``destination``."""
    destination = destination.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                target = (destination / member.name).resolve()
                if not target.is_relative_to(destination):
                    raise ArtifactError(f"archive {archive.name} has a member escaping its folder: {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise ArtifactError(f"archive {archive.name} has a link or device member: {member.name!r}")
            tar.extractall(destination, filter="data")
    except tarfile.TarError as exc:
        raise ArtifactError(f"{archive} is not a readable release archive ({exc})") from None


@contextlib.contextmanager
def open_artifact_source(path: Path) -> Iterator[Path]:
    """A folder as is, or an archive extracted into a temporary folder for the duration."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
            safe_extract(path, Path(scratch))
            yield Path(scratch)
    else:
        yield path


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes for the same files: no times, owners or modes from this machine."""
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_archive(artifact_dir: Path, archive: Path) -> Path:
    """A .tar.gz of one artifact folder (deterministic order and metadata), written atomically."""
    check_files(artifact_dir, read_manifest(artifact_dir))  # never package a tampered artifact
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            root = archive.name.removesuffix(".tar.gz")
            for path in sorted(artifact_dir.rglob("*")):
                tar.add(path, arcname=f"{root}/{path.relative_to(artifact_dir).as_posix()}", recursive=False,
                        filter=_reset)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def package_all(root: Path, out: Path | None = None) -> list[Path]:
    """One archive per artifact under ``root`` into ``out`` (default: <root>/release)."""
    out = out or root / "release"
    archives = []
    for artifact_dir in find_artifacts(root):
        if out in artifact_dir.parents:
            continue
        manifest = read_manifest(artifact_dir)
        parts = artifact_dir.relative_to(root).parts if artifact_dir != root else (manifest["target"],)
        model = manifest["model"]["name"] + (f"-pca{manifest['embedding_dim']}" if manifest.get("pca") else "")
        name = "-".join((model, *parts))
        archives.append(write_archive(artifact_dir, out / f"{name}.tar.gz"))
    return archives
