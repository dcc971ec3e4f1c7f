"""Sentence data: the STS-B splits shipped in data/stsb/ and user corpus files."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import CorpusError
from core.safe_io import MAX_TEXT_BYTES, read_capped

STSB_DIR = Path(__file__).resolve().parent.parent / "data" / "stsb"
# Short, symbolic and mixed-script texts: where one activation scale per tensor hurts quantized models most.
# Calibration only; the tests fuzz with texts of their own.
EDGE_TEXTS = ("", " ", "a", "I", "?", "...", "©", "€", "ß", "é", "ŉ", "ﬁ", "Ω", "→", "™", "½", "🙂", "👍🏽",
              "東", "京都", "ä", "ok", "No.", "42", "#1", "x y z", "Москва", "القاهرة", "मुंबई", "Ἀθῆναι")


@dataclass(frozen=True)
class StsPairs:
    sentences1: tuple[str, ...]
    sentences2: tuple[str, ...]
    scores: np.ndarray

    def unique_sentences(self) -> list[str]:
        return list(dict.fromkeys(self.sentences1 + self.sentences2))


@lru_cache(maxsize=2)
def load_stsb(split: str) -> StsPairs:
    """split: 'train' or 'dev'."""
    path = STSB_DIR / f"sts-{split}.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return StsPairs(
        tuple(r["sentence1"] for r in rows),
        tuple(r["sentence2"] for r in rows),
        np.array([float(r["score"]) for r in rows]),
    )


def read_corpus(path: Path) -> list[str]:
    """One sentence per line; blank lines are skipped. Errors name the file and the fix."""
    if not path.exists():
        raise CorpusError(f"corpus file {str(path)!r} does not exist; pass a UTF-8 text file, one sentence per line")
    raw = read_capped(path, MAX_TEXT_BYTES, CorpusError, "sentence corpus")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorpusError(
            f"corpus file {str(path)!r} is not UTF-8 (bad byte at line {line}); re-save it as UTF-8"
        ) from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise CorpusError(f"corpus file {str(path)!r} is empty; it needs at least one sentence per line")
    return sentences
