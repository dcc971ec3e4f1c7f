"""`embed`: fill an index with the artifact that ships, so stored vectors and query vectors come from one graph.

The corpus is planned into shards of ``chunk_rows`` rows (pipelines.corpus); each shard is read where it is embedded
and becomes one parquet file (id, vector as a fixed-size list: float32, or int8 / packed binary with ``precision``)
written by that process, atomically, then recorded by a small file of its own in ``ledger/``. A rerun of the same
job skips the shards whose record it finds (their files' sizes re-checked), so a killed job finishes with no row
missing and none twice; a shard written twice (a retried task) is written the same. ``job.json`` pins what a shard
depends on (artifact, input bytes and fields, batching, precision); another job into the same place is refused.
Output goes to a local folder or an object store (core.storage), so a worker on any node writes its own shards.

Batches are planned per shard by one rule (``runtime.plan_batches``: rows sorted by token count, stable, cut into
batches of ``batch_size``) and a shard runs as one ``ArtifactEncoder.encode`` call wherever it runs. A dynamic int8
artifact picks activation scales per batch, so the same batches on every engine are what makes the local and the
Ray results identical row for row; one call per shard lets a runner with parallel streams (OpenVINO) use them.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

import core.storage as storage
from core.errors import ConfigError, OutputError, require
from core.manifest import Artifact, Manifest, check_files, read_artifact
from core.storage import Place, failures_as
from core.vectors import PRECISIONS, VectorCodec
from pipelines.corpus import CorpusPlan, Fields, FileScan, Shard, input_files, plan_corpus, read_shard, scan_file
from pipelines.runtime import ArtifactEncoder

JOB = "job.json"
LEDGER = "ledger"
METADATA_KEY = b"embedding_toolchain"
MAX_RECORD_BYTES = 4096


@dataclass(frozen=True)
class EmbedJob:
    artifact_checksum: str  # sha256 over the manifest's file checksums: the graph, tokenizer and test vectors
    input_fingerprint: str  # the input files' names and bytes, and the fields read from them
    rows: int
    shards: int
    dims: int
    chunk_rows: int = 4096
    batch_size: int = 64
    precision: str = "float32"  # or int8 / binary, with the artifact's calibrated ranges (core.vectors)


def artifact_checksum(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest.files, sort_keys=True).encode()).hexdigest()


def open_artifact(artifact_dir) -> Artifact:
    """The artifact, after its files passed their checksums: a damaged artifact never fills an index."""
    artifact = read_artifact(artifact_dir)
    check_files(artifact)
    return artifact


def vector_codec(manifest: Manifest, precision: str) -> VectorCodec | None:
    """The artifact's calibrated ranges for int8 / binary vectors; None for float32."""
    if precision == "float32":
        return None
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return VectorCodec.from_record(manifest.vectors, manifest.embedding_dim)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard, as its ledger file records it."""

    index: int
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardWriter:
    """Everything a process needs to embed a shard and write it (small, so it travels to workers)."""

    output: Place
    fields: Fields
    batch_size: int
    precision: str
    codec: VectorCodec | None
    metadata: dict

    def embed(self, shard: Shard, encoder: ArtifactEncoder) -> ShardRecord:
        """Read the shard, embed it as one ``encode`` call, write its file and then its ledger record."""
        ids, texts = read_shard(shard, self.fields)
        vectors = encoder.encode(texts, self.batch_size)
        stored = vectors if self.codec is None else self.codec.encode(vectors, self.precision)
        data = _parquet_bytes(ids, stored, self.metadata)
        place = self.output.child(shard_name(shard.index))
        record = ShardRecord(shard.index, len(ids), len(data), hashlib.sha256(data).hexdigest())
        with failures_as(OutputError, place, "write"):
            storage.write_atomic(place, lambda stream: stream.write(data))
            storage.write_atomic(self.output.child(f"{LEDGER}/{shard_name(shard.index)}.json"),
                                 lambda stream: stream.write(json.dumps(asdict(record)).encode()))
        return record


def _parquet_bytes(ids: list[str], vectors: np.ndarray, metadata: dict) -> bytes:
    pa = require("pyarrow", "embed")
    parquet = require("pyarrow.parquet", "embed")
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.from_numpy_dtype(vectors.dtype)),
                                               vectors.shape[1])
    table = pa.table({"id": pa.array(ids, type=pa.string()), "vector": column})
    buffer = io.BytesIO()
    parquet.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()}), buffer)
    return buffer.getvalue()


class Engine(Protocol):
    """Where shards run. ``scan`` reads the input files through (pipelines.corpus.scan_file) and yields each file's
    scan as it completes, in any order; ``run`` embeds and writes each pending shard with ``writer`` and yields its
    record as soon as it is written."""

    def scan(self, files: Sequence[Place], fields: Fields, chunk_rows: int) -> Iterator[FileScan]: ...

    def run(self, shards: Sequence[Shard], writer: ShardWriter) -> Iterator[ShardRecord]: ...


@dataclass
class LocalEngine:
    """This process: one warm encoder with all cores, shard after shard."""

    encoder: ArtifactEncoder

    def scan(self, files: Sequence[Place], fields: Fields, chunk_rows: int) -> Iterator[FileScan]:
        for file in files:
            yield scan_file(file, fields, chunk_rows)

    def run(self, shards: Sequence[Shard], writer: ShardWriter) -> Iterator[ShardRecord]:
        for shard in shards:
            yield writer.embed(shard, self.encoder)


def plan_input(source: Place, fields: Fields, chunk_rows: int, engine: Engine,
               progress: Callable[[int, int], None] | None = None) -> CorpusPlan:
    """The input's shards, its files scanned by the engine (on Ray, by its workers); ``progress`` gets (files done,
    files) as each scan completes."""
    files = input_files(source)
    scans: dict[Place, FileScan] = {}
    if progress:
        progress(0, len(files))
    for scan in engine.scan(files, fields, chunk_rows):
        scans[scan.file] = scan
        if progress:
            progress(len(scans), len(files))
    return plan_corpus(source, fields, chunk_rows, [scans[file] for file in files])


def start_job(output: Place, job: EmbedJob) -> set[int]:
    """Create or resume the job at ``output``; returns the shards already done (recorded, their files intact)."""
    with failures_as(OutputError, output, "write to"):
        if storage.size(output) is not None:
            raise OutputError(f"output path {str(output)!r} is a file; pass a folder to --output")
        job_file = output.child(JOB)
        if storage.size(job_file) is not None:
            recorded = _read_record(job_file, "embed job")
            if recorded != asdict(job):
                changed = sorted(k for k in asdict(job) if recorded.get(k) != asdict(job)[k])
                raise OutputError(f"{output} holds another embed job (its {', '.join(changed) or 'format'} differ); "
                                  "pass a new --output, or the same artifact, input and options to resume")
        else:
            storage.make_folder(output.child(LEDGER))
            storage.write_atomic(job_file, lambda stream: stream.write(json.dumps(asdict(job), indent=2).encode()))
        if not output.remote:
            for stray, _ in storage.list_files(output, (".tmp",)):
                storage.delete(stray)
        done = set()
        for place, _ in storage.list_files(output.child(LEDGER), (".json",)):
            record = _ledger_record(place, job.shards)
            if record and storage.size(output.child(shard_name(record.index))) == record.bytes:
                done.add(record.index)
    return done


def _read_record(place: Place, what: str) -> dict:
    if (storage.size(place) or 0) > MAX_RECORD_BYTES:
        raise OutputError(f"{place} is too large to be an {what} record; pass a new --output")
    try:
        value = json.loads(storage.read_bytes(place))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise OutputError(f"{place} is not an {what} record (damaged); pass a new --output") from None
    if not isinstance(value, dict):
        raise OutputError(f"{place} is not an {what} record (damaged); pass a new --output")
    return value


def _ledger_record(place: Place, shards: int) -> ShardRecord | None:
    """A ledger file's record, or None if it is damaged or names no shard of this job (that shard runs again)."""
    try:
        record = ShardRecord(**_read_record(place, "embed ledger"))
    except (OutputError, TypeError):
        return None
    fields_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (record.index, record.rows, record.bytes))
    return record if fields_ok and 0 <= record.index < shards and place.name == f"{shard_name(record.index)}.json" \
        else None


def read_vectors(output) -> tuple[list[str], np.ndarray, dict]:
    """Every shard of a finished job, in order: ids, the stored vectors (float32 (rows, dims), int8 (rows, dims) or
    packed binary uint8 (rows, dims / 8)), and the files' metadata."""
    parquet = require("pyarrow.parquet", "embed")
    place = output if isinstance(output, Place) else Place.of(output)
    job = EmbedJob(**_read_record(place.child(JOB), "embed job"))
    ids, parts, metadata = [], [], {}
    for index in range(job.shards):
        table = parquet.read_table(io.BytesIO(storage.read_bytes(place.child(shard_name(index)))))
        metadata = json.loads(table.schema.metadata[METADATA_KEY])
        ids += table.column("id").to_pylist()
        vectors = table.column("vector").combine_chunks()
        parts.append(np.asarray(vectors.flatten()).reshape(-1, vectors.type.list_size))
    return ids, np.concatenate(parts), metadata


@dataclass
class EmbedResult:
    rows: int
    embedded: int  # rows this run computed (the rest were done before)
    seconds: float
    output: str

    @property
    def sentences_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def embed_corpus(plan: CorpusPlan, output: Place, engine: Engine, manifest: Manifest, chunk_rows: int = 4096,
                 batch_size: int = 64, precision: str = "float32",
                 progress: Callable[[int], None] | None = None) -> EmbedResult:
    """Embed every shard the ledger does not hold yet; ``progress`` gets the rows done after each shard."""
    job = EmbedJob(artifact_checksum(manifest), plan.fingerprint, plan.rows, len(plan.shards), manifest.embedding_dim,
                   chunk_rows, batch_size, precision)
    codec = vector_codec(manifest, precision)
    with failures_as(OutputError, output, "write to"):
        fresh_folder, fresh_job = storage.kind(output) == "missing", storage.size(output.child(JOB)) is None
    done = start_job(output, job)
    metadata = {"artifact_checksum": job.artifact_checksum, "dims": job.dims, "dtype": precision,
                "model": manifest.model.name, "target": manifest.target, "artifact": manifest.artifact,
                "normalized": manifest.normalized, "input_fingerprint": plan.fingerprint}
    writer = ShardWriter(output, plan.fields, batch_size, precision, codec, metadata)
    started, embedded = time.perf_counter(), 0
    if progress:
        progress(sum(shard.rows for shard in plan.shards if shard.index in done))
    try:
        for record in engine.run([shard for shard in plan.shards if shard.index not in done], writer):
            embedded += record.rows
            if progress:
                progress(record.rows)
    except BaseException:
        if fresh_job and not embedded:  # a run that stops before its first shard leaves nothing of its own behind
            storage.delete_folder(output.child(LEDGER))
            storage.delete(output.child(JOB))
            if fresh_folder:
                storage.delete_folder(output)
        raise
    return EmbedResult(plan.rows, embedded, time.perf_counter() - started, str(output))
