"""`embed`: fill an index with the artifact that ships, so stored vectors and query vectors come from one graph.

The corpus is cut into chunks of ``chunk_rows`` rows; each chunk becomes one parquet file (id, vector as a
fixed-size list: float32, or int8 / packed binary with ``precision``) written atomically, then recorded in
``ledger.json``. A rerun of the same job skips the chunks the ledger holds (their bytes re-checked), so a killed
job finishes with no row missing and none twice. ``job.json`` pins what a chunk depends on (artifact, input
bytes, batching, precision); another job into the same folder is refused.

Batches are planned per chunk by one rule (``runtime.plan_batches``: rows sorted by token count, stable, cut into
batches of ``batch_size``) and a chunk runs as one ``ArtifactEncoder.encode`` call wherever it runs. A dynamic int8
artifact picks activation scales per batch, so the same batches on every engine are what makes the local and the
Ray results identical row for row; one call per chunk lets a runner with parallel streams (OpenVINO) use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import ArtifactError, ConfigError, OutputError, require
from core.manifest import Artifact, Manifest, check_files, read_artifact, sha256_file, write_json_atomic
from core.safe_io import read_json
from core.vectors import PRECISIONS, VectorCodec
from pipelines.corpus import Corpus
from pipelines.runtime import ArtifactEncoder

LEDGER = "ledger.json"
JOB = "job.json"
METADATA_KEY = b"embedding_toolchain"


@dataclass(frozen=True)
class EmbedJob:
    artifact_checksum: str  # sha256 over the manifest's file checksums: the graph, tokenizer and test vectors
    input_fingerprint: str
    rows: int
    dims: int
    chunk_rows: int = 4096
    batch_size: int = 64
    precision: str = "float32"  # or int8 / binary, with the artifact's calibrated ranges (core.vectors)

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def chunk_range(self, index: int) -> range:
        return range(index * self.chunk_rows, min((index + 1) * self.chunk_rows, self.rows))


def artifact_checksum(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest.files, sort_keys=True).encode()).hexdigest()


def open_artifact(artifact_dir: Path) -> Artifact:
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


@dataclass(frozen=True)
class Chunk:
    index: int
    texts: list[str]


# An engine embeds chunks and yields each as soon as all its rows are done: (index, (rows, dims) in row order).
# Every engine runs a chunk as ``encoder.encode(chunk.texts, batch_size)``: tokenized where it runs, planned by
# runtime.plan_batches, all its batches in one call (a runner with parallel streams runs them side by side).
Engine = Callable[[Iterable[Chunk]], Iterator[tuple[int, np.ndarray]]]


def local_engine(encoder: ArtifactEncoder, batch_size: int) -> Engine:
    def run(chunks: Iterable[Chunk]) -> Iterator[tuple[int, np.ndarray]]:
        for chunk in chunks:
            yield chunk.index, encoder.encode(chunk.texts, batch_size)

    return run


def start_job(output: Path, job: EmbedJob) -> set[int]:
    """Create or resume the job in ``output``; returns the chunk indices already done (and intact)."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"output path {str(output)!r} is a file; pass a folder to --output")
    output.mkdir(parents=True, exist_ok=True)
    if (output / JOB).exists():
        recorded = read_json(output / JOB, OutputError, "embed job")
        if recorded != asdict(job):
            changed = sorted(k for k in asdict(job) if recorded.get(k) != asdict(job)[k])
            raise OutputError(f"{output} holds another embed job (its {', '.join(changed)} differ); pass a new "
                              "--output, or the same artifact, input and options to resume")
    else:
        write_json_atomic(output / JOB, asdict(job))
    for stray in output.glob(".part-*.tmp"):
        stray.unlink()
    ledger = read_json(output / LEDGER, OutputError, "embed ledger") if (output / LEDGER).exists() else {}
    done = set()
    for key, entry in ledger.items():
        path = output / chunk_name(int(key)) if key.isdigit() else None
        if path is not None and path.is_file() and isinstance(entry, dict) and sha256_file(path) == entry.get("sha256"):
            done.add(int(key))
    return done


def chunk_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_chunk(output: Path, index: int, ids: list[str], vectors: np.ndarray, metadata: dict) -> None:
    """One parquet file, written beside its place and renamed in, then recorded in the ledger."""
    pa = require("pyarrow", "embed")
    parquet = require("pyarrow.parquet", "embed")
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.from_numpy_dtype(vectors.dtype)),
                                               vectors.shape[1])
    table = pa.table({"id": pa.array(ids, type=pa.string()), "vector": column})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    final = output / chunk_name(index)
    tmp = output / f".{final.name}.{os.getpid()}.tmp"
    try:
        parquet.write_table(table, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    ledger_path = output / LEDGER
    ledger = read_json(ledger_path, OutputError, "embed ledger") if ledger_path.exists() else {}
    ledger[str(index)] = {"rows": len(ids), "sha256": sha256_file(final)}
    write_json_atomic(ledger_path, ledger)


def read_vectors(output: Path) -> tuple[list[str], np.ndarray, dict]:
    """Every chunk of a finished job, in order: ids, the stored vectors (float32 (rows, dims), int8 (rows, dims) or
    packed binary uint8 (rows, dims / 8)), and the files' metadata."""
    parquet = require("pyarrow.parquet", "embed")
    job = EmbedJob(**read_json(output / JOB, ArtifactError, "embed job"))
    ids, parts, metadata = [], [], {}
    for index in range(job.chunks):
        table = parquet.read_table(output / chunk_name(index))
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


def embed_corpus(corpus: Corpus, output: Path, engine: Engine, encoder: ArtifactEncoder,
                 chunk_rows: int = 4096, batch_size: int = 64, precision: str = "float32",
                 progress: Callable[[int], None] | None = None) -> EmbedResult:
    """Embed every chunk the ledger does not hold yet; ``progress`` gets the rows done after each chunk."""
    encoder.require_token_input()
    manifest = encoder.artifact.manifest
    job = EmbedJob(artifact_checksum(manifest), corpus.fingerprint, len(corpus), manifest.embedding_dim,
                   chunk_rows, batch_size, precision)
    codec = vector_codec(manifest, precision)
    fresh_folder, fresh_job = not output.exists(), not (output / JOB).exists()
    done = start_job(output, job)
    metadata = {"artifact_checksum": job.artifact_checksum, "dims": job.dims, "dtype": precision,
                "model": manifest.model.name, "target": manifest.target, "artifact": manifest.artifact,
                "normalized": manifest.normalized, "input_fingerprint": corpus.fingerprint}
    started, embedded = time.perf_counter(), 0
    if progress:
        progress(sum(len(job.chunk_range(i)) for i in done))

    def pending() -> Iterator[Chunk]:
        for index in (i for i in range(job.chunks) if i not in done):
            rows = job.chunk_range(index)
            yield Chunk(index, corpus.texts[rows.start : rows.stop])

    try:
        for index, vectors in engine(pending()):
            rows = job.chunk_range(index)
            stored = vectors if codec is None else codec.encode(vectors, precision)
            write_chunk(output, index, corpus.ids[rows.start : rows.stop], stored, metadata)
            embedded += len(rows)
            if progress:
                progress(len(rows))
    except BaseException:
        if fresh_job and not embedded:  # a run that stops before its first chunk leaves nothing of its own behind
            (output / JOB).unlink(missing_ok=True)
            if fresh_folder:
                with contextlib.suppress(OSError):  # not empty: a partial chunk file stays for the next run to clear
                    output.rmdir()
        raise
    return EmbedResult(len(corpus), embedded, time.perf_counter() - started, str(output))
