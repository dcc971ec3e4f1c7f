"""Reading files that may be damaged or hostile: bounded reads, paths that stay inside their folder.

Every file the toolchain reads comes from a user (a model directory, an artifact, an archive, a corpus).
A JSON file is read once, with a size cap, and parsed into the type expected; a path written inside
such a file is resolved, symlinks followed, and refused unless it stays inside the folder it belongs to.
Errors are the caller's ToolchainError class, one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path, PureWindowsPath
from typing import Any

from core.errors import ToolchainError

MAX_JSON_BYTES = 64 << 20  # tokenizer.json of a 250k-token vocabulary is ~17 MB
MAX_TEXT_BYTES = 1 << 30  # a sentence corpus


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
