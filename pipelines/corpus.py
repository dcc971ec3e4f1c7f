"""A corpus to embed: texts with ids, from txt (one per line), jsonl or parquet files, or a folder of them.

Every input is checked while it is read: a file that is not UTF-8, a jsonl line that is not an object or
lacks the text field, a text that is not a string, an empty input: one CorpusError line naming the file and
the line. Ids come from ``--id-field`` when given, else the row's position in the whole input ("0", "1" ...),
so the same input gives the same ids on every run and every engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import CorpusError, require
from core.safe_io import MAX_TEXT_BYTES, read_capped

SUFFIXES = (".txt", ".jsonl", ".parquet")


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
        if file.suffix == ".txt":
            rows = [(None, line) for line in _lines(file, raw)]
        elif file.suffix == ".jsonl":
            rows = list(_jsonl_rows(file, raw, text_field, id_field))
        else:
            rows = _parquet_rows(file, text_field, id_field)
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


def _lines(file: Path, raw: bytes) -> list[str]:
    # Each line is one text, an empty one too (it embeds as the source model does); no trailing phantom line.
    text = _decode(file, raw)
    return text.removesuffix("\n").split("\n") if text else []


def _jsonl_rows(file: Path, raw: bytes, text_field: str, id_field: str | None):
    for number, line in enumerate(_decode(file, raw).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise CorpusError(f"{file} line {number} is not JSON; a .jsonl file holds one object per line") from None
        yield _row(file, f"line {number}", row, text_field, id_field)


def _parquet_rows(file: Path, text_field: str, id_field: str | None) -> list[tuple[str | None, str]]:
    parquet = require("pyarrow.parquet", "embed")
    try:
        table = parquet.read_table(file)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ... for a damaged file
        raise CorpusError(f"{file} is not a readable parquet file ({type(exc).__name__})") from None
    return [_row(file, f"row {i}", row, text_field, id_field) for i, row in enumerate(table.to_pylist())]


def _row(file: Path, where: str, row: object, text_field: str, id_field: str | None) -> tuple[str | None, str]:
    if not isinstance(row, dict):
        raise CorpusError(f"{file} {where} is not an object")
    if not isinstance(row.get(text_field), str):
        problem = "has no" if text_field not in row else "has a non-string"
        raise CorpusError(f"{file} {where} {problem} text field {text_field!r}; choose it with --text-field")
    if id_field is None:
        return None, row[text_field]
    value = row.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(f"{file} {where} has no string or integer id field {id_field!r}; choose it with --id-field")
    return str(value), row[text_field]
