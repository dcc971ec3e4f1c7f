"""Sentence data: the STS-B splits shipped in data/stsb/ and user corpus files."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import CorpusError
from core.safe_io import MAX_CORPUS_ROWS, MAX_TEXT_BYTES, MAX_TEXT_CHARS, read_capped

STSB_DIR = Path(__file__).resolve().parent.parent / "data" / "stsb"
# Short, symbolic and mixed-script texts: where one activation scale per tensor hurts quantized models most.
# Calibration only; the tests fuzz with texts of their own.
EDGE_TEXTS = ("", " ", "a", "I", "?", "...", "©", "€", "ß", "é", "ŉ", "ﬁ", "Ω", "→", "™", "½", "🙂", "👍🏽",
              "東", "京都", "ä", "ok", "No.", "42", "#1", "x y z", "Москва", "القاهرة", "मुंबई", "Ἀθῆναι")

# Strings made to break a tokenizer that is not the model's own (an app's, MediaPipe's): accents, capitals in
# Latin, Greek and Cyrillic, CJK with and without spaces, right-to-left scripts, emoji, invisible and control
# characters, odd whitespace, empty, and far past any model's limit. Text-in artifacts are gated on them.
TOKENIZER_TEXTS = (
    "naïve résumé", "Café déjà vu", "ÉCOLE NORMALE SUPÉRIEURE", "Ångström and Øresund", "İstanbul, Ankara",
    "Straße STRASSE straße", "Crème Brûlée", "façade coöperate", "ﬁne ﬂour", "Ǆemal ǅemal",
    "Москва", "МОСКВА is in Россия", "Ἀθῆναι", "ΑΘΗΝΑ Athens", "ΟΔΟΣ ΑΘΗΝΑΣ", "東京都は日本の首都です",
    "北京欢迎你 Beijing", "日本語のテキスト", "한국어 문장입니다", "القاهرة هي عاصمة مصر", "שלום עולם", "मुंबई भारत",
    "ภาษาไทย",
    "🙂🚀👍🏽", "I ❤️ NY", "zero\u200bwidth\u200djoiner", "non\u00a0breaking\u3000spaces", "tab\tnew\nline\r\nend",
    "bell\x07and\x1fcontrols\x85", "soft\u00adhyphen", "e\u0301 composed é", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
    "", " ", "\t\n", "?!...", "A", "MiXeD CaSe WoRdS", "x" * 120,
    "Ünïcödé wörds " * 200,
)


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
    if len(sentences) > MAX_CORPUS_ROWS:
        raise CorpusError(f"corpus file {str(path)!r} has {len(sentences):,} sentences, more than the "
                          f"{MAX_CORPUS_ROWS:,} a fit corpus may have; pass a sample of it")
    longest = max(sentences, key=len, default="")
    if len(longest) > MAX_TEXT_CHARS:
        raise CorpusError(f"corpus file {str(path)!r} holds a line of {len(longest):,} characters, more than the "
                          f"{MAX_TEXT_CHARS:,} one text may have; shorten or split it")
    if not sentences:
        raise CorpusError(f"corpus file {str(path)!r} is empty; it needs at least one sentence per line")
    return sentences
