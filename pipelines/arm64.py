"""`verify --arch arm64`: the phone artifacts (TFLite, MediaPipe, ExecuTorch) on ARM64 CPU kernels, emulated.

Per CPU model (converters.arm64.CPU_MODELS: NEON, dot product, i8mm, SVE2/SME, each a different XNNPACK int8
kernel family), the artifact runs in its runtime's aarch64 build through the same runtime wrapper as on x86, on
its test vectors and the first STS-B dev sentences; it must meet its target's gate there against the fp32
model, and the figures (with the largest difference from the x86 run of the same artifact) go into the
manifest's ``arm64`` entry. Emulation runs each instruction in software: its times are not speeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from converters.arm64 import ARM64_FORMATS, UNSUPPORTED
from converters.arm64.runner import Arm64Environment, ensure_environment, load_arm64_runner
from core.cpu import ARM_CPU_MODELS as CPU_MODELS
from core.cpu import usable_cores
from core.data import StsPairs, load_stsb
from core.errors import ArtifactError, ConfigError, ToolchainError
from core.manifest import Arm64Cpu, Arm64Record, Artifact, check_files, find_artifacts, read_artifact
from core.metrics import row_cosines
from core.reference import Reference, cache_dir
from pipelines.gatekeeper import ReferenceCache
from pipelines.package import open_artifact_source
from pipelines.report import record_results
from pipelines.runtime import ArtifactEncoder
from pipelines.verify import gate_failures, measure_parity, test_vector_min_cosine
from targets.base import Gate, target_gate

DEFAULT_SENTENCES = 300


def dev_pairs(sentences: int) -> StsPairs:
    """The fewest leading STS-B dev pairs whose unique sentences number at least ``sentences``."""
    pairs = load_stsb("dev")
    seen: set[str] = set()
    count = len(pairs.sentences1)
    for index, (first, second) in enumerate(zip(pairs.sentences1, pairs.sentences2, strict=True), start=1):
        seen.update((first, second))
        if len(seen) >= sentences:
            count = index
            break
    return StsPairs(pairs.sentences1[:count], pairs.sentences2[:count], pairs.scores[:count])


@dataclass(frozen=True)
class HostRun:
    """What every CPU model is compared with: the fp32 model's and the x86 runtime's embeddings, computed once."""

    pairs: StsPairs
    reference: Reference
    x86: np.ndarray  # the same artifact on this machine's runtime, rows in pairs.unique_sentences() order


def check_on_cpu(environment: Arm64Environment, artifact: Artifact, cpu: str, host: HostRun, gate: Gate) -> Arm64Cpu:
    """One CPU model: parity against the fp32 model, the test vectors, and the difference from x86."""
    logs = cache_dir() / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"arm64-{cpu}.log").open("ab") as log_file:
        runner, process = load_arm64_runner(environment, artifact, cpu, log_file)
        try:
            encoder = ArtifactEncoder(artifact.folder, runner=runner)
            started = time.perf_counter()
            vectors = encoder.encode(host.pairs.unique_sentences())
            parity = replace(measure_parity(lambda _: vectors, host.reference, pairs=host.pairs),
                             test_vectors_min_cosine=test_vector_min_cosine(artifact.folder, encoder),
                             runtime=encoder.runtime_name, emulated=True)
            seconds = time.perf_counter() - started
        finally:
            process.close()
    failures = gate_failures(parity, gate)
    return Arm64Cpu(
        kernels=CPU_MODELS[cpu], ok=not failures, failures=tuple(failures), sentences=parity.sentences,
        mean_cosine=round(parity.mean_cosine, 6), min_cosine=round(parity.min_cosine, 6),
        spearman_drop=round(parity.spearman_drop, 4), test_vectors_min_cosine=round(parity.test_vectors_min_cosine, 6),
        max_abs_diff_vs_x86=_finite(np.abs(vectors - host.x86).max()),
        min_cosine_vs_x86=_finite(row_cosines(vectors, host.x86).min()), runtime=parity.runtime,
        emulated_seconds=round(seconds, 1),
    )


def _finite(value: float) -> float | None:
    """A figure for the manifest: JSON readers in apps (Kotlin, JavaScript) reject NaN; a NaN run is None."""
    return round(float(value), 8) if np.isfinite(value) else None


def check_cpus(environment: Arm64Environment, artifact: Artifact, cpus: Sequence[str], host: HostRun,
               log: Callable[[str], None]) -> dict[str, Arm64Cpu]:
    """Every CPU model, each in its own emulated process, as many at once as this machine has cores."""
    manifest = artifact.manifest
    gate = target_gate(manifest.target, manifest.format)
    skipped = {cpu: Arm64Cpu(CPU_MODELS[cpu], ok=True, skipped=UNSUPPORTED[manifest.format, cpu])
               for cpu in cpus if (manifest.format, cpu) in UNSUPPORTED}
    runnable = [cpu for cpu in cpus if cpu not in skipped]
    for cpu in runnable:
        log(f"{manifest.target} {manifest.format}: emulated ARM64 {cpu} ({CPU_MODELS[cpu]})")
    with ThreadPoolExecutor(max_workers=max(1, min(len(runnable), usable_cores()))) as pool:
        figures = dict(zip(runnable, pool.map(
            lambda cpu: check_on_cpu(environment, artifact, cpu, host, gate), runnable), strict=True))
    return {cpu: figures.get(cpu) or skipped[cpu] for cpu in cpus}


def verify_arm64(path: Path, *, cpus: Sequence[str] = tuple(CPU_MODELS), sentences: int = DEFAULT_SENTENCES,
                 model: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Every phone artifact at or below ``path`` on every CPU model; a folder's manifest and report get the
    figures. A damaged artifact is a row with its error (the CLI exits 2), and the others still run."""
    if not cpus:
        raise ConfigError(f"no ARM CPU model given; choose from {', '.join(CPU_MODELS)}")
    unknown = [cpu for cpu in cpus if cpu not in CPU_MODELS]
    if unknown:
        raise ConfigError(f"unknown ARM CPU model {unknown[0]!r}; choose from {', '.join(CPU_MODELS)}")
    if sentences < 1:
        raise ConfigError(f"--sentences must be at least 1, got {sentences}")
    references, rows = ReferenceCache(model), []
    with open_artifact_source(Path(path)) as root:
        artifacts = [a for a in map(read_artifact, find_artifacts(root)) if a.manifest.format in ARM64_FORMATS]
        if not artifacts:
            raise ArtifactError(f"no phone artifact ({', '.join(ARM64_FORMATS)}) at or below {str(path)!r}; "
                                "--arch arm64 checks those")
        environment = ensure_environment(log)
        for artifact in artifacts:
            folder = artifact.folder
            shown = str(folder) if root == Path(path) else f"{path}:{folder.relative_to(root).as_posix()}"
            try:
                record = _check_artifact(environment, artifact, references, cpus, sentences, log)
            except ToolchainError as exc:  # bad input, not a parity verdict
                rows.append({"path": shown, "ok": False, "failures": [str(exc)], "error": str(exc)})
                continue
            if root == Path(path):  # a folder, not an archive extracted for the check
                record_results(artifact.with_results(arm64=record))
            rows.append({"path": shown, "target": artifact.manifest.target, "artifact": artifact.manifest.artifact,
                         "ok": record.ok, "arm64": record, "failures": record.failures()})
    return rows


def _check_artifact(environment: Arm64Environment, artifact: Artifact, references: ReferenceCache,
                    cpus: Sequence[str], sentences: int, log: Callable[[str], None]) -> Arm64Record:
    """One artifact's files checked, then every CPU model; its ``arm64`` record."""
    check_files(artifact)
    reference = references.reference_for(artifact)
    pairs = dev_pairs(sentences)
    reference.source_embeddings(pairs.unique_sentences())  # computed (and cached) before the threads
    host = HostRun(pairs, reference, ArtifactEncoder(artifact.folder).encode(pairs.unique_sentences()))
    per_cpu = check_cpus(environment, artifact, cpus, host, log)
    return Arm64Record(environment.qemu_version(), per_cpu)
