"""Where a corpus is read and vectors are written: a local path, or a URI (``s3://bucket/prefix``) through pyarrow's
filesystems, so that the driver, a local worker and a cluster node read and write the same places with one code path.

A URI carries its filesystem's options in its query, as pyarrow reads them: an S3-compatible server is
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``; credentials come from the usual AWS variables.
Every failure is one line of the caller's error class naming the place.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.errors import ToolchainError, gist, require


@dataclass(frozen=True)
class Place:
    """A file or folder, local or remote. ``uri`` is absolute for a local path; a remote one keeps its query."""

    uri: str

    @classmethod
    def of(cls, location: str | Path) -> Place:
        text = str(location)
        return cls(text if "://" in text else str(Path(text).expanduser().absolute()))

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @property
    def name(self) -> str:
        return self.uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]

    def child(self, relative: str) -> Place:
        base, mark, query = self.uri.partition("?")
        return Place(f"{base.rstrip('/')}/{relative}{mark}{query}")

    def relative_to(self, root: Place) -> str:
        return self.uri.partition("?")[0][len(root.uri.partition("?")[0].rstrip("/")) + 1 :]

    def __str__(self) -> str:
        return self.uri


@functools.cache
def _filesystem(scheme_and_options: str) -> Any:
    fs = require("pyarrow.fs", "embed")
    return fs.FileSystem.from_uri(scheme_and_options)[0]


def resolve(place: Place) -> tuple[Any, str]:
    """(pyarrow filesystem, its path); one filesystem object per endpoint and options in a process."""
    fs = require("pyarrow.fs", "embed")
    if not place.remote:
        return _local(), place.uri
    base, mark, query = place.uri.partition("?")
    scheme, _, rest = base.partition("://")
    try:
        filesystem = _filesystem(f"{scheme}://{rest.split('/', 1)[0]}{mark}{query}")
        return filesystem, fs.FileSystem.from_uri(place.uri)[1]
    except (ValueError, OSError) as exc:  # an unknown scheme, a malformed option
        raise ToolchainError(f"{place} is not a place pyarrow can open ({gist(exc)})") from None


@functools.cache
def _local() -> Any:
    return require("pyarrow.fs", "embed").LocalFileSystem()


@contextlib.contextmanager
def failures_as(error: type[ToolchainError], place: Place, doing: str) -> Iterator[None]:
    """An OSError (or pyarrow's) while ``doing`` something at ``place`` becomes one ``error`` line."""
    try:
        yield
    except ToolchainError:
        raise
    except (OSError, ValueError) as exc:
        raise error(f"cannot {doing} {place} ({gist(exc)})") from None


def kind(place: Place) -> str:
    """"file", "folder" or "missing"."""
    fs = require("pyarrow.fs", "embed")
    filesystem, path = resolve(place)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return "file"
    return "folder" if info.type == fs.FileType.Directory else "missing"


def list_files(folder: Place, suffixes: tuple[str, ...]) -> list[tuple[Place, int]]:
    """Every file under ``folder`` (recursively; none if it is missing) whose name ends with one of ``suffixes``,
    sorted, with its size. A local symlink is left out: a corpus folder must not read outside itself."""
    fs = require("pyarrow.fs", "embed")
    filesystem, path = resolve(folder)
    found = []
    for info in filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type != fs.FileType.File or not info.path.endswith(suffixes):
            continue
        if not folder.remote and os.path.islink(info.path):
            continue
        found.append((folder.child(info.path[len(path.rstrip("/")) + 1 :]), info.size))
    return sorted(found, key=lambda pair: pair[0].uri)


def size(place: Place) -> int | None:
    """The file's size in bytes; None if there is no file."""
    fs = require("pyarrow.fs", "embed")
    filesystem, path = resolve(place)
    info = filesystem.get_file_info(path)
    return info.size if info.type == fs.FileType.File else None


def open_input(place: Place) -> Any:
    """A seekable binary reader (pyarrow's RandomAccessFile: read, seek, tell)."""
    filesystem, path = resolve(place)
    return filesystem.open_input_file(path)


def read_bytes(place: Place) -> bytes:
    with open_input(place) as handle:
        return handle.read()


def make_folder(place: Place) -> None:
    filesystem, path = resolve(place)
    filesystem.create_dir(path, recursive=True)


def write_atomic(place: Place, write: Callable[[BinaryIO], None]) -> None:
    """The file appears whole or not at all: a local file is written beside its place and renamed in; an object
    store's upload becomes visible only when it completes."""
    filesystem, path = resolve(place)
    if place.remote:
        with filesystem.open_output_stream(path) as stream:
            write(stream)
        return
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as stream:
            write(stream)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def delete(place: Place) -> None:
    filesystem, path = resolve(place)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(path)


def delete_folder(place: Place) -> None:
    filesystem, path = resolve(place)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(path)
