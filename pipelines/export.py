"""The export pipeline: load -> (fit PCA) -> per artifact: convert -> package -> verify -> gate -> move into place.

Every artifact is built in a hidden temporary folder beside its destination and renamed into
place only after it passed its gate, so an interrupted or failed run leaves the old artifact or
none, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from converters.base import Calibration, Conversion
from converters.registry import get_format
from core.config import QUANTIZATION_MODES, BuildConfig
from core.cpu import cpu_isa, isa_class
from core.data import load_stsb, read_corpus
from core.errors import ConfigError, GateError, OutputError, ToolchainError
from core.families import Family, family_for
from core.graph import GraphSpec, build_graph, graph_spec, model_config
from core.manifest import (
    MANIFEST,
    SCHEMA,
    checksums,
    file_sizes,
    library_versions,
    path_size,
    read_manifest,
    write_json_atomic,
)
from core.model_source import ModelSource, check_weights_are_safe, load_sentence_transformer, resolve_model
from core.pca import Projection, fit_pca
from core.reference import Reference
from core.safe_io import read_json
from core.vectors import VectorCodec
from pipelines.dims import DimsSweep, sweep
from pipelines.distill import read_distillation
from pipelines.report import model_card, write_artifact_report
from pipelines.runtime import ArtifactEncoder
from pipelines.staging import output_lock, recover, staging_dir, swap_into_place
from pipelines.verify import check, write_test_vectors
from targets.base import ArtifactPlan, Target, get_targets

PCA_FILE = "pca.safetensors"
MODEL_CARD = "MODEL_CARD.md"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CONFIG_FILE = "config.json"


@dataclass
class ArtifactResult:
    target: str
    folder: str  # path of the artifact (final location)
    format: str
    ok: bool
    manifest: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    refused: str | None = None  # why the model's family cannot take this format; nothing was built


@dataclass
class Session:
    """What every artifact of one export shares: the source model, its graph spec and the reference."""

    config: BuildConfig
    source: ModelSource
    st_model: object
    spec: GraphSpec
    reference: Reference
    calibration: Calibration  # one per export: converters share what they measure about the model
    vector_codec: VectorCodec  # int8 / binary storage ranges of the artifact's output, on the fit corpus
    dims_sweep: DimsSweep  # PCA sizes x stored precisions on STS-B dev; with --dims auto, what it chose
    distillation: dict | None  # the model's distillation record, if `distill` made it

    @property
    def projection(self) -> Projection | None:
        return self.reference.projection

    @property
    def model_dir(self) -> Path:
        return Path(self.config.out) / (self.source.name + (f"-pca{self.spec.pca_dims}" if self.projection else ""))


def _options_dict(options) -> dict:
    return asdict(options) if is_dataclass(options) else dict(options or {})


def fit_sentences(fit_corpus: str | None) -> list[str]:
    return read_corpus(Path(fit_corpus)) if fit_corpus else load_stsb("train").unique_sentences()


def fit_projection(fit: np.ndarray, dims: int) -> Projection:
    """PCA to ``dims`` on the source model's embeddings of the fit corpus."""
    count, source_dim = fit.shape
    if not 1 <= dims <= source_dim:
        raise ConfigError(f"--dims must be between 1 and the model's dimension {source_dim}, got {dims}")
    if count < dims:
        raise ConfigError(f"PCA to {dims} dims needs at least {dims} corpus sentences, the corpus has {count}")
    return fit_pca(fit, dims)


def check_build(config: BuildConfig, source: ModelSource | None = None) -> tuple[ModelSource, Family]:
    """Every check that needs no model loaded: options, corpus, output folder, model directory and family. A
    ``source`` already resolved (and so checked: the parent of an isolated build) is not checked again."""
    if isinstance(config.dims, str) and config.dims != "auto" or isinstance(config.dims, int) and config.dims <= 0:
        raise ConfigError(f"--dims must be a positive number of dimensions or 'auto', got {config.dims}")
    if config.max_drop is not None and (config.dims != "auto" or config.max_drop < 0):
        raise ConfigError(f"--max-drop (STS-B points, >= 0) goes with --dims auto, got {config.max_drop} with "
                          f"--dims {config.dims}")
    if config.isa is not None:
        isa_class(config.isa)
    if config.quantization not in (None, *QUANTIZATION_MODES):
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATION_MODES)}, "
                          f"got {config.quantization!r}")
    if config.fit_corpus:
        read_corpus(Path(config.fit_corpus))
    check_output_dir(Path(config.out))
    source = source or resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    check_weights_are_safe(source.path, config.allow_pickle)
    return source, family_for(source.layout.model_type)


def refusals(family: Family, source: ModelSource, targets: list[Target]) -> dict[tuple[str, str], str]:
    """(target, folder) -> why, for every planned artifact whose format the family, or this model's own files
    (a tokenizer the format's runtime cannot reproduce), cannot take."""
    refused = {}
    for target in targets:
        for plan in target.plans:
            check = get_format(plan.format).refusal
            what = f"cannot be exported to {target.name} {plan.description}"
            if plan.format in family.refused_formats:
                reason = family.refused_formats[plan.format]
                refused[target.name, plan.folder] = f"{family.name} models {what}: {reason}"
            elif check and (reason := check(source)):
                refused[target.name, plan.folder] = f"{source.name} ({family.name}) {what}: {reason}"
    return refused


def open_session(config: BuildConfig, source: ModelSource) -> Session:
    st_model = load_sentence_transformer(
        source, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code
    )
    distillation = read_distillation(source.path)
    reference = Reference(st_model, source)
    fit = reference.source_embeddings(fit_sentences(config.fit_corpus))
    # The sweep costs seconds once the embeddings are in: every manifest shows the dims / precision trade-off.
    dims_sweep = sweep(fit, reference.source_embeddings(load_stsb("dev").unique_sentences()), config.max_drop)
    if config.dims == "auto" and dims_sweep.chosen < fit.shape[1]:
        reference.projection = fit_pca(fit, dims_sweep.chosen)
    elif isinstance(config.dims, int):
        reference.projection = fit_projection(fit, config.dims)
    spec = graph_spec(st_model, reference.projection)
    codec = VectorCodec.fit(reference.project(fit), config.fit_corpus or "STS-B train")
    return Session(config, source, st_model, spec, reference, calibration(st_model, spec), codec, dims_sweep,
                   distillation)


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {str(out)!r} is a file; pass a directory to --out")
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe_dir, os.W_OK):
        raise OutputError(f"output directory {str(probe_dir)!r} is not writable; pass a writable --out")


def write_tokenizer(session: Session, out_dir: Path, max_length: int) -> dict:
    """tokenizer.json truncating on the right at max_length tokens: the source model's own limit, unless the
    artifact takes fewer (converters.base.SEQUENCE_LIMIT), which the manifest then says; the source's other
    tokenizer files, and the config.json that libraries loading the folder read."""
    tokenizer = Tokenizer.from_str(session.st_model.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    for name in TOKENIZER_FILES:
        if (session.source.path / name).is_file():
            shutil.copyfile(session.source.path / name, out_dir / name)
    config_file = out_dir / "tokenizer_config.json"
    if config_file.is_file():  # libraries that tokenize from it (transformers.js, fastembed) truncate as we do
        tokenizer_config = read_json(config_file, ConfigError, "tokenizer_config.json")
        tokenizer_config["model_max_length"] = max_length
        config_file.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hf = session.st_model.tokenizer
    pad_token_id = int(hf.pad_token_id if hf.pad_token_id is not None else 0)
    config = model_config(session.spec, pad_token_id)  # for libraries that load the folder (layouts, transformers.js)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source_limit = session.spec.max_seq_length
    same = "as the source model" if max_length == source_limit else f"the source model truncates at {source_limit}"
    return {
        "file": "tokenizer.json",
        "pad_token_id": pad_token_id,
        "padding_side": "right",
        "truncation": f"right side, to {max_length} tokens including special tokens ({same})",
        "max_length": max_length,
    }


def calibration(st_model, spec: GraphSpec) -> Calibration:
    """STS-B train sentences (held in: the gate measures on dev) in the source model's own tokenization."""

    def tokenize(sentences: Sequence[str], max_length: int, pad_to_max_length: bool) -> dict[str, np.ndarray]:
        encoded = st_model.tokenizer(
            list(sentences), padding="max_length" if pad_to_max_length else True, truncation=True,
            max_length=max_length, return_tensors="np",
        )
        return {name: encoded[name].astype(np.int64) for name in spec.input_names}

    backend = getattr(st_model.tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer has none
    return Calibration(load_stsb("train").unique_sentences(), tokenize,
                       tokenizer_json=backend.to_str() if backend is not None else "")


def build_manifest(session: Session, target: Target, plan: ArtifactPlan, conversion: Conversion,
                   tokenizer: dict, artifact_dir: Path) -> dict:
    spec = session.spec
    dtype = conversion.input_dtype
    sequence_dim = "sequence" if conversion.shapes is None else "bucket"
    return {
        "schema": SCHEMA,
        "target": target.name,
        "artifact": plan.description,
        "format": plan.format,
        "file": conversion.model_file,
        "runtime": conversion.runtime,
        "size_bytes": sum(path_size(artifact_dir / f) for f in (conversion.model_file, *conversion.weight_files)),
        "precision": conversion.precision,
        # The CPU class the artifact is built for; runtime, verify and bench check the CPU they run on.
        "isa": None if conversion.isa is None else {
            "class": conversion.isa, "description": isa_class(conversion.isa).description, "built_on": cpu_isa(),
        },
        "inputs": [{"name": n, "dtype": dtype, "shape": ["batch", sequence_dim]} for n in spec.input_names],
        "output": {"name": conversion.output_name or spec.output_name, "dtype": "float32",
                   "shape": ["batch", spec.embedding_dim]},
        "shapes": [asdict(s) for s in conversion.shapes] if conversion.shapes is not None else None,
        "embedding_dim": spec.embedding_dim,
        "max_seq_length": tokenizer["max_length"],
        "normalized": spec.normalized,
        "pooling": spec.pooling,
        # Prepended to the text before tokenizing, as sentence-transformers does; the default one always.
        "prompts": {name: text for name, text in (session.st_model.prompts or {}).items() if text},
        "default_prompt_name": session.st_model.default_prompt_name,
        "pca": None if session.projection is None else {
            "dims": spec.pca_dims,
            "source_dim": spec.source_dim,
            "explained_variance_ratio": round(session.projection.explained_variance_ratio, 6),
            "fit_corpus": session.config.fit_corpus or "STS-B train",
            "file": PCA_FILE,
        },
        "vectors": session.vector_codec.to_dict(),
        "dims_sweep": session.dims_sweep.to_dict(),
        "tokenizer": tokenizer,
        "model": {
            "name": session.source.name,
            "source": session.source.spec,
            "sha256": session.reference.model_sha256,  # every file of the model directory (see ModelSource)
            "distillation": session.distillation,
        },
        "graph": asdict(spec),
        "conversion": conversion.details,
        "options": _options_dict(plan.options),
        "gate": asdict(plan.gate),
        "build": session.config.to_dict(),
        "versions": library_versions(),
        "created_unix": int(os.environ.get("SOURCE_DATE_EPOCH", time.time())),
        "files": checksums(artifact_dir),
        "file_bytes": file_sizes(artifact_dir),
    }


def _with_overrides(plan: ArtifactPlan, config: BuildConfig) -> ArtifactPlan:
    """Apply the build's options (--quantization, --isa) to formats that have such choices."""
    apply = get_format(plan.format).with_build
    return plan if apply is None else replace(plan, options=apply(plan.options, config))


def _destination(session: Session, target: Target, plan: ArtifactPlan) -> Path:
    base = session.model_dir / target.name
    return base / plan.folder if plan.folder else base


def build_artifact(session: Session, target: Target, plan: ArtifactPlan, log: Callable[[str], None]) -> dict:
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
        write_json_atomic(tmp / MANIFEST, draft)  # what the runtime reads; checksums are final below
        encoder = ArtifactEncoder(tmp, threads=os.cpu_count())
        write_test_vectors(tmp, encoder, session.reference)
        manifest = build_manifest(session, target, plan, conversion, tokenizer, tmp)
        if session.config.verify:
            log(f"{target.name}: verifying {plan.description} on STS-B dev")
            started = time.perf_counter()
            verdict = check(tmp, manifest, encoder, session.reference, plan.gate)
            manifest.update(verdict.manifest_fields())
            timings["verify_s"] = round(time.perf_counter() - started, 1)
            if not verdict.ok:
                raise GateError(f"{target.name} ({plan.description}) failed its gate: " + "; ".join(verdict.failures))
        manifest["timings"] = timings
        write_json_atomic(tmp / MANIFEST, manifest)
        write_artifact_report(tmp, manifest)
        swap_into_place(tmp, final)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks remove temporary folders."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def count_artifacts(config: BuildConfig) -> int:
    return sum(len(t.plans) for t in get_targets(config.target))


def preflight(config: BuildConfig, source: ModelSource | None = None
              ) -> tuple[ModelSource, list[Target], dict[tuple[str, str], str]]:
    """Every check that needs no model loaded, and the artifacts the model's family refuses; raises the first
    bad input as one line."""
    targets = get_targets(config.target)
    source, family = check_build(config, source)
    refused = refusals(family, source, targets)
    if len(refused) == count_artifacts(config):  # nothing left to build: one line, before any work
        raise ConfigError(next(iter(refused.values())))
    return source, targets, refused


def export(config: BuildConfig, progress: Progress | None = None,
           source: ModelSource | None = None) -> list[ArtifactResult]:
    """Build every artifact of the configured target(s). A failing artifact does not stop the others. ``source``:
    the model as ``resolve_model`` checked it already (an isolated build's parent did)."""
    progress = progress or PrintProgress()
    source, targets, refused = preflight(config, source)
    out = Path(config.out)
    with sigterm_as_interrupt():
        for reason in refused.values():
            progress.step(f"refused: {reason}")
        progress.step("loading the model" + (" and sweeping the PCA sizes" if config.dims == "auto" else
                                             f" and fitting PCA to {config.dims} dims" if config.dims else ""))
        session = open_session(config, source)  # the last check of the model: nothing is written before it
        with output_lock(out):
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


def rebuild_config(config_file: Path, out: str, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> tuple[BuildConfig, dict | None]:
    """The build recorded in ``config_file`` (a build config or an artifact's manifest.json), writing into ``out``;
    with the manifest, when it is one, to compare the rebuilt bytes against. The rebuild never replaces the
    artifact it is checked against. Pickle and remote code come from the command line only: a config file
    that asks for them is as easy to write as the model it points at."""
    config = replace(BuildConfig.from_file(config_file), out=out, allow_pickle=allow_pickle,
                     trust_remote_code=trust_remote_code)
    artifact = Path(config_file).parent
    if Path(config_file).name != MANIFEST or not (artifact / MANIFEST).is_file():
        return config, None
    original = read_manifest(artifact)
    if artifact.resolve().is_relative_to(Path(out).resolve()):
        raise OutputError(f"rebuilding into {out!r} would replace the artifact whose manifest is being rebuilt "
                          f"({artifact}); pass another --out")
    return config, original


def rebuild_differences(original: dict, results: list[ArtifactResult]) -> list[str] | None:
    """Files of the rebuilt artifact whose bytes differ from the original manifest's checksums (missing and extra
    files included); None when the rebuild made no artifact of that kind."""
    rebuilt = next((r.manifest for r in results if r.manifest and r.manifest["target"] == original["target"]
                    and r.manifest["artifact"] == original["artifact"]), None)
    if rebuilt is None:
        return None
    expected, got = original["files"], rebuilt["files"]
    return sorted(name for name in set(expected) | set(got) if expected.get(name) != got.get(name))
