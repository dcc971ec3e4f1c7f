"""A corpus to embed, planned without holding it: txt (one text per line), jsonl or parquet files, a folder of them or
many shards, on a local disk or an object store (core.storage).

``scan_file`` reads one input file once, from start to end, a block at a time: it checks every row (a byte that is not
UTF-8, a jsonl line that is not an object or lacks the text field, a text that is not a string or not encodable, a
text over MAX_TEXT_CHARS, a parquet file that decodes to far more than its size) and notes where every
``chunk_rows``-th row begins. Those places cut the corpus into shards, the unit that is embedded, written and
resumed (one output file each); ``read_shard`` reads one shard's rows from its place, wherever it runs. So a job is
refused in one CorpusError line, naming the file and the line, before anything is written, and no process ever holds
more than a shard of texts: the plan holds one record per shard.

Ids come from ``--id-field`` when given (unique within a shard; checking every id against every other would hold
them all in one place), else the row's position in the whole input ("0", "1" ...), so the same input gives the same
ids on every run and every engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.errors import CorpusError, require
from core.safe_io import MAX_TEXT_BYTES, MAX_TEXT_CHARS, MAX_UNPACK_RATIO, unpack_limit
from core.storage import Place, failures_as, kind, list_files, open_input, size

SUFFIXES = (".txt", ".jsonl", ".parquet")
# Output files (shards) of one job: the plan holds a small record for each.
MAX_SHARDS = 500_000
READ_BLOCK = 8 << 20
# Parquet rows decoded at a time: a small file may hold millions of rows or repeat a long text, so memory is bounded
# by a batch, not by what the file decodes to.
PARQUET_BATCH_ROWS = 4096
# The most bytes a text of MAX_TEXT_CHARS characters takes in UTF-8: a longer line is refused before it is decoded.
MAX_LINE_BYTES = 4 * MAX_TEXT_CHARS


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str | None = None  # None: ids are row positions


@dataclass(frozen=True)
class FileScan:
    file: Place
    rows: int
    starts: tuple[int, ...]  # where rows 0, chunk_rows, 2 * chunk_rows ... begin: a byte offset, or a parquet row
    sha256: str


@dataclass(frozen=True)
class Shard:
    """Rows ``first_row`` .. ``first_row + rows`` of the corpus: one output file."""

    index: int
    file: Place
    start: int  # where its first row begins in ``file`` (FileScan.starts)
    first_row: int  # that row's position in the whole input: its id without --id-field
    rows: int


@dataclass(frozen=True)
class CorpusPlan:
    source: Place
    fields: Fields
    shards: tuple[Shard, ...]
    rows: int
    fingerprint: str  # sha256 over the input files' names and bytes: a resumed job must read the same input


def input_files(source: Place) -> list[Place]:
    """The files of an input: the file itself, or a folder's txt/jsonl/parquet files in name order."""
    with failures_as(CorpusError, source, "read the input"):
        found = kind(source)
        if found == "missing":
            raise CorpusError(f"input {str(source)!r} does not exist; pass a .txt, .jsonl or .parquet file or a folder")
        if found == "file":
            if not source.name.endswith(SUFFIXES):
                raise CorpusError(f"input {source} is not a {', '.join(SUFFIXES)} file")
            return [source]
        files = [place for place, _ in list_files(source, SUFFIXES)]
    if not files:
        raise CorpusError(f"{source} holds no {', '.join(SUFFIXES)} files to embed")
    return files


def scan_file(file: Place, fields: Fields, chunk_rows: int) -> FileScan:
    """One input file read through: every row checked, the start of every ``chunk_rows``-th row noted."""
    limit = MAX_SHARDS * chunk_rows
    starts, rows = [], 0
    with failures_as(CorpusError, file, "read"):
        if file.name.endswith(".parquet") and _parquet_footer_rows(file) > limit:  # refused before a row is decoded
            _too_many_rows(file, limit, chunk_rows)
        digest = hashlib.sha256()
        parquet = file.name.endswith(".parquet")
        rows_read = _parquet_rows(file, fields, 0) if parquet else _line_rows(file, fields, 0, digest)
        for start, _, _ in rows_read:
            if rows % chunk_rows == 0:
                starts.append(start)
            rows += 1
            if rows > limit:
                _too_many_rows(file, limit, chunk_rows)
        if parquet:  # read by column chunks, not front to back: hashed apart (a line file is hashed as it is read)
            with open_input(file) as handle:
                while block := handle.read(READ_BLOCK):
                    digest.update(block)
    return FileScan(file, rows, tuple(starts), digest.hexdigest())


def plan_corpus(source: Place, fields: Fields, chunk_rows: int, scans: Sequence[FileScan]) -> CorpusPlan:
    """The shards of the whole input from its files' scans (in input order)."""
    shards, rows, digest = [], 0, hashlib.sha256()
    for scan in scans:
        name = scan.file.name if scan.file == source else scan.file.relative_to(source)
        digest.update(f"{name}\0{scan.sha256}\0".encode())
        for number, start in enumerate(scan.starts):
            count = min(chunk_rows, scan.rows - number * chunk_rows)
            shards.append(Shard(len(shards), scan.file, start, rows + number * chunk_rows, count))
        rows += scan.rows
        if len(shards) > MAX_SHARDS:
            raise CorpusError(f"input {source} needs more than {MAX_SHARDS:,} output files of --chunk-rows "
                              f"{chunk_rows}; raise --chunk-rows or embed the corpus in parts")
    if not rows:
        raise CorpusError(f"input {source} is empty: nothing to embed")
    digest.update(f"{fields.text}\0{fields.id}".encode())
    return CorpusPlan(source, fields, tuple(shards), rows, digest.hexdigest())


def read_shard(shard: Shard, fields: Fields) -> tuple[list[str], list[str]]:
    """A shard's ids and texts, read from its place."""
    ids, texts = [], []
    with failures_as(CorpusError, shard.file, "read"):
        rows = _rows(shard.file, fields, shard.start)
        for position, (_, row_id, text) in zip(range(shard.rows), rows, strict=False):
            ids.append(str(shard.first_row + position) if row_id is None else row_id)
            texts.append(text)
    if len(texts) != shard.rows:
        raise CorpusError(f"{shard.file} ended after {len(texts)} of its shard's {shard.rows} rows: the input changed "
                          "since the job was planned; embed it to a new --output")
    if fields.id and len(set(ids)) != len(ids):
        raise CorpusError(f"{shard.file}: {fields.id!r} repeats a value in rows {shard.first_row:,} to "
                          f"{shard.first_row + shard.rows - 1:,}; ids must be unique")
    return ids, texts


# --- rows of each format: (where the row begins, its id or None, its text), checked ---------------------------------

def _rows(file: Place, fields: Fields, start: int) -> Iterator[tuple[int, str | None, str]]:
    return (_parquet_rows if file.name.endswith(".parquet") else _line_rows)(file, fields, start)


def _line_rows(file: Place, fields: Fields, start: int, digest=None) -> Iterator[tuple[int, str | None, str]]:
    jsonl = file.name.endswith(".jsonl")
    for number, (offset, raw) in enumerate(_lines(file, start, digest), start=1):
        where = f"line {number}" if start == 0 else f"the line at byte {offset:,}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"{file} is not UTF-8 (bad byte at {where}); re-save it as UTF-8") from None
        if not jsonl:  # each line is one text, an empty one too (it embeds as the source model does)
            _check_length(file, where, line)
            yield offset, None, line
        elif line.strip():
            yield (offset, *_jsonl_row(file, where, line, fields))


def _lines(file: Place, start: int, digest=None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) from ``start`` on, lines split at "\n" only (JSON Lines' rule: U+2028 and the other breaks
    str.splitlines knows may sit inside a JSON string); no trailing phantom line. A line longer than any allowed
    text is refused before it is held whole. ``digest`` (a hashlib object) gets every block read."""
    with open_input(file) as handle:
        handle.seek(start)
        pending, offset, count = b"", start, 0
        while block := handle.read(READ_BLOCK):
            if digest is not None:
                digest.update(block)
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield offset, line
                offset += len(line) + 1
            count += len(lines)
            if len(pending) > MAX_LINE_BYTES:
                where = f"line {count + 1}" if start == 0 else f"the line at byte {offset:,}"
                _too_long(file, where, f"over {MAX_LINE_BYTES:,} bytes")
        if pending:
            yield offset, pending


def _jsonl_row(file: Place, where: str, line: str, fields: Fields) -> tuple[str | None, str]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise CorpusError(f"{file} {where} is not JSON; a .jsonl file holds one object per line") from None
    except ValueError:  # Python reads no integer of over 4,300 digits
        raise CorpusError(f"{file} {where} holds a number of over 4,300 digits; no text field needs one") from None
    text_id, text = _row(file, where, row, fields)
    for value in (text, text_id or ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a \ud800 escape: JSON allows it, UTF-8 and the tokenizer do not
            raise CorpusError(f"{file} {where} has an unpaired surrogate {value[exc.start]!r} in its text or id; fix "
                              "the \\u escape or remove it") from None
    return text_id, text


def _parquet_rows(file: Place, fields: Fields, start: int) -> Iterator[tuple[int, str | None, str]]:
    """A parquet file's rows from row ``start``, a batch at a time. Repeated values stay one dictionary entry in Arrow
    until they are measured: the file is an archive of its texts and ids, refused past ``unpack_limit`` of its size
    (core.safe_io)."""
    compute = require("pyarrow.compute", "embed")
    types = require("pyarrow.types", "embed")
    limit, decoded = unpack_limit(size(file) or 0, MAX_TEXT_BYTES), 0
    with open_input(file) as handle:
        batches, row = _parquet_batches(file, handle, fields, start)
        while (batch := _parquet_step(file, batches)) is not None:
            for values in batch.columns:
                if types.is_dictionary(values.type):
                    lengths = compute.binary_length(values.dictionary).take(values.indices)
                    decoded += compute.sum(lengths).as_py() or 0
            if decoded > limit:
                raise CorpusError(f"{file} decodes to more than {limit / 1e6:.0f} MB of text ({MAX_UNPACK_RATIO} times "
                                  "its size, or the cap): refused as a decompression bomb; split it")
            skip = max(start - row, 0)
            for number, values in enumerate(batch.slice(skip).to_pylist(), start=row + skip):
                yield (number, *_row(file, f"row {number}", values, fields))
            row += batch.num_rows


def _parquet_batches(file: Place, handle, fields: Fields, start: int) -> tuple[Iterator, int]:
    """Record batches of the text and id columns (dictionary-encoded) from the row group that holds row ``start``;
    the row number that group begins at."""
    parquet = require("pyarrow.parquet", "embed")
    with _damaged_parquet(file):
        names = parquet.ParquetFile(handle).schema_arrow.names
        columns = [name for name in (fields.text, fields.id) if name and name in names]
        reader = parquet.ParquetFile(handle, read_dictionary=columns)
        groups, row = [], 0
        for group in range(reader.metadata.num_row_groups):
            count = reader.metadata.row_group(group).num_rows
            if row + count > start:
                groups.append(group)
            else:
                row += count
        return reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=columns), row


def _parquet_step(file: Place, batches: Iterator):
    with _damaged_parquet(file):
        return next(batches, None)


def _parquet_footer_rows(file: Place) -> int:
    parquet = require("pyarrow.parquet", "embed")
    with open_input(file) as handle, _damaged_parquet(file):
        return parquet.ParquetFile(handle).metadata.num_rows


@contextlib.contextmanager
def _damaged_parquet(file: Place) -> Iterator[None]:
    try:
        yield
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ... for a damaged file
        raise CorpusError(f"{file} is not a readable parquet file ({type(exc).__name__})") from None


def _row(file: Place, where: str, row: object, fields: Fields) -> tuple[str | None, str]:
    if not isinstance(row, dict):
        raise CorpusError(f"{file} {where} is not an object")
    if not isinstance(row.get(fields.text), str):
        problem = "has no" if fields.text not in row else "has a non-string"
        raise CorpusError(f"{file} {where} {problem} text field {fields.text!r}; choose it with --text-field")
    _check_length(file, where, row[fields.text])
    if fields.id is None:
        return None, row[fields.text]
    value = row.get(fields.id)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(f"{file} {where} has no string or integer id field {fields.id!r}; choose it with --id-field")
    return str(value), row[fields.text]


def _check_length(file: Place, where: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        _too_long(file, where, f"of {len(text):,} characters")


def _too_many_rows(file: Place, limit: int, chunk_rows: int) -> None:
    raise CorpusError(f"{file} has more than {limit:,} rows: over {MAX_SHARDS:,} output files of --chunk-rows "
                      f"{chunk_rows}; raise --chunk-rows or embed the corpus in parts")


def _too_long(file: Place, where: str, length: str) -> None:
    raise CorpusError(f"{file} {where} is a text {length}, more than the {MAX_TEXT_CHARS:,} one text may have (a model "
                      "reads only its first few thousand tokens); shorten or split it")
