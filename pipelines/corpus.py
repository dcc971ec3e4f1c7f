"""A corpus to embed: texts with ids, from txt (one per line), jsonl or parquet files, or a folder of them.

Every input is checked while it is read: a file that is not UTF-8, a jsonl line that is not an object or
lacks the text field, a text that is not a string or not encodable (a lone surrogate escaped in JSON), an empty
input, more than MAX_CORPUS_ROWS rows or a text over MAX_TEXT_CHARS (core.safe_io): one CorpusError line naming
the file and the line. Rows are counted before they are built (a parquet file's from its footer), and parquet is
decoded a batch at a time, so a small file that decodes to millions of rows is refused at once. Ids come from
``--id-field`` when given, else the row's position in the whole input ("0", "1" ...), so the same input gives the
same ids on every run and every engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import CorpusError, require
from core.safe_io import MAX_CORPUS_ROWS, MAX_TEXT_BYTES, MAX_TEXT_CHARS, MAX_UNPACK_RATIO, read_capped, unpack_limit

SUFFIXES = (".txt", ".jsonl", ".parquet")
# Parquet rows decoded at a time: a small file may hold millions of rows or repeat a long text, so memory is bounded
# by a batch, not by what the file decodes to.
PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Corpus:
    ids: list[str]
    texts: list[str]
    fingerprint: str  # sha256 over the input files' names and bytes: a resumed job must read the same input

    def __len__(self) -> int:
        return len(self.texts)


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file() and not p.is_symlink())
        if not files:
            raise CorpusError(f"{path} holds no {', '.join(SUFFIXES)} files to embed")
        return files
    if not path.exists():
        raise CorpusError(f"input {str(path)!r} does not exist; pass a .txt, .jsonl or .parquet file or a folder")
    if path.suffix not in SUFFIXES:
        raise CorpusError(f"input {path} is not a {', '.join(SUFFIXES)} file")
    return [path]


def read_corpus_input(path: Path, text_field: str = "text", id_field: str | None = None) -> Corpus:
    ids: list[str] = []
    texts: list[str] = []
    digest = hashlib.sha256()
    for file in input_files(Path(path)):
        raw = read_capped(file, MAX_TEXT_BYTES, CorpusError, "corpus")
        digest.update(file.name.encode() + b"\0" + raw)
        room = MAX_CORPUS_ROWS - len(texts)
        if file.suffix == ".txt":
            rows = [(None, line) for line in _lines(file, raw, room)]
        elif file.suffix == ".jsonl":
            rows = list(_jsonl_rows(file, raw, text_field, id_field, room))
        else:
            rows = _parquet_rows(file, text_field, id_field, room)
        for row_id, text in rows:
            ids.append(str(len(ids)) if row_id is None else row_id)
            texts.append(text)
    if not texts:
        raise CorpusError(f"input {path} is empty: nothing to embed")
    if id_field and len(set(ids)) != len(ids):
        raise CorpusError(f"input {path}: {id_field!r} repeats a value; ids must be unique")
    return Corpus(ids, texts, digest.hexdigest())


def _decode(file: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorpusError(f"{file} is not UTF-8 (bad byte at line {line}); re-save it as UTF-8") from None


def _check_rows(file: Path, rows: int, room: int) -> None:
    if rows > room:
        raise CorpusError(f"{file} brings the input to more than {MAX_CORPUS_ROWS:,} rows, the most one input may "
                          "have; split the corpus and embed each part to its own --output")


def _check_length(file: Path, where: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise CorpusError(f"{file} {where} is a text of {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} one "
                          "text may have (a model reads only its first few thousand tokens); shorten or split it")


def _lines(file: Path, raw: bytes, room: int) -> list[str]:
    # Each line is one text, an empty one too (it embeds as the source model does); no trailing phantom line.
    _check_rows(file, raw.count(b"\n") + (bool(raw) and not raw.endswith(b"\n")), room)  # before a line is built
    text = _decode(file, raw)
    lines = text.removesuffix("\n").split("\n") if text else []
    if lines and max(map(len, lines)) > MAX_TEXT_CHARS:
        number = next(i for i, line in enumerate(lines, start=1) if len(line) > MAX_TEXT_CHARS)
        _check_length(file, f"line {number}", lines[number - 1])
    return lines


def _jsonl_rows(file: Path, raw: bytes, text_field: str, id_field: str | None, room: int):
    # JSON Lines are separated by "\n" only: U+2028 and the other breaks str.splitlines knows may sit inside a JSON
    # string.
    _check_rows(file, raw.count(b"\n") + 1, room)  # blank lines too: a bound, counted before any line is built
    for number, line in enumerate(_decode(file, raw).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise CorpusError(f"{file} line {number} is not JSON; a .jsonl file holds one object per line") from None
        except ValueError:  # Python reads no integer of over 4,300 digits
            raise CorpusError(f"{file} line {number} holds a number of over 4,300 digits; no text field needs "
                              "one") from None
        text_id, text = _row(file, f"line {number}", row, text_field, id_field)
        for value in (text, text_id or ""):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a \ud800 escape: JSON allows it, UTF-8 and the tokenizer do not
                raise CorpusError(f"{file} line {number} has an unpaired surrogate {value[exc.start]!r} in its text or "
                                  "id; fix the \\u escape or remove it") from None
        yield text_id, text


def _parquet_rows(file: Path, text_field: str, id_field: str | None, room: int) -> list[tuple[str | None, str]]:
    """A parquet file's rows, a batch at a time. Repeated values stay one dictionary entry in Arrow until they are
    measured: the file is an archive of its texts and ids, refused past ``unpack_limit`` of its size (core.safe_io)."""
    compute = require("pyarrow.compute", "embed")
    parquet = require("pyarrow.parquet", "embed")
    types = require("pyarrow.types", "embed")
    limit, decoded = unpack_limit(file.stat().st_size, MAX_TEXT_BYTES), 0
    rows: list[tuple[str | None, str]] = []
    try:
        names = parquet.read_schema(file).names
        columns = [name for name in (text_field, id_field) if name and name in names]
        reader = parquet.ParquetFile(file, read_dictionary=columns)
        _check_rows(file, reader.metadata.num_rows, room)  # from the footer, before a row is decoded
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            _check_rows(file, len(rows) + batch.num_rows, room)  # the footer may understate them
            for values in batch.columns:
                if types.is_dictionary(values.type):
                    lengths = compute.binary_length(values.dictionary).take(values.indices)
                    decoded += compute.sum(lengths).as_py() or 0
            if decoded > limit:
                raise CorpusError(f"{file} decodes to more than {limit / 1e6:.0f} MB of text ({MAX_UNPACK_RATIO} times "
                                  "its size, or the cap): refused as a decompression bomb; split it")
            rows += [_row(file, f"row {len(rows) + i}", row, text_field, id_field)
                     for i, row in enumerate(batch.to_pylist())]
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ... for a damaged file
        raise CorpusError(f"{file} is not a readable parquet file ({type(exc).__name__})") from None
    return rows


def _row(file: Path, where: str, row: object, text_field: str, id_field: str | None) -> tuple[str | None, str]:
    if not isinstance(row, dict):
        raise CorpusError(f"{file} {where} is not an object")
    if not isinstance(row.get(text_field), str):
        problem = "has no" if text_field not in row else "has a non-string"
        raise CorpusError(f"{file} {where} {problem} text field {text_field!r}; choose it with --text-field")
    _check_length(file, where, row[text_field])
    if id_field is None:
        return None, row[text_field]
    value = row.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(f"{file} {where} has no string or integer id field {id_field!r}; choose it with --id-field")
    return str(value), row[text_field]
