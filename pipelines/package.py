"""Release archives: one .tar.gz per artifact (or per artifact in a library's layout), and safe extraction for
`verify ARCHIVE`."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import ArtifactError, ConfigError
from core.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    UNCHECKED_FILES,
    Artifact,
    check_files,
    find_artifacts,
    parse_manifest,
    read_artifact,
)
from core.output_paths import check_output_folder, check_outside
from core.safe_io import UnpackBudget, reading_archive
from pipelines.layouts import Layout, write_layout
from pipelines.signing import sign

MAX_ARCHIVE_BYTES = 8 << 30  # unpacked; larger than any artifact this toolchain writes


def safe_extract(archive: Path, destination: Path) -> None:
    """Extract a release archive after checking every member: regular files and folders only, each inside
    ``destination`` and listed once, each file of the size its manifest records (read first, size-capped), so
    a hostile archive writes nothing outside and nothing larger than it claims."""
    destination = destination.resolve()
    with reading_archive(archive, ArtifactError, "release archive"), tarfile.open(archive, "r:*") as tar:
        members = _checked_members(archive, tar, destination)
        tar.extractall(destination, members=members, filter="data")


def _checked_members(archive: Path, tar: tarfile.TarFile, destination: Path) -> list[tarfile.TarInfo]:
    members, seen = [], set()
    budget = UnpackBudget(archive, MAX_ARCHIVE_BYTES, ArtifactError)
    for member in tar:
        budget.admit(member.name, member.size)  # on its header: the stream is not read past a bomb
        target = (destination / member.name).resolve()
        if member.name.startswith("/") or not target.is_relative_to(destination) or target == destination:
            raise ArtifactError(f"archive {archive.name} has a member escaping its folder: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise ArtifactError(f"archive {archive.name} has a link or device member: {member.name!r}")
        if target in seen:
            raise ArtifactError(f"archive {archive.name} lists {member.name!r} twice")
        seen.add(target)
        members.append(member)
    _check_sizes_against_manifest(archive, tar, members)
    return members


def _check_sizes_against_manifest(archive: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> None:
    """Each artifact's manifest (read from the archive, capped) names its files' sizes: a member of another size, or
    one no manifest lists, is refused before anything is written."""
    files = {m.name: m for m in members if m.isfile()}
    manifests = [name for name in files if name.rsplit("/", 1)[-1] == MANIFEST]
    if not manifests:
        raise ArtifactError(f"archive {archive.name} holds no {MANIFEST}; it is not a release of this toolchain")
    covered = set()
    for name in manifests:
        handle = tar.extractfile(files[name])
        try:
            data = json.loads(handle.read(MAX_MANIFEST_BYTES).decode("utf-8")) if handle else None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise ArtifactError(f"archive {archive.name}: {name} is not a readable manifest")
        manifest = parse_manifest(data, f"archive {archive.name}: {name}")
        root = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        sizes = manifest.file_bytes
        for unchecked in UNCHECKED_FILES:
            member = files.get(f"{root}{unchecked}")
            if member is not None and member.size > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"archive {archive.name}: {member.name} is larger than any {unchecked}")
            covered.add(f"{root}{unchecked}")
        for listed in manifest.files:
            member = files.get(f"{root}{listed}")
            if member is not None and listed in sizes and member.size != sizes[listed]:
                raise ArtifactError(f"archive {archive.name}: {member.name} has {member.size} bytes, its manifest "
                                    f"says {sizes[listed]}")
            covered.add(f"{root}{listed}")
    unlisted = sorted(set(files) - covered)
    if unlisted:
        raise ArtifactError(f"archive {archive.name}: {unlisted[0]} is in no manifest; the archive was modified")


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
    check_files(read_artifact(artifact_dir))  # never package a tampered artifact
    return archive_folder(artifact_dir, archive)


def archive_folder(folder: Path, archive: Path) -> Path:
    """A .tar.gz of ``folder`` (deterministic order and metadata), written atomically."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            root = archive.name.removesuffix(".tar.gz")
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=f"{root}/{path.relative_to(folder).as_posix()}", recursive=False,
                        filter=_reset)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def archive_name(root: Path, artifact: Artifact) -> str:
    manifest = artifact.manifest
    parts = artifact.folder.relative_to(root).parts if artifact.folder != root else (manifest.target,)
    model = manifest.model.name + (f"-pca{manifest.embedding_dim}" if manifest.pca else "")
    return "-".join((model, *parts))


def package_all(root: Path, out: Path | None = None, layout: Layout | None = None,
                sign_key: Path | None = None) -> list[Path]:
    """One archive per artifact under ``root`` into ``out`` (default: <root>/release, beside ``root`` when it is one
    artifact: never inside an artifact, whose checksums it would break); with a layout, one per
    artifact the layout takes, holding that layout (pipelines.layouts) instead of the artifact. With ``sign_key``,
    each artifact folder is signed first (pipelines.signing), so its archive carries the signature."""
    if sign_key is not None and layout is not None:
        raise ConfigError("--sign-key signs artifact bundles; a library layout is archived unsigned: drop one option")
    out = out or (root.parent if (root / MANIFEST).is_file() else root) / "release"
    # A release folder inside root may hold unpacked archives: they are releases, not artifacts to package again.
    artifacts = [a for a in find_artifacts(root) if not (root in out.parents and out in a.parents)]
    check_output_folder(out, "--out")
    check_outside(out, "--out", "artifact", artifacts)
    archives = []
    for artifact_dir in artifacts:
        artifact = read_artifact(artifact_dir)
        name = archive_name(root, artifact)
        if layout is None:
            if sign_key is not None:
                check_files(artifact)  # never sign a tampered artifact
                sign(artifact, sign_key)
            archives.append(write_archive(artifact_dir, out / f"{name}.tar.gz"))
        elif artifact.manifest.format in layout.formats:
            unpacked = f"{name}-{layout.name}"  # the folder the archive unpacks to, as its usage lines name it
            with tempfile.TemporaryDirectory() as scratch:
                folder = write_layout(layout, artifact_dir, Path(scratch) / unpacked, location=Path(unpacked))
                archives.append(archive_folder(folder, out / f"{unpacked}.tar.gz"))
    if layout is not None and not archives:
        raise ConfigError(f"no artifact under {root} takes the {layout.name} layout "
                          f"(it takes {' or '.join(layout.formats)} artifacts)")
    return archives
