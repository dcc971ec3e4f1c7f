"""Loading and running a tokenizer file that came with an artifact or a model folder, so that whatever it does is
one error line, in bounded memory.

A tokenizer.json may hold a regular expression that backtracks without end (``(a|a)+$`` on "aaa...b"): Oniguruma
stops at its retry limit and `tokenizers` panics, which reaches Python as pyo3's PanicException, a BaseException
that ``except Exception`` misses. Every load and run of such a file goes through ``tokenizer_errors``.

The tokenizer also holds ~140 bytes of state per character of the texts of one call (20 MB of text took 2.9 GB),
so ``encode_rows`` hands it the texts in groups of at most ``MAX_TOKENIZE_CHARS``; each text is tokenized alone, so
the groups change no token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from tokenizers import Tokenizer

from core.errors import ToolchainError, gist

# Characters tokenized in one call: ~600 MB of tokenizer state, and still whole chunks of ordinary sentences
# (4,096 sentences of 1,000 characters) in one call.
MAX_TOKENIZE_CHARS = 4 << 20
# Not a tokenizer's failure: the user or the interpreter stopping the run.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


@contextlib.contextmanager
def tokenizer_errors(error: type[ToolchainError], message: str) -> Iterator[None]:
    """Whatever the block's `tokenizers` calls raise, a Rust panic included, as one ``error`` line:
    ``message (Type: what it said)``."""
    try:
        yield
    except (*_PASS_THROUGH, ToolchainError):
        raise
    except BaseException as exc:  # pyo3_runtime.PanicException derives from BaseException only
        raise error(f"{message} ({gist(exc, last=True)})") from None


def encode_rows(tokenizer: Tokenizer, texts: Sequence[str], error: type[ToolchainError],
                message: str) -> list[dict[str, list[int]]]:
    """Each text's input_ids, attention_mask and token_type_ids, tokenized in groups of at most
    ``MAX_TOKENIZE_CHARS`` characters; a tokenizer failure is one ``error`` line starting with ``message``."""
    rows: list[dict[str, list[int]]] = []
    with tokenizer_errors(error, message):
        for group in _groups(texts):
            rows += [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                     for e in tokenizer.encode_batch(group)]
    return rows


def _groups(texts: Sequence[str]) -> Iterator[list[str]]:
    group: list[str] = []
    size = 0
    for text in texts:
        if group and size + len(text) > MAX_TOKENIZE_CHARS:
            yield group
            group, size = [], 0
        group.append(text)
        size += len(text)
    if group:
        yield group
