"""OpenVINO IR (model.xml + model.bin) for Intel's runtime on x86 CPUs, converted from the ONNX export.

OpenVINO is a second x86 runtime beside ONNX Runtime: it runs bf16 matrix math on CPUs with AVX512-BF16
(AMX Xeons, AMD Zen 4 and later), which ONNX Runtime's CPU provider cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from converters.registry import ArtifactFormat, register_format
from core.errors import ConfigError

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"  # ov.save_model writes it beside the .xml
RUNTIME = "openvino"


# CPU plugin properties an artifact may ask its runner for, with the values allowed (a manifest is untrusted:
# nothing else reaches compile_model).
TUNABLE_PROPERTIES: dict[str, frozenset[str]] = {"SNIPPETS_MODE": frozenset({"ENABLE", "DISABLE"})}


def is_tunable(key: str, value: object) -> bool:
    return isinstance(value, str) and value in TUNABLE_PROPERTIES.get(key, ())


# The runner compiles the IR twice: one stream for single calls, parallel streams for many batches at once.
COMPILED_MODELS = ("latency", "throughput")


@dataclass(frozen=True)
class CompileCandidate:
    """CPU plugin properties tried at export: for each compiled model the fastest candidate on calibration
    sentences is recorded in the manifest, and the runner compiles with it."""

    name: str
    properties: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for key, value in self.properties:
            if not is_tunable(key, value):  # the runner allows no more than this
                allowed = ", ".join(f"{k} in {sorted(v)}" for k, v in TUNABLE_PROPERTIES.items())
                raise ConfigError(f"OpenVINO compile property {key}={value} is not tunable (allowed: {allowed})")


@dataclass(frozen=True)
class CompiledWith:
    """The candidate one compiled model runs with."""

    candidate: str
    properties: dict[str, str]


@dataclass(frozen=True)
class CandidateSpeed:
    batch_32_sentences_per_s: float
    batch_1_p50_ms: float


@dataclass(frozen=True)
class CompileChoice:
    """Per compiled model (COMPILED_MODELS) the candidate it runs with, and what every candidate measured on the
    build CPU (nothing where a single candidate was taken untimed)."""

    latency: CompiledWith
    throughput: CompiledWith
    measured: dict[str, CandidateSpeed] = field(default_factory=dict)
    measured_on: str | None = None

    def properties(self) -> dict[str, dict[str, str]]:
        return {"latency": dict(self.latency.properties), "throughput": dict(self.throughput.properties)}


@dataclass(frozen=True)
class OpenVinoFacts:
    """What the runner reads back from the manifest's conversion facts (convert.py writes them)."""

    compile: CompileChoice | None = None  # None: built before the export tuned compile properties


@dataclass(frozen=True)
class OpenVinoOptions:
    # Compute precision the runner asks OpenVINO for. "bf16" falls back to fp32 on a CPU without AVX512-BF16
    # (the manifest records the hint; the runtime states what it ran).
    precision: Literal["fp32", "bf16"] = "bf16"
    # Weights stored fp16 in model.bin (half the size; OpenVINO widens them at load), else fp32.
    fp16_weights: bool = True
    # Measured at export on the build CPU, per compiled model. With snippets off, attention runs in the CPU
    # plugin's SDPA node instead of a generated MHA kernel, which took 30 % of bf16 time on short sentences:
    # +15 % batch-32 throughput (tokenization included) on an AMX Xeon for all-MiniLM-L6-v2, slower at batch 1.
    compile_candidates: tuple[CompileCandidate, ...] = field(default_factory=lambda: (
        CompileCandidate("default"), CompileCandidate("snippets off", (("SNIPPETS_MODE", "DISABLE"),))))

    def __post_init__(self) -> None:
        if not self.compile_candidates:
            raise ConfigError("OpenVinoOptions.compile_candidates is empty; give at least CompileCandidate('default')")


OPENVINO = register_format(
    ArtifactFormat(
        name="openvino",
        options_type=OpenVinoOptions,
        converter="converters.openvino.convert",
        runner="converters.openvino.runner",
        additive_mask=False,  # converted from the same ONNX export as the onnx format
        # OpenVINO compiles primitives for each new input shape on first use (milliseconds each).
        sequence_multiple=16,
    )
)
