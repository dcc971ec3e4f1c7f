"""Artifacts on ARM64 CPU kernels, under qemu user-mode emulation: the TFLite, MediaPipe and ExecuTorch artifacts
run in their own runtimes' aarch64 builds (the same versions as on x86) on CPU models whose features make XNNPACK
pick different int8 kernels. Emulated timings are not speeds and are never reported as such.

The environment (converters/arm64/setup.sh) comes from Debian's packages and PyPI, is built on first use into the
cache folder and reused; converters.arm64.runner runs an artifact in it.
"""

from __future__ import annotations

from core.cpu import ARM_CPU_MODELS as CPU_MODELS  # noqa: F401  (re-exported for the ARM64 runners)

# Artifact formats that run on phones and ARM boards, by the runtime that runs them in the emulated environment.
ARM64_FORMATS = ("tflite", "mediapipe", "executorch")

# (format, CPU model) pairs the runtime's aarch64 build cannot run, with why: those figures are skipped, said so.
# The plain-NEON kernels are still checked on that CPU model through the TFLite artifact (the same LiteRT graph).
UNSUPPORTED = {
    ("mediapipe", "cortex-a53"): "the mediapipe aarch64 wheel is built for Armv8.1 (LSE atomics) and stops with "
                                 "SIGILL on an Armv8.0 core; MediaPipe's Android build is another binary",
}
