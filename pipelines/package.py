"""Release archives: one .tar.gz per artifact, and safe extraction for `verify ARCHIVE`."""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import ArtifactError


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
