"""What a target is: artifact plans (format + options + gate), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converters.registry import get_format
from core.errors import ArtifactError, ConfigError
from core.manifest import Gate


@dataclass(frozen=True)
class ArtifactPlan:
    """One artifact a target emits: a folder under dist/<model>/<target>/."""

    folder: str  # relative to the target folder; "" for the target folder itself
    format: str  # a registered artifact format (converters.FORMATS)
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
    """Add a target; refuses a name already taken and plans whose options do not fit their format."""
    if target.name in TARGETS or target.name == "all":
        raise ConfigError(f"target {target.name!r} is already registered; pick another name")
    for plan in target.plans:
        expected = get_format(plan.format).options_type
        if not isinstance(plan.options, expected):
            raise ConfigError(
                f"target {target.name!r}: the {plan.format} plan needs {expected.__name__}, "
                f"got {type(plan.options).__name__}"
            )
    TARGETS[target.name] = target
    return target


def target_gate(target: str, fmt: str) -> Gate:
    """The gate an artifact of ``fmt`` made for ``target`` must pass: always the registry's, never the one its
    manifest states (a manifest is as easy to rewrite as the files it lists)."""
    plan = next((p for p in TARGETS[target].plans if p.format == fmt), None) if target in TARGETS else None
    if plan is None:
        raise ArtifactError(f"no registered target {target!r} makes {fmt!r} artifacts; the manifest is not this "
                            "toolchain's, or names a target this installation lacks")
    return plan.gate


def get_targets(name: str) -> list[Target]:
    """'all' or one registered name."""
    if name == "all":
        return list(TARGETS.values())
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose one of: {', '.join([*TARGETS, 'all'])}")
    return [TARGETS[name]]
