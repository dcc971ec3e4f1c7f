"""Run an export in a child process, so that Ctrl-C or SIGTERM stops it within a second whatever it converts.

A signal reaches Python code only between bytecodes: inside a converter's C++ (MLIR lowering, a protobuf
write) a KeyboardInterrupt waits until that call returns, which can take minutes. The parent here only
waits on a queue, so it always answers: it kills the child, recovers the output folder (removes the
child's staging folders, puts back an artifact a swap had moved aside) and re-raises. The child dies with
its parent (PR_SET_PDEATHSIG), so killing the parent with SIGKILL leaves no builder running either.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import traceback
from pathlib import Path

from core.config import BuildConfig
from core.errors import ToolchainError, gist
from core.model_source import ModelSource
from pipelines.export import ArtifactResult, PrintProgress, Progress, export
from pipelines.preflight import preflight
from pipelines.staging import recover_if_free, sigterm_as_interrupt

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


class ChildFailed(ToolchainError):
    """The build process ended without a result (killed by the system, out of memory) or with an error."""


class _QueueProgress:
    def __init__(self, events: multiprocessing.Queue) -> None:
        self.events = events

    def step(self, message: str) -> None:
        self.events.put(("step", message))

    def artifact_done(self, result: ArtifactResult) -> None:
        self.events.put(("artifact_done", result))


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's handlers still cover Ctrl-C and SIGTERM
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(config: BuildConfig, source: ModelSource, events: multiprocessing.Queue, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    try:
        events.put(("done", export(config, _QueueProgress(events), source)))
    except ToolchainError as exc:
        events.put(("error", (str(exc), exc.exit_code)))
    except BaseException as exc:  # a bug: the full trace goes to the log, one line to the user
        traceback.print_exc()
        events.put(("error", (f"internal error {gist(exc)} (trace in the converter log)", 1)))


def export_isolated(config: BuildConfig, progress: Progress | None = None) -> list[ArtifactResult]:
    """``pipelines.export.export`` in a child process; same results, same errors, prompt interruption."""
    progress = progress or PrintProgress()
    source, _, _ = preflight(config)  # bad input fails here at once, without starting a process; checked once
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    child = context.Process(target=_child, args=(config, source, events, os.getpid()), name="export", daemon=True)
    with sigterm_as_interrupt():
        try:
            child.start()
            return _follow(child, events, progress)
        except KeyboardInterrupt:
            child.kill()
            child.join()
            recover_if_free(Path(config.out))
            raise
        finally:
            child.join(timeout=5)
            events.close()


def _follow(child, events: multiprocessing.Queue, progress: Progress) -> list[ArtifactResult]:
    """Relay the child's progress until it sends its results or an error."""
    while True:
        try:
            kind, payload = events.get(timeout=POLL_S)
        except queue.Empty:
            if not child.is_alive():
                raise ChildFailed(f"the export process ended without a result (exit code {child.exitcode}); "
                                  "see the converter log") from None
            continue
        if kind == "step":
            progress.step(payload)
        elif kind == "artifact_done":
            progress.artifact_done(payload)
        elif kind == "done":
            return payload
        else:
            message, exit_code = payload
            error = ChildFailed(message)
            error.exit_code = exit_code
            raise error
