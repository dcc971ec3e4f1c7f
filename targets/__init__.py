"""Targets: what each device class needs. A target is a small object registered by name.

Adding a fifth target: write targets/<name>.py with a ``Target`` whose ``artifacts()`` returns the
artifact plans (format + options + gate), call ``register`` on it, and import it below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import ConfigError


@dataclass(frozen=True)
class Gate:
    """Parity a shipped artifact must reach against the fp32 PyTorch model on STS-B dev."""

    min_mean_cosine: float
    min_cosine: float  # worst single sentence
    max_spearman_drop: float  # points (x100) below the fp32 source model
    pca_extra_drop: float = 0.5  # allowed on top when a PCA projection reduces the dims


@dataclass(frozen=True)
class ArtifactPlan:
    """One artifact a target emits: a folder under dist/<model>/<target>/."""

    folder: str  # relative to the target folder; "" for the target folder itself
    format: str  # key of converters.FORMAT_MODULES
    options: Any  # the format's options dataclass
    gate: Gate
    description: str


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    plans: tuple[ArtifactPlan, ...] = field(default_factory=tuple)


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


def get_targets(name: str) -> list[Target]:
    """'all' or one registered name."""
    if name == "all":
        return list(TARGETS.values())
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose one of: {', '.join([*TARGETS, 'all'])}")
    return [TARGETS[name]]


# Registration by import; this order is the order of `--target all`.
from targets import x86  # noqa: E402,F401,I001
from targets import mobile  # noqa: E402,F401
from targets import apple  # noqa: E402,F401
from targets import gpu  # noqa: E402,F401
