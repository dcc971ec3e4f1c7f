"""manifest.json: the contract an app reads, and the record that lets `verify` and `export --config` work.

Every file in the artifact except manifest.json and report.md (which record results about the
others), and a signed release's model.sig and provenance.json (written after it, covering it), is listed with its
sha256; `check_files` fails on a missing, extra-large or altered file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

from core.config import BuildConfig
from core.cpu import ISA_CLASSES
from core.errors import ArtifactError
from core.safe_io import contained, read_json
from core.schema import Hex, Json, Matches, OneOf, Range, Record, Text, decode, encode

MANIFEST = "manifest.json"
SCHEMA_FAMILY = "embedding-toolchain/manifest/"
SCHEMA = SCHEMA_FAMILY + "2"  # bump with every change to the records below
SIGNATURE = "model.sig"  # model-signing's bundle over every file of a signed artifact (pipelines.signing)
PROVENANCE = "provenance.json"  # the in-toto statement signed with it
UNCHECKED_FILES = {MANIFEST, "report.md", SIGNATURE, PROVENANCE}
MAX_MANIFEST_BYTES = 4 << 20  # manifest.json and report.md: a few kB in practice
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "litert-torch",
    "ai-edge-litert",
    "executorch",
    "coremltools",
    "openvino",
    "mediapipe",
    "numpy",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(artifact_dir: Path) -> list[Path]:
    """Every file in the artifact that the checksums cover, sorted (directories such as .mlpackage are walked)."""
    files = (p for p in artifact_dir.rglob("*") if p.is_file())
    return sorted(p for p in files if p.relative_to(artifact_dir).as_posix() not in UNCHECKED_FILES)


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file in a directory (an .mlpackage is a folder)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checksums(artifact_dir: Path) -> dict[str, str]:
    return {p.relative_to(artifact_dir).as_posix(): sha256_file(p) for p in artifact_files(artifact_dir)}


def file_sizes(artifact_dir: Path) -> dict[str, int]:
    """Bytes of every checksummed file: archive extraction refuses a member of another size before writing it."""
    return {p.relative_to(artifact_dir).as_posix(): p.stat().st_size for p in artifact_files(artifact_dir)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# The schema: every field of manifest.json, its type and its range. A manifest comes from an untrusted folder or
# archive, so `read_manifest` decodes it through these records (core.schema) before anything reads a field.
Name = Annotated[str, Text(256)]  # shown to people and written into reports
# A model's short name becomes part of folder and archive names and of generated code: letters, digits and . _ + -
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
ModelName = Annotated[str, Matches(MODEL_NAME_PATTERN, "letters, digits and . _ + - (a file name)")]
Prose = Annotated[str, Text(4096)]
LongText = Annotated[str, Text(65536, line=False)]  # a prompt is prepended to every text
Count = Annotated[int, Range(0, 2**31 - 1)]
Bytes = Annotated[int, Range(0, 2**50)]
Dims = Annotated[int, Range(1, 1 << 16)]
TokenId = Annotated[int, Range(0, 2**31 - 1)]  # an id past int32 overflows every runtime's input tensor
Tokens = Annotated[int, Range(1, 1 << 16)]  # no model of this kind reads more tokens at once
Batch = Annotated[int, Range(1, 4096)]
Cosine = Annotated[float, Range(-1.001, 1.001)]  # float rounding may pass 1 by an ulp
Points = Annotated[float, Range(-100.0, 100.0)]  # STS-B Spearman x100, and differences of it
Sha256 = Annotated[str, Hex(64)]
Seconds = Annotated[float, Range(0.0, 1e7)]


@dataclass(frozen=True)
class IsaRecord:
    """The x86 CPU class an artifact is built for (core.cpu.ISA_CLASSES) and the CPU that built it."""

    class_: Annotated[str, OneOf(tuple(ISA_CLASSES))]  # also part of a layout's file name
    description: Prose
    built_on: Name


@dataclass(frozen=True)
class InputSpec:
    name: Literal["input_ids", "attention_mask", "token_type_ids"]
    dtype: Literal["int64", "int32"]
    shape: tuple[Literal["batch", "sequence", "bucket"], ...]


@dataclass(frozen=True)
class OutputSpec:
    name: Name
    dtype: Literal["float32"]
    shape: tuple[Literal["batch"] | Dims, ...]


@dataclass(frozen=True)
class Shape:
    """A fixed input shape a static-shape format was built for (a bucket)."""

    batch: Batch
    sequence: Tokens
    name: Name  # signature name or file this shape runs through


@dataclass(frozen=True)
class TokenizerRecord:
    file: str  # inside the artifact (checked by read_manifest)
    pad_token_id: TokenId
    padding_side: Literal["right"]
    truncation: Prose
    max_length: Tokens


@dataclass(frozen=True)
class PcaRecord:
    dims: Dims
    source_dim: Dims
    explained_variance_ratio: Annotated[float, Range(0.0, 1.0)]
    fit_corpus: Prose
    file: str  # inside the artifact (checked by read_manifest)


@dataclass(frozen=True)
class Int8Ranges:
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True)
class BinaryCut:
    threshold: tuple[float, ...]
    bit_order: Prose


@dataclass(frozen=True)
class VectorsRecord:
    """core.vectors.VectorCodec's calibration: how stored int8 and binary vectors map to floats."""

    calibration: Prose
    int8: Int8Ranges
    binary: BinaryCut


@dataclass(frozen=True)
class SweepRow:
    dims: Dims  # output size; the model's own size is the row without a projection
    precision: Literal["float32", "int8", "binary"]
    bytes_per_vector: Bytes
    spearman: float
    spearman_drop: float  # against the full model's float32 vectors
    recall_at_10: float
    mrr: float
    mrr_drop: float


@dataclass(frozen=True)
class DimsSweepRecord:
    """pipelines.dims: quality of every output size and stored precision on STS-B dev."""

    evaluated_on: Prose
    max_drop: Points
    smallest_within_max_drop: Dims
    rows: tuple[SweepRow, ...]


@dataclass(frozen=True)
class Distillation:
    """What `distill` recorded about a model it made (core.model_files.DISTILL_RECORD)."""

    teacher: Prose
    kept_layers: tuple[Count, ...]
    teacher_layers: Count
    spearman_teacher: Points
    spearman_student: Points
    seconds: Seconds
    matryoshka_dims: tuple[Dims, ...] | None = None


@dataclass(frozen=True)
class ModelRecord:
    name: ModelName
    source: Prose
    sha256: Sha256  # every file of the model directory (core.model_source.ModelSource)
    distillation: Distillation | None = None


@dataclass(frozen=True)
class GraphSpec:
    """What the graph computes (core.graph builds it), recorded in every manifest."""

    family: Name
    model_type: Name
    input_names: tuple[Literal["input_ids", "attention_mask", "token_type_ids"], ...]
    output_name: Name
    pooling: Name
    dense_layers: Count
    normalized: bool
    source_dim: Dims
    embedding_dim: Dims
    pca_dims: Dims | None
    max_seq_length: Tokens
    hidden_size: Dims
    intermediate_size: Annotated[int, Range(1, 1 << 20)]
    num_attention_heads: Dims
    num_hidden_layers: Dims
    vocab_size: Annotated[int, Range(1, 1 << 24)]


@dataclass(frozen=True)
class Gate:
    """Parity a shipped artifact must reach against the fp32 PyTorch model on STS-B dev. A manifest records the gate
    it passed at export, for apps; verify applies the target's own (targets registry)."""

    min_mean_cosine: Cosine
    min_cosine: Cosine  # worst single sentence
    max_spearman_drop: Points  # points (x100) below the fp32 source model
    pca_extra_drop: Points = 0.5  # allowed on top when a PCA projection reduces the dims


@dataclass(frozen=True)
class CosineSummary:
    mean_cosine: Cosine
    min_cosine: Cosine


@dataclass(frozen=True)
class TextPass:
    """A text-in artifact on STS-B dev and on core.data.TOKENIZER_TEXTS, against the fp32 model."""

    stsb: CosineSummary
    strings: CosineSummary


@dataclass(frozen=True)
class AppText:
    """A text-in artifact's strings after the app-side normalisation, and raw (an app that skips it)."""

    normalized: TextPass
    raw: TextPass


@dataclass(frozen=True)
class Parity:
    """The artifact against the fp32 PyTorch model on STS-B dev (pipelines.verify measures it)."""

    sentences: Count
    mean_cosine: Cosine
    min_cosine: Cosine
    p1_cosine: Cosine
    nonfinite_rows: Count
    spearman: float  # artifact, STS-B dev, x100 (NaN where a row is not finite)
    spearman_reference: float  # fp32 PyTorch at the artifact's dims (with PCA if any)
    spearman_source: float  # fp32 PyTorch at the source model's dims
    spearman_drop: float  # spearman_source - spearman
    pca_dims: Dims | None = None
    test_vectors_min_cosine: Cosine | None = None
    emulated: bool = False  # True where the format's runtime cannot run here (Core ML on Linux)
    runtime: Name = ""
    app_text: AppText | None = None  # text-in artifacts (MediaPipe); None for artifacts that take token ids
    # Texts the source model itself embeds as the zero vector (a degenerate model): no cosine can judge the
    # artifact on them, so they are left out of the cosines and the gate says so.
    zero_reference_rows: Count = 0
    pairs: Count | None = None  # STS-B pairs behind the Spearman figures (None: recorded before it was counted)

    def rounded(self) -> Parity:
        """Figures to 6 decimals, as the manifest records them."""
        return replace(self, **{f.name: round(v, 6) for f in fields(self) if isinstance(v := getattr(self, f.name),
                                                                                         float)})


@dataclass(frozen=True)
class Speed:
    """This artifact's row of one `cli.py bench` run (pipelines.bench), with the fp32 PyTorch baseline timed in it."""

    label: Prose
    runtime: Name
    throughput_sps: Annotated[float, Range(0.0, 1e9)]  # sentences/s at batch_size, tokenization included
    latency_p50_ms: Annotated[float, Range(0.0, 1e7)]  # batch 1
    latency_p95_ms: Annotated[float, Range(0.0, 1e7)]
    throughput_ratio: Annotated[float, Range(0.0, 1e6)]  # against the baseline
    latency_p50_ratio: Annotated[float, Range(0.0, 1e6)]
    baseline_size_bytes: Bytes  # the source model's weights
    batch_size: Batch
    threads: Count
    cpu: Prose
    table_md: LongText  # the whole run's table


@dataclass(frozen=True)
class Structure:
    """A format's own checks of an artifact (its runner's ``structural_checks``): facts for people, and what the
    gate judges of them."""

    facts: dict[str, Json]  # the format's own (converters/<format>/runner.py)
    gate_failures: tuple[Prose, ...] = ()
    # The artifact's own program run another way (Core ML's saved program op by op off macOS): the worst cosine on
    # the test vectors, per way.
    program_test_vectors_min_cosine: dict[str, Cosine] = field(default_factory=dict)


@dataclass(frozen=True)
class Arm64Cpu:
    """One emulated ARM CPU model's run of a phone artifact (pipelines.arm64); ``skipped`` says why there is none."""

    kernels: Prose  # the int8 kernels this CPU model selects
    ok: bool
    failures: tuple[Prose, ...] = ()
    skipped: Prose | None = None
    sentences: Count = 0
    mean_cosine: Cosine | None = None
    min_cosine: Cosine | None = None
    spearman_drop: float | None = None
    test_vectors_min_cosine: Cosine | None = None
    max_abs_diff_vs_x86: float | None = None  # None where a row was not finite (JSON readers in apps reject NaN)
    min_cosine_vs_x86: Cosine | None = None
    runtime: Name = ""
    emulated_seconds: Seconds = 0.0  # qemu's software emulation: not a speed


@dataclass(frozen=True)
class Arm64Record:
    """`verify --arch arm64`: the artifact on every emulated ARM CPU model."""

    qemu: Prose
    cpus: dict[str, Arm64Cpu]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cpus.values())

    def failures(self) -> list[str]:
        return [f"{cpu}: {f}" for cpu, c in self.cpus.items() for f in c.failures]


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed: what an artifact is (written at export) and what was measured of it (results)."""

    schema: Literal["embedding-toolchain/manifest/2"]
    target: Name
    artifact: Prose
    format: Name  # a registered artifact format (converters.registry)
    file: str  # the model file or folder, inside the artifact (checked by read_manifest)
    runtime: Name
    size_bytes: Bytes
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    isa: IsaRecord | None  # None: any x86 CPU (or not an x86 artifact)
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    shapes: tuple[Shape, ...] | None  # None: any batch and sequence
    embedding_dim: Dims
    max_seq_length: Tokens
    normalized: bool
    pooling: Name
    prompts: dict[str, LongText]  # prepended to the text before tokenizing, as sentence-transformers does
    default_prompt_name: Name | None
    pca: PcaRecord | None
    vectors: VectorsRecord
    dims_sweep: DimsSweepRecord | None
    tokenizer: TokenizerRecord
    model: ModelRecord
    graph: GraphSpec
    conversion: dict[str, Json]  # the converter's own facts (converters/<format>/convert.py)
    options: dict[str, Json]  # the format's options (converters/<format>, its options dataclass)
    gate: Gate
    build: BuildConfig  # `export --config manifest.json` rebuilds from it
    versions: dict[str, Name]
    created_unix: Annotated[int, Range(0, 2**40)]
    files: dict[str, Sha256]  # every file but UNCHECKED_FILES, with its sha256
    file_bytes: dict[str, Bytes]
    # Results: written by export's gate and `verify` (parity, structure, verdict), export (timings), `bench` (speed),
    # `verify --arch arm64` (arm64).
    parity: Parity | None = None
    structure: Structure | None = None
    verdict: Literal["pass", "fail"] | None = None
    timings: dict[str, Seconds] | None = None
    speed: Speed | None = None
    arm64: Arm64Record | None = None

    @property
    def isa_class(self) -> str | None:
        """The x86 ISA class this artifact was built for; None where any CPU runs it as built."""
        return self.isa.class_ if self.isa else None

    def options_as(self, cls: type[Record]) -> Record:
        """``options`` as the format's options record (converters/<format>), every field checked."""
        return decode(cls, self.options, ArtifactError, "manifest options")

    def conversion_as(self, cls: type[Record]) -> Record:
        """The conversion facts a format's runner reads back, as the record the format declares; the facts written
        for people stay plain JSON."""
        return decode(cls, self.conversion, ArtifactError, "manifest conversion", partial=True)

    def to_json(self) -> dict[str, Json]:
        return encode(self)


@dataclass(frozen=True)
class Artifact:
    """An artifact folder and its manifest, read and validated once (read_artifact), or just built by export."""

    folder: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.file

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.manifest.tokenizer.file

    def with_results(self, **results: Any) -> Artifact:
        """The same folder with results (parity, verdict, timings, speed, arm64, ...) set in its manifest."""
        return replace(self, manifest=replace(self.manifest, **results))


def read_artifact(folder: Path) -> Artifact:
    """The artifact in ``folder``, its manifest read through ``read_manifest``."""
    folder = Path(folder)
    return Artifact(folder, read_manifest(folder))


def read_manifest(artifact_dir: Path) -> Manifest:
    """The artifact's manifest, decoded through the schema once: a damaged, hostile or older manifest is one
    ArtifactError naming the field and the fix, never a KeyError later or a read outside the folder."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST
    if not artifact_dir.is_dir():
        raise ArtifactError(f"{str(artifact_dir)!r} is not a directory; pass an artifact folder from `cli.py export`")
    if not path.is_file():
        raise ArtifactError(f"{str(artifact_dir)!r} has no {MANIFEST}; it was not made by this toolchain")
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symlink; an artifact's manifest is a plain file")
    manifest = parse_manifest(read_json(path, ArtifactError, "artifact manifest", cap=MAX_MANIFEST_BYTES), str(path))
    check_paths(manifest, artifact_dir, str(path))
    return manifest


def parse_manifest(data: dict[str, Json], where: str) -> Manifest:
    """Parsed manifest.json, decoded through the schema; an older schema version is named with how to rebuild."""
    schema = data.get("schema")
    if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY) and schema != SCHEMA:
        version, current = schema[len(SCHEMA_FAMILY):][:20], SCHEMA[len(SCHEMA_FAMILY):]
        raise ArtifactError(f"{where} is manifest schema version {version!r}; this toolchain reads version "
                            f"{current!r}: rebuild the artifact with `cli.py export --config {where}`")
    if schema != SCHEMA:
        raise ArtifactError(f"{where} is not a manifest of this toolchain (schema is not {SCHEMA!r})")
    return decode(Manifest, data, ArtifactError, where)


def check_paths(manifest: Manifest, artifact_dir: Path, where: str) -> None:
    """Every path the manifest names stays inside the artifact folder, and the fields that name each other agree."""
    if manifest.default_prompt_name is not None and manifest.default_prompt_name not in manifest.prompts:
        raise ArtifactError(f"{where}: default_prompt_name {manifest.default_prompt_name!r} is not in 'prompts'")
    if manifest.output.shape[-1:] != (manifest.embedding_dim,):
        raise ArtifactError(f"{where}: output.shape {list(manifest.output.shape)} does not end in embedding_dim "
                            f"{manifest.embedding_dim}")
    contained(artifact_dir, manifest.file, ArtifactError, f"{where} 'file'")
    contained(artifact_dir, manifest.tokenizer.file, ArtifactError, f"{where} tokenizer 'file'")
    if manifest.pca is not None:
        contained(artifact_dir, manifest.pca.file, ArtifactError, f"{where} pca 'file'")
    for name in manifest.files:
        contained(artifact_dir, name, ArtifactError, f"{where} 'files'")
    stray = sorted(set(manifest.file_bytes) - set(manifest.files))
    if stray:
        raise ArtifactError(f"{where}: 'file_bytes' lists {stray[0]!r}, which 'files' does not")


def write_manifest(artifact_dir: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(artifact_dir) / MANIFEST, manifest.to_json())


def check_files(artifact: Artifact) -> None:
    """Raise ArtifactError naming the first file that is missing, unexpected, a symlink, or altered."""
    folder = artifact.folder
    links = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink())
    if links:
        raise ArtifactError(f"{links[0]} in {folder} is a symlink; an artifact holds plain files only")
    expected, sizes = artifact.manifest.files, artifact.manifest.file_bytes
    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{name} is listed in the manifest but missing from {folder}")
        if name in sizes and path.stat().st_size != sizes[name]:
            raise ArtifactError(f"{name} has {path.stat().st_size} bytes, the manifest says {sizes[name]}: the file "
                                "was altered or truncated")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{name} does not match its sha256 in the manifest: the file was altered or truncated")
    extra = sorted(set(checksums_names(folder)) - set(expected))
    if extra:
        raise ArtifactError(f"{extra[0]} is in {folder} but not in the manifest; the artifact was modified")


def checksums_names(artifact_dir: Path) -> list[str]:
    return [p.relative_to(artifact_dir).as_posix() for p in artifact_files(artifact_dir)]


def find_artifacts(path: Path) -> list[Path]:
    """An artifact dir itself, or every artifact dir below a target/model folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.exists():
        raise ArtifactError(f"{str(path)!r} does not exist; pass an artifact directory made by `cli.py export`")
    found = sorted(p.parent for p in path.rglob(MANIFEST) if ".tmp" not in p.parent.name)
    if not found:
        raise ArtifactError(f"no artifact (no {MANIFEST}) found under {str(path)!r}; it was not made by this toolchain")
    return found
