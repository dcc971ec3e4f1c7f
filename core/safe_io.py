"""Reading files that may be damaged or hostile: bounded reads, paths that stay inside their folder.

Every file the toolchain reads comes from a user (a model directory, an artifact, an archive, a corpus).
A JSON file is read once, with a size cap, and parsed into the type expected; a path written inside
such a file is resolved, symlinks followed, and refused unless it stays inside the folder it belongs to.
Errors are the caller's ToolchainError class, one line naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import Any

from core.errors import ToolchainError, gist

MAX_JSON_BYTES = 64 << 20  # tokenizer.json of a 250k-token vocabulary is ~17 MB
MAX_TEXT_BYTES = 1 << 30  # a sentence corpus
# One text of a corpus. The longest context of a sentence-embedding model is 8,192 tokens (~40 kB of English), so a
# million characters is 25 times more than any model reads; longer texts are truncated as the source model truncates
# them. Beyond it the tokenizer's own work is the danger: it builds ~140 bytes of state per character (20 MB of text
# took 2.9 GB and 17 s here; 200 MB aborted the process).
MAX_TEXT_CHARS = 1 << 20
# Rows (texts) of a corpus held in memory whole (a fit or distillation corpus): ~200 bytes a row beyond the text itself
# while it is read (10M short lines peaked at 2.2 GB). `embed` streams its input and is bounded by its plan instead.
MAX_CORPUS_ROWS = 5_000_000

# Archives (a release .tar.gz, a model's zip, a wheel, a parquet file's pages) are checked on their own records,
# before anything is decompressed into memory or written:
MAX_MEMBERS = 10_000  # an artifact has under 30 files, a model folder under 100
# One file: ONNX (protobuf) and TFLite (flatbuffer) files stop at 2 GiB, and the hub cuts safetensors shards at 5 GB.
MAX_MEMBER_BYTES = 5 << 30
# Unpacked bytes per archive byte: model weights barely compress (the toolchain's release archives unpack to 1.2 to
# 1.4 times their size), while 5 GB of zeros pack into 5 MB. The first UNPACK_RATIO_FLOOR bytes are allowed whatever
# the ratio, for small archives of JSON and tar padding.
MAX_UNPACK_RATIO = 20
UNPACK_RATIO_FLOOR = 64 << 20
# What the standard library's readers raise on damaged compressed data, whichever compression an archive really uses
# (its name may say .tar.gz over an xz or bz2 stream); bz2 and gzip also raise OSError without an errno.
DAMAGED_ARCHIVE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError)


def read_capped(path: Path, cap: int, error: type[ToolchainError], what: str) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (a FIFO or device would never end)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path} is missing ({what})") from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror}) ({what})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file ({what})")
    if info.st_size > cap:
        raise error(f"{path} is {info.st_size / 1e6:.0f} MB, more than the {cap / 1e6:.0f} MB a {what} may have")
    try:
        with path.open("rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror}) ({what})") from None
    if len(data) > cap:  # grew while we read it
        raise error(f"{path} is more than the {cap / 1e6:.0f} MB a {what} may have")
    return data


def unpack_limit(packed_bytes: int, cap: int) -> int:
    """The most bytes ``packed_bytes`` of archive may unpack to: ``MAX_UNPACK_RATIO`` times its size, at least
    ``UNPACK_RATIO_FLOOR``, at most ``cap``."""
    return min(cap, max(UNPACK_RATIO_FLOOR, packed_bytes * MAX_UNPACK_RATIO))


class UnpackBudget:
    """Admits an archive's members one record at a time, before the member is read or written: at most
    ``MAX_MEMBERS`` of them, none over ``MAX_MEMBER_BYTES``, together within ``unpack_limit`` of the archive's size.
    A decompression bomb is refused on the header that announces it, so it costs neither time nor disk."""

    def __init__(self, archive: Path, cap: int, error: type[ToolchainError]) -> None:
        self.archive, self.error = archive, error
        self.packed = archive.stat().st_size
        self.limit = unpack_limit(self.packed, cap)
        self.members = self.total = 0

    def admit(self, name: str, size: int) -> None:
        where = f"archive {self.archive.name}"
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise self.error(f"{where} has more than {MAX_MEMBERS:,} members; it is not one model or artifact")
        if size > MAX_MEMBER_BYTES:
            raise self.error(f"{where}: {name!r} unpacks to {size / 1e9:.1f} GB, more than the "
                             f"{MAX_MEMBER_BYTES / 1e9:.1f} GB one file may have")
        self.total += size
        if self.total > self.limit:
            raise self.error(f"{where} unpacks to more than {self.limit / 1e9:.2f} GB ({MAX_UNPACK_RATIO} times its "
                             f"{self.packed / 1e6:.1f} MB, or the cap): a decompression bomb; nothing was extracted")


@contextlib.contextmanager
def reading_archive(archive: Path | str, error: type[ToolchainError], what: str) -> Iterator[None]:
    """Damaged data in ``archive`` (a path, or words naming it), whatever its compression, as one ``error`` line; a
    disk error while unpacking (an OSError with an errno) as another."""
    try:
        yield
    except DAMAGED_ARCHIVE as exc:
        raise error(f"{archive} is not a readable {what} ({gist(exc)})") from None
    except OSError as exc:
        if exc.errno is None:
            raise error(f"{archive} is not a readable {what} ({gist(exc)})") from None
        raise error(f"{archive} could not be unpacked ({exc.strerror})") from None


def read_json(path: Path, error: type[ToolchainError], what: str, expect: type = dict,
              cap: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file of type ``expect`` (dict or list), read once with a size cap."""
    data = read_capped(path, cap, error, what)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path} is not valid JSON ({type(exc).__name__}) ({what})") from None
    if not isinstance(value, expect):
        raise error(f"{path} must hold a JSON {'object' if expect is dict else 'array'} ({what})")
    return value


def contained(root: Path, relative: object, error: type[ToolchainError], where: str) -> Path:
    """``root / relative``, refused unless ``relative`` is a relative path that stays inside ``root`` with every
    symlink followed (no absolute path, no ``..``, no link leading out)."""
    if not isinstance(relative, str) or "\0" in relative:
        raise error(f"{where}: expected a relative path, got {relative!r}")
    if Path(relative).is_absolute() or PureWindowsPath(relative).anchor or ".." in PureWindowsPath(relative).parts:
        raise error(f"{where}: path {relative!r} leaves its folder (absolute or with '..')")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and not target.is_relative_to(base):
        raise error(f"{where}: path {relative!r} leads out of {root} through a symlink")
    return root / relative


def field(data: dict, key: str, kind: type | tuple[type, ...], error: type[ToolchainError], where: str) -> Any:
    """``data[key]`` if present and of ``kind`` (bool is not an int here), else one clear error."""
    if key not in data:
        raise error(f"{where} lacks {key!r}")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise error(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
    return value
