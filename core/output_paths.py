"""Where a command may write: a folder it can write, apart from every folder it reads.

An output inside an input changes what the input holds: an artifact's checksums fail, a model directory's digest
and weight files change, a corpus folder grows files that the next run reads as text. An output holding an input
is refused too: a command writes names of its own under its output (export writes OUT/MODEL-NAME/TARGET, which is
the model folder itself when the model sits at OUT/MODEL-NAME). Every command that writes calls
``check_output_folder`` before it reads anything heavy, so a bad output is one line, and nothing was written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from core.errors import OutputError


def check_output_folder(out: Path | str, option: str, inputs: Mapping[str, Path | str] | None = None) -> Path:
    """``out`` resolved, or one OutputError line naming ``option``: ``out`` must be a folder or a path one can be
    created at (no file or symlink to nothing in its place or above it), writable, and neither equal to, inside, nor
    holding any of ``inputs`` (what the command calls each path it reads -> that path)."""
    shown = f"{option} {str(out)!r}"
    try:
        given = Path(out).expanduser().absolute()
        target = given.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise OutputError(f"{shown} cannot be resolved ({exc}); pass another folder to {option}") from None
    # The path as the commands create it (mkdir with parents) and as resolve() sees it: both must lead to folders.
    # resolve() walks '..' by name, the kernel refuses it after a file or a missing folder: such a path is refused.
    walked = (given, *given.parents)
    missing_dot_dot = next((p for p in walked if p.name == ".." and not os.path.exists(p.parent)), None)
    if missing_dot_dot is not None:
        raise OutputError(f"{shown}: {str(missing_dot_dot.parent)!r} does not exist, so '..' after it leads nowhere; "
                          f"pass the folder without '..' to {option}")
    blocker = next((p for p in walked if os.path.lexists(p) and not os.path.isdir(p)), None)
    if blocker is not None:
        kind = "a symlink to a missing path" if not os.path.exists(blocker) else "a file"
        where = f"is {kind}" if blocker == given else f"lies under {str(blocker)!r}, which is {kind}"
        raise OutputError(f"{shown} {where}; pass a folder to {option}")
    for what, path in (inputs or {}).items():
        source = Path(path).expanduser().resolve()
        if target.is_relative_to(source):
            where = "is" if target == source else "is inside"
            raise OutputError(f"{shown} {where} the {what} {str(path)!r}: writing there would change it; pass a "
                              f"folder outside it to {option}")
        if source.is_relative_to(target):
            raise OutputError(f"{shown} holds the {what} {str(path)!r}: what it writes there could land in it; pass "
                              f"a folder beside it to {option}")
    existing = next(p for p in (target, *target.parents) if os.path.exists(p))  # "/" always exists
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    if any(len(os.fsencode(part)) > name_max for part in given.parts):
        raise OutputError(f"{shown:.200} has a name longer than the {name_max} bytes the file system takes; pass a "
                          f"shorter one to {option}")
    try:  # permissions, a read-only mount, /proc: only writing tells (root passes every permission check)
        with tempfile.TemporaryFile(dir=existing):  # unnamed where the system allows (O_TMPFILE), removed at once
            pass
    except OSError as exc:
        raise OutputError(f"{shown} cannot be written ({exc.strerror or exc} in {str(existing)!r}); pass a "
                          f"writable folder to {option}") from None
    return target


def check_outside(out: Path | str, option: str, what: str, folders: Iterable[Path | str]) -> None:
    """Refuse ``out`` (a file or folder a command writes) inside any of ``folders`` (what the command reads and must
    leave as it is, e.g. artifacts, whose checksums cover every file) in one OutputError line naming ``option``.
    Holding them is fine: archives or a report beside artifacts change none of them."""
    target = Path(out).expanduser().resolve()
    for folder in folders:
        if target.is_relative_to(Path(folder).resolve()):
            raise OutputError(f"{option} {str(out)!r} is inside the {what} {str(folder)!r}: writing there would change "
                              f"it; pass a path outside it to {option}")
