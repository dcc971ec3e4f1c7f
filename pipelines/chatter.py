"""Third-party output to a log file, the toolchain's own lines to the terminal.

Converters write pages of progress bars, C++ log lines and warnings straight to file descriptors 1 and 2
(LiteRT's MLIR lowering, absl, torch.export), below Python's reach. While a stage runs, both descriptors
point at a log file; the stage's progress and summary go to a duplicate of the original terminal.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from core.reference import cache_dir


def log_path(command: str) -> Path:
    return cache_dir() / "logs" / f"{command}.log"


@contextmanager
def third_party_output_to(path: Path | None) -> Iterator[TextIO]:
    """Yield a stream that reaches the terminal while fds 1 and 2 write to ``path``. With no path (--verbose), or
    where stdout is not a real file descriptor (click's test runner captures it in memory), nothing is
    redirected and the stream is sys.stdout."""
    if path is None:
        yield sys.stdout
        return
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(out_fd), os.dup(err_fd)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    with path.open("wb") as log:
        os.dup2(log.fileno(), out_fd)
        os.dup2(log.fileno(), err_fd)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            terminal.close()
            os.dup2(saved[0], out_fd)
            os.dup2(saved[1], err_fd)
            os.close(saved[0])
            os.close(saved[1])
