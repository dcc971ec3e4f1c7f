"""x86 instruction-set classes: what an int8 artifact built for a class needs from the CPU that runs it, and
what the CPU this process runs on has (read from /proc/cpuinfo on Linux).

The classes matter because of one trap: u8 x s8 int8 GEMMs on AVX2 (and AVX-512 without VNNI) multiply with
``vpmaddubsw``, which adds pairs of products into int16 and saturates once 2 x 255 x |w| passes 32767. Full-
range int8 weights (|w| <= 127) can do that; weights within [-64, 64] (ONNX Runtime's ``reduce_range``)
cannot, on any x86 CPU. VNNI (``vpdpbusd``) and AMX (``tdpbusd``) accumulate in int32 and never saturate.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class IsaClass:
    name: str
    description: str
    # The CPU runs this class's artifacts as built if it has every flag of at least one group.
    needs_any: tuple[tuple[str, ...], ...]
    # Full-range int8 weights are safe (no int16 saturation) on every CPU of the class.
    full_range_int8: bool
    # Peak int8 multiply-accumulate ops (2 per MAC) per cycle per core, for the roofline: AVX2 vpmaddubsw 32 MACs
    # per 256-bit op, AVX-512 64 per 512-bit op, VNNI vpdpbusd 64 per op, each one per cycle on one port;
    # AMX tdpbusd 1024 MACs per cycle.
    int8_ops_per_cycle: int

    def runs_on(self, flags: set[str]) -> bool:
        return any(set(group) <= flags for group in self.needs_any)


ISA_CLASSES: dict[str, IsaClass] = {
    c.name: c
    for c in (
        IsaClass("avx2", "any x86-64 server of the last decade (AVX2; int8 weights within [-64, 64])",
                 (("avx2",),), full_range_int8=False, int8_ops_per_cycle=64),
        IsaClass("avx512", "AVX-512 without VNNI (Skylake-SP; weights within [-64, 64])",
                 (("avx512f", "avx512bw"),), full_range_int8=False, int8_ops_per_cycle=128),
        IsaClass("avx512_vnni", "VNNI int8 dot products (Cascade Lake and later, AMD Zen 4 and later)",
                 (("avx512_vnni",), ("avx_vnni",)), full_range_int8=True, int8_ops_per_cycle=128),
        IsaClass("amx", "AMX int8 tiles (Intel Sapphire Rapids and later)",
                 (("amx_int8", "amx_tile"),), full_range_int8=True, int8_ops_per_cycle=2048),
    )
}
PORTABLE_ISA = "avx2"  # correct on any x86-64 server


def isa_class(name: str) -> IsaClass:
    if name not in ISA_CLASSES:
        raise ConfigError(f"--isa {name!r} is unknown; choose one of: {', '.join(ISA_CLASSES)}")
    return ISA_CLASSES[name]


def _cpuinfo_lines() -> list[str]:
    try:
        return CPUINFO.read_text().splitlines()
    except OSError:
        return []


def cpu_flags() -> set[str]:
    return {flag for line in _cpuinfo_lines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_isa(flags: set[str] | None = None) -> str:
    """The best ISA class this CPU runs ('unknown' where /proc/cpuinfo cannot be read, 'other' below AVX2)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "unknown"
    best = [name for name, c in ISA_CLASSES.items() if c.runs_on(flags)]
    return best[-1] if best else "other"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, a container's cpuset, a test worker's share),
    which thread pools are sized to; os.cpu_count() counts the machine's and would oversubscribe a share."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity masks on this platform
        return os.cpu_count() or 1


def cpu_name() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f" ({usable_cores()} cores usable)"
    return platform.processor() or platform.machine()


def ops_per_cycle(flags: set[str] | None = None) -> dict[str, int]:
    """Peak ops (2 per MAC) per cycle per core of this CPU, by compute precision. int8: its class's
    (ISA_CLASSES); fp32: two FMA ports x 8 lanes x 2 on AVX2 (32), x 16 lanes on AVX-512 (64); bf16: AMX
    tdpbf16ps 512 MACs per cycle (1024), AVX512-BF16 vdpbf16ps twice fp32's, else fp32's."""
    flags = cpu_flags() if flags is None else flags
    name = cpu_isa(flags)
    fp32 = 64 if "avx512f" in flags else 32
    bf16 = 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32
    return {"int8": ISA_CLASSES[name].int8_ops_per_cycle if name in ISA_CLASSES else 0, "bf16": bf16, "fp32": fp32}


def compute_precision(declared: str, flags: set[str] | None = None) -> str:
    """What this CPU computes an artifact of ``declared`` precision in: int8 as int8, bf16 only with
    AVX512-BF16, everything else (fp16 on ONNX Runtime's CPU provider included) in fp32."""
    flags = cpu_flags() if flags is None else flags
    if declared == "int8" or (declared == "bf16" and "avx512_bf16" in flags):
        return declared
    return "fp32"


def peak_gops() -> dict:
    """This CPU's peaks per compute precision: cores x clock x ops per cycle per core. The clock is the largest
    'cpu MHz' in /proc/cpuinfo (a VM may report less than the boost clock, and the visible 'cores' may be
    hyperthreads sharing one core's units: both make a fraction of peak an upper estimate)."""
    cores = usable_cores()
    mhz = max((float(line.split(":", 1)[1]) for line in _cpuinfo_lines() if line.startswith("cpu MHz")), default=0.0)
    per_cycle = ops_per_cycle()
    return {
        "isa": cpu_isa(),
        "cores": cores,
        "clock_ghz": round(mhz / 1000, 3),
        "ops_per_cycle_per_core": per_cycle,
        "peak_gops": {precision: cores * mhz / 1000 * ops for precision, ops in per_cycle.items()},
    }


def cpu_mismatch(isa: str | None) -> str | None:
    """Why this CPU is not the one an artifact built for ``isa`` expects (None when it is, or when either side
    is unknown): one line for a warning, or for the error under --strict."""
    if isa is None or isa not in ISA_CLASSES:
        return None
    flags = cpu_flags()
    here = cpu_isa(flags)
    if here in ("unknown", isa):
        return None
    wanted = ISA_CLASSES[isa]
    if not wanted.runs_on(flags):
        return (f"built for {isa} ({wanted.description}) but this CPU is {here}: its int8 products can saturate "
                f"and the embeddings come out wrong; rebuild with `export --target x86 --isa {here}`")
    return f"built for {isa} but this CPU is {here}: it runs correctly; `export --isa {here}` may be faster here"


# ARM64 CPU models (qemu's names) -> the int8 kernel family XNNPACK selects there, as seen in qemu's log of the
# executed instructions. cortex-a53 rather than cortex-a55 for plain NEON: the A55 has the dot-product extension.
ARM_CPU_MODELS = {
    "cortex-a53": "NEON (Armv8.0: smull/smlal)",
    "cortex-a76": "NEON dot product (sdot)",
    "cortex-a710": "i8mm (smmla), SVE2",
    "max": "SVE2 + SME (smopa)",
}
