"""Targets: what each device class needs. A target is a small object registered by name.

Adding a target: write targets/<name>.py with a ``Target`` whose plans name a registered format, its
options and a gate, call ``register`` on it, and import the module below (or register it from your own
code: nothing else in the toolchain lists targets).
"""

from targets.base import TARGETS, ArtifactPlan, Gate, Target, get_targets, register

# Registration by import; this order is the order of `--target all`.
# isort: off
from targets import x86  # noqa: E402,F401
from targets import x86_openvino  # noqa: E402,F401
from targets import mobile  # noqa: E402,F401
from targets import apple  # noqa: E402,F401
from targets import gpu  # noqa: E402,F401
from targets import web  # noqa: E402,F401
# isort: on

__all__ = ["TARGETS", "ArtifactPlan", "Gate", "Target", "get_targets", "register"]
