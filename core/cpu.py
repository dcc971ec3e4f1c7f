"""What the CPU can do for int8 inference, read from /proc/cpuinfo (Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# int8 multiply-accumulates per cycle per core with AVX-512 VNNI (vpdpbusd: 64 int8 MACs per 512-bit op,
# one per cycle) -> 128 int8 ops per cycle per core.
INT8_OPS_PER_CYCLE = 128


def _cpuinfo_lines() -> list[str]:
    try:
        return CPUINFO.read_text().splitlines()
    except OSError:
        return []


def cpu_flags() -> set[str]:
    return {flag for line in _cpuinfo_lines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_isa() -> str:
    """The int8-relevant ISA of this CPU, from /proc/cpuinfo flags (Linux); 'unknown' elsewhere."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    for isa in ("avx512_vnni", "avx_vnni", "avx512f", "avx2"):
        if isa in flags:
            return "avx512" if isa == "avx512f" else isa
    return "other"


def cpu_name() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
    return platform.processor() or platform.machine()


def int8_peak_gops() -> dict:
    """cores x clock x INT8_OPS_PER_CYCLE, with the clock read from /proc/cpuinfo (Linux)."""
    cores = os.cpu_count() or 1
    mhz = max((float(line.split(":", 1)[1]) for line in _cpuinfo_lines() if line.startswith("cpu MHz")), default=0.0)
    return {
        "cores": cores,
        "clock_ghz": round(mhz / 1000, 3),
        "int8_ops_per_cycle_per_core": INT8_OPS_PER_CYCLE,
        "peak_gops": cores * mhz / 1000 * INT8_OPS_PER_CYCLE,
    }
