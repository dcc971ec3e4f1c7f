"""The output folder of an export: one writer at a time, artifacts staged in hidden folders, and recovery
from a run that was killed.

An artifact is built in ``.NAME.tmp-PID`` beside its destination and swapped into place with two renames
(the old one goes to ``.NAME.old-PID`` for an instant). A killed run can leave either behind; the next
run that takes the folder's lock removes the temporary folders and puts a displaced old artifact back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from core.errors import OutputError

# model_dir/.x86.tmp-PID, or model_dir/mobile/.tflite.tmp-PID for a target with several artifacts
STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
STAGING_DEPTHS = ("*/.*.*-*", "*/*/.*.*-*")


def staging_dir(final: Path, pid: int | None = None) -> Path:
    return final.with_name(f".{final.name}.tmp-{pid or os.getpid()}")


def swap_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` with ``tmp``; at every instant the path holds the old artifact, the new one, or the old one
    under ``.NAME.old-PID``, which recovery puts back."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: Path) -> list[Path]:
    """Remove what killed runs left under ``out`` (their process is gone); put back an old artifact that a killed
    swap had moved aside. Returns the paths cleaned up. The caller holds the folder's lock."""
    cleaned = []
    for pattern in STAGING_DEPTHS:
        for path in sorted(out.glob(pattern)):
            match = STAGED.match(path.name)
            if not match or not path.is_dir() or path.is_symlink() or _alive(int(match["pid"])):
                continue
            final = path.with_name(match["name"])
            if match["kind"] == "old" and not final.exists():
                os.replace(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
            cleaned.append(path)
    return cleaned


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold a lock on the ``out`` folder itself for the duration, or refuse at once: a second export into the same
    folder would mix artifacts. The kernel drops the lock when the holder dies, however it dies, and no lock
    file is left behind; the folders it created are removed again if nothing was written into them."""
    created = [folder for folder in (out, *out.parents) if not folder.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A holder that made the folder removes it when done, empty: a lock taken on it meanwhile guards nothing.
            if not os.path.samestat(os.fstat(fd), os.stat(out)):
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise OutputError(
                f"another export is writing to {str(out)!r}; wait for it to finish or pass another --out"
            ) from None
        try:
            yield
        finally:
            for folder in created:  # while the lock is held, so no other export takes a folder about to go
                with contextlib.suppress(OSError):  # not empty: something was written, it stays
                    folder.rmdir()
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_free(out: Path) -> None:
    """Refuse at once if another export holds ``out``: before anything slow (starting the build process, loading
    the model). The build takes the lock itself; an export that starts in between is refused there."""
    if out.is_dir():
        with output_lock(out):
            pass


def recover_if_free(out: Path) -> None:
    """Recovery after a build process was killed: only if no other export holds the folder now."""
    if not out.is_dir():
        return
    with contextlib.suppress(OutputError), output_lock(out):
        recover(out)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks remove temporary folders."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
