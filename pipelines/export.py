"""The export pipeline: load -> (fit PCA) -> per artifact: convert -> package -> verify -> gate -> move into place.

Every artifact is built in a hidden temporary folder beside its destination and renamed into
place only after it passed its gate, so an interrupted or failed run leaves the old artifact or
none, never a half-written one.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from converters.registry import get_format
from core.config import BuildConfig
from core.cpu import usable_cores
from core.errors import GateError, ToolchainError
from core.graph import build_graph
from core.manifest import Artifact, Manifest, write_manifest
from core.model_source import ModelSource
from pipelines.preflight import preflight
from pipelines.report import model_card, record_results
from pipelines.runtime import ArtifactEncoder
from pipelines.session import PCA_FILE, Session, build_manifest, open_session, write_tokenizer
from pipelines.staging import output_lock, recover, sigterm_as_interrupt, staging_dir, swap_into_place
from pipelines.verify import check, write_test_vectors
from targets.base import ArtifactPlan, Target

MODEL_CARD = "MODEL_CARD.md"


@dataclass
class ArtifactResult:
    target: str
    folder: str  # path of the artifact (final location)
    format: str
    ok: bool
    manifest: Manifest | None = None
    error: str | None = None
    seconds: float = 0.0
    refused: str | None = None  # why the model's family cannot take this format; nothing was built

    @property
    def artifact(self) -> Artifact | None:
        """The built artifact at its final location; None where none was built."""
        return Artifact(Path(self.folder), self.manifest) if self.manifest else None


def _with_overrides(plan: ArtifactPlan, config: BuildConfig) -> ArtifactPlan:
    """Apply the build's options (--quantization, --isa) to formats that have such choices."""
    apply = get_format(plan.format).with_build
    return plan if apply is None else replace(plan, options=apply(plan.options, config))


def _destination(session: Session, target: Target, plan: ArtifactPlan) -> Path:
    base = session.model_dir / target.name
    return base / plan.folder if plan.folder else base


def build_artifact(session: Session, target: Target, plan: ArtifactPlan, log: Callable[[str], None]) -> Manifest:
    """Convert, package, verify and gate one artifact; returns its manifest. Raises on failure."""
    final = _destination(session, target, plan)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        plan = _with_overrides(plan, session.config)
        fmt = get_format(plan.format)
        graph = build_graph(session.st_model, session.projection, additive_mask=fmt.additive_mask)
        log(f"{target.name}: converting to {plan.description}")
        started = time.perf_counter()
        conversion = fmt.converter_module().convert(graph, session.spec, tmp, plan.options, session.calibration)
        timings = {"convert_s": round(time.perf_counter() - started, 1)}
        max_length = min(session.spec.max_seq_length, conversion.max_sequence or session.spec.max_seq_length)
        tokenizer = write_tokenizer(session, tmp, max_length)
        if session.projection is not None:
            session.projection.save(tmp / PCA_FILE)
        draft = build_manifest(session, target, plan, conversion, tokenizer, tmp)
        (tmp / MODEL_CARD).write_text(model_card(draft), encoding="utf-8")
        write_manifest(tmp, draft)  # what the runtime reads; checksums are final below
        encoder = ArtifactEncoder(tmp, threads=usable_cores())
        write_test_vectors(tmp, encoder, session.reference)
        artifact = Artifact(tmp, build_manifest(session, target, plan, conversion, tokenizer, tmp))
        if session.config.verify:
            log(f"{target.name}: verifying {plan.description} on STS-B dev")
            started = time.perf_counter()
            verdict = check(artifact, encoder, session.reference, plan.gate)
            artifact = verdict.recorded(artifact)
            timings["verify_s"] = round(time.perf_counter() - started, 1)
            if not verdict.ok:
                raise GateError(f"{target.name} ({plan.description}) failed its gate: " + "; ".join(verdict.failures))
        artifact = artifact.with_results(timings=timings)
        record_results(artifact)
        swap_into_place(tmp, final)
        return artifact.manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Below this much free space, a converter's own I/O error (OpenVINO's "iostream error", coremltools' missing
# Manifest.json) most likely means a full disk: the failure line says so.
LOW_DISK_BYTES = 256 * 2**20


def _failure_message(exc: Exception, final: Path) -> str:
    if isinstance(exc, ToolchainError):
        return str(exc)
    if isinstance(exc, OSError):
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        return f"could not write {final}: {reason}; free space or pass another --out, then re-run"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    message = f"{type(exc).__name__}: {first_line}"  # a converter crash fails this artifact, not the run
    free = _free_bytes(final)
    if free is not None and free < LOW_DISK_BYTES:
        message += (f" (only {free // 2**20} MB free on the disk of {final}: free space or pass another --out, "
                    "then re-run)")
    return message


def _free_bytes(path: Path) -> int | None:
    """Free space on the file system that holds ``path`` (its nearest existing folder); None if unreadable."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


class Progress(Protocol):
    def step(self, message: str) -> None: ...
    def artifact_done(self, result: ArtifactResult) -> None: ...


@dataclass
class PrintProgress:
    log: Callable[[str], None] = print

    def step(self, message: str) -> None:
        self.log(message)

    def artifact_done(self, result: ArtifactResult) -> None:
        self.log(f"{result.target}: {'done' if result.ok else 'FAILED'} in {result.seconds:.0f} s")


def export(config: BuildConfig, progress: Progress | None = None,
           source: ModelSource | None = None) -> list[ArtifactResult]:
    """Build every artifact of the configured target(s). A failing artifact does not stop the others. ``source``:
    the model as ``resolve_model`` checked it already (an isolated build's parent did)."""
    progress = progress or PrintProgress()
    source, targets, refused = preflight(config, source)
    out = Path(config.out)
    # The lock first: a second export into the folder is refused at once, not after loading the model (seconds to
    # minutes); the lock leaves no folder behind if the model's last check in open_session refuses it.
    with sigterm_as_interrupt(), output_lock(out):
        for reason in refused.values():
            progress.step(f"refused: {reason}")
        progress.step("loading the model" + (" and sweeping the PCA sizes" if config.dims == "auto" else
                                             f" and fitting PCA to {config.dims} dims" if config.dims else ""))
        session = open_session(config, source)  # the last check of the model: nothing is written before it
        recover(out)
        return [_build_or_refuse(session, target, plan, refused, progress) for target in targets
                for plan in target.plans]


def _build_or_refuse(session: Session, target: Target, plan: ArtifactPlan, refused: dict[tuple[str, str], str],
                     progress: Progress) -> ArtifactResult:
    started = time.perf_counter()
    final = _destination(session, target, plan)
    if (target.name, plan.folder) in refused:
        result = ArtifactResult(target.name, str(final), plan.format, True, refused=refused[target.name, plan.folder])
    else:
        try:
            manifest = build_artifact(session, target, plan, progress.step)
            result = ArtifactResult(target.name, str(final), plan.format, True, manifest)
        except Exception as exc:
            result = ArtifactResult(target.name, str(final), plan.format, False, error=_failure_message(exc, final))
        result.seconds = time.perf_counter() - started
    progress.artifact_done(result)
    return result


