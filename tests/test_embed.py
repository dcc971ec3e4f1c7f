"""`embed`: a corpus embedded with the shipped artifact, from and to a local disk or an object store, killed and
resumed (Ray: tests/test_embed_ray.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as fs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main
from core.metrics import row_cosines
from pipelines.embed import LEDGER, artifact_checksum, read_vectors
from pipelines.runtime import ArtifactEncoder

ROOT = Path(__file__).resolve().parent.parent
CHUNK = "300"


@pytest.fixture(scope="module")
def corpus(dev_sentences, tmp_path_factory) -> tuple[Path, list[str]]:
    texts = [*dev_sentences[:2400], "", "🙂🚀 emoji only", "word " * 5000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path, texts


def _embed(artifact, corpus_path: Path, output: Path, *extra: str):
    return CliRunner().invoke(main, ["embed", str(artifact), "--input", str(corpus_path), "--output", str(output),
                                     "--chunk-rows", CHUNK, *extra])


@pytest.fixture(scope="module")
def local_run(x86_artifact, corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("embedded") / "local"
    result = _embed(x86_artifact.folder, corpus[0], output)
    assert result.exit_code == 0, result.output
    return output, result.output


def test_local_embedding_is_the_artifacts_own_row_for_row(local_run, x86_artifact, corpus):
    output, printed = local_run
    ids, vectors, metadata = read_vectors(output)
    texts = corpus[1]
    assert ids == [str(i) for i in range(len(texts))] and vectors.shape == (len(texts), 384)
    encoder = ArtifactEncoder(Path(x86_artifact.folder))
    expected = np.zeros_like(vectors)
    for start in range(0, len(texts), int(CHUNK)):  # one planner: a chunk is what encode() makes of it
        expected[start : start + int(CHUNK)] = encoder.encode(texts[start : start + int(CHUNK)], batch_size=64)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # the encoder's own vectors, row for row
    # Dynamic int8 picks activation scales per batch: other batches (the whole corpus at 32) move a vector a little.
    assert row_cosines(vectors, encoder.encode(texts)).min() >= 0.99
    assert metadata["dims"] == 384 and metadata["artifact_checksum"] == artifact_checksum(encoder.artifact.manifest)
    assert f"{len(texts)} vectors" in printed and "sent/s" in printed


def test_a_killed_run_resumes_with_no_row_missing_or_twice(local_run, x86_artifact, corpus, tmp_path):
    output = tmp_path / "resumed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "embed", str(x86_artifact.folder), "--input", str(corpus[0]),
           "--output", str(output), "--chunk-rows", CHUNK]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((output / LEDGER).glob("*.json")):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done_before = {path.name: path.stat().st_mtime_ns for path in (output / LEDGER).glob("*.json")}
    assert 1 <= len(done_before) < 9, "the run was not killed mid-job"
    done_rows = sum(json.loads((output / LEDGER / name).read_text())["rows"] for name in done_before)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"({len(corpus[1]) - done_rows} embedded by this run" in result.stdout, result.stdout
    # The finished shards were not recomputed: their ledger records (and files) are the first run's.
    assert all((output / LEDGER / name).stat().st_mtime_ns == mtime for name, mtime in done_before.items())
    ids, vectors, _ = read_vectors(output)
    expected_ids, expected, _ = read_vectors(local_run[0])
    assert ids == expected_ids
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # the same batches give the same vectors


def test_jsonl_and_parquet_with_ids(x86_artifact, tmp_path):
    rows = [{"doc": f"d{i}", "body": f"sentence number {i}"} for i in range(50)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    outputs = []
    for name in ("in.jsonl", "in.parquet"):
        result = _embed(x86_artifact.folder, tmp_path / name, tmp_path / name.replace(".", "-"), "--text-field",
                        "body", "--id-field", "doc")
        assert result.exit_code == 0, result.output
        outputs.append(read_vectors(tmp_path / name.replace(".", "-")))
    assert outputs[0][0] == [r["doc"] for r in rows] == outputs[1][0]
    np.testing.assert_allclose(outputs[0][1], outputs[1][1], atol=1e-6)


@pytest.mark.parametrize("case, needle", [
    ("empty", "is empty"),
    ("missing field", "has no text field 'body'"),
    ("not utf-8", "not UTF-8"),
    ("tampered artifact", "the file was altered or truncated"),
    ("other job", "holds another embed job"),
    ("a shard of another schema", "has no text field 'body'"),
    ("unreachable Ray", "cannot reach the Ray cluster at --ray-address 127.0.0.1:9"),
    ("unwritable output URI", "cannot write to s3://no-such-bucket/vectors"),
])
def test_bad_input_is_one_line_and_writes_nothing(x86_artifact, local_run, tmp_path, object_store, case, needle):
    import shutil

    artifact, corpus_file, output = Path(x86_artifact.folder), tmp_path / "in.jsonl", tmp_path / "out"
    corpus_file.write_text('{"body": "a"}\n{"text": "b"}\n')
    extra = ["--text-field", "body"]
    if case == "a shard of another schema":  # a folder of parquet shards, one written with other columns
        corpus_file = tmp_path / "shards"
        corpus_file.mkdir()
        pq.write_table(pa.table({"body": ["a", "b"]}), corpus_file / "part-0.parquet")
        pq.write_table(pa.table({"text": ["c"]}), corpus_file / "part-1.parquet")
    elif case == "unreachable Ray":
        corpus_file.write_text('{"body": "a"}\n')
        extra += ["--engine", "ray", "--ray-address", "127.0.0.1:9"]  # the discard port: nothing listens
    elif case == "unwritable output URI":
        corpus_file.write_text('{"body": "a"}\n')
        output = object_store[0]("vectors").replace("s3://bucket/", "s3://no-such-bucket/")
        result = _embed(artifact, corpus_file, output, *extra)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
        assert object_store[1].get_file_info("no-such-bucket").type == fs.FileType.NotFound  # nothing made
        return
    if case == "empty":
        corpus_file = tmp_path / "empty.txt"
        corpus_file.write_text("")
    elif case == "not utf-8":
        corpus_file = tmp_path / "latin.txt"
        corpus_file.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    elif case == "tampered artifact":
        artifact = tmp_path / "x86"
        shutil.copytree(x86_artifact.folder, artifact)
        (artifact / "tokenizer.json").write_text("{}")
    elif case == "other job":
        corpus_file.write_text('{"body": "a"}\n')
        output = local_run[0]
    before = sorted(output.rglob("*")) if output.exists() else None
    result = _embed(artifact, corpus_file, output, *extra)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    assert (sorted(output.rglob("*")) if output.exists() else None) == before


@pytest.fixture(scope="module")
def stored_corpus(corpus, object_store) -> str:
    """The corpus file uploaded to the S3-compatible server: the input folder's URI."""
    uri, store = object_store
    with store.open_output_stream("bucket/in/corpus.txt") as stream:
        stream.write(corpus[0].read_bytes())
    return uri("in")


def _stored_files(store, prefix: str) -> list[str]:
    return sorted(info.path.removeprefix(f"bucket/{prefix}/")
                  for info in store.get_file_info(fs.FileSelector(f"bucket/{prefix}", recursive=True))
                  if info.type == fs.FileType.File)


def test_object_store_in_and_out(local_run, x86_artifact, stored_corpus, object_store):
    """Input read from an S3-compatible server, shards and ledger written there: the local disk's vectors."""
    uri, store = object_store
    result = _embed(x86_artifact.folder, stored_corpus, uri("local-out"))
    assert result.exit_code == 0, result.output
    ids, vectors, _ = read_vectors(uri("local-out"))
    expected_ids, expected, _ = read_vectors(local_run[0])
    assert ids == expected_ids
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    shards = [f"part-{index:05d}.parquet" for index in range(9)]
    assert _stored_files(store, "local-out") == sorted(["job.json", *shards, *(f"ledger/{s}.json" for s in shards)])
