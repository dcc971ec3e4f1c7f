"""Typed errors. Each carries one line a user can act on; the CLI prints it and exits 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class ToolchainError(Exception):
    """Base class: bad input or environment. The message says what was wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        # One line by construction: a library's multi-line text inside a message is folded onto it.
        super().__init__(" ".join(str(message).split()))


class ModelSourceError(ToolchainError):
    """The model argument does not resolve to a usable sentence-transformers model."""


class CorpusError(ToolchainError):
    """A sentence corpus file is missing, empty or not UTF-8."""


class ConfigError(ToolchainError):
    """A build option or config file is invalid (bad --dims, unknown target, ...)."""


class OutputError(ToolchainError):
    """The output location cannot be written."""


class ArtifactError(ToolchainError):
    """An artifact directory or archive is not ours, is incomplete, or was tampered with."""


class MissingDependencyError(ToolchainError):
    """An optional dependency of a target is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; it is needed for this target: "
            f"run  pip install -c constraints.txt -e '.[{extra}]'"
        )


class GateError(ToolchainError):
    """An artifact failed a verification gate: it must not ship."""

    exit_code = 1


def gist(exc: BaseException, last: bool = False, limit: int = 300) -> str:
    """``Type: line`` from a library's exception, for a one-line error: its first non-empty line, or its last where the
    library puts its own context first (ONNX Runtime)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {(lines[-1] if last else lines[0])[:limit]}" if lines else type(exc).__name__


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise an actionable MissingDependencyError."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra) from exc
