"""Whether MediaPipe's own BERT tokenizer can reproduce a model's tokenizer, and the text normalisation an app
applies before calling it.

MediaPipe's TextEmbedder (Android, iOS, web) tokenizes inside the task, from the WordPiece vocabulary packed in
the model's metadata: it looks up '[CLS]', '[SEP]' and '[UNK]' by name, lowercases ASCII letters only, and
neither strips accents nor drops control characters. Hugging Face's uncased BERT normaliser does all of that,
so without help "naïve résumé" reaches the model as other ids (cosine 0.09 to the source model here). The
fix is one function the app runs on the text before the call (``normalize_for_mediapipe``, mirrored in the
model card's Kotlin and Swift): afterwards MediaPipe's ids equal the model's, which the converter checks id by
id through MediaPipe itself (converters.mediapipe.package.echo_model).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from core.errors import ModelSourceError
from core.model_source import ModelSource
from core.safe_io import MAX_JSON_BYTES, read_json

# The names MediaPipe's BERT tokenizer looks up, by the role the model's own special token plays.
MEDIAPIPE_SPECIALS = {"cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"}
NORMALIZATION = "bert-uncased"  # the manifest's name for normalize_for_mediapipe
WORDPIECE_PREFIX = "##"


class Unsupported(Exception):
    """The model's tokenizer is one MediaPipe cannot reproduce; the message says why, in one clause."""


@dataclass(frozen=True)
class MediaPipeVocabulary:
    """vocab.txt as MediaPipe reads it (line i is id i), with the model's specials renamed where needed."""

    tokens: tuple[str, ...]
    renamed: dict[str, str]  # the model's token -> the name MediaPipe looks up ('<s>' -> '[CLS]' for MPNet)
    normalization: str

    def vocab_txt(self) -> bytes:
        return "".join(token + "\n" for token in self.tokens).encode("utf-8")


def _object(value: object) -> dict:
    """A tokenizer.json section as a dict; anything else (a damaged or hostile file) reads as empty."""
    return value if isinstance(value, dict) else {}


def _special_ends(post_processor: dict) -> tuple[str, str]:
    """The tokens the model puts first and last around a single sentence."""
    kind = post_processor.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        cls, sep = post_processor.get("cls"), post_processor.get("sep")
        if isinstance(cls, list) and isinstance(sep, list) and cls and sep:
            return str(cls[0]), str(sep[0])
    if kind == "TemplateProcessing":
        single = post_processor.get("single") if isinstance(post_processor.get("single"), list) else []
        pieces = [next(iter(item.items())) for item in single if isinstance(item, dict) and len(item) == 1]
        if [k for k, _ in pieces] == ["SpecialToken", "Sequence", "SpecialToken"]:
            return str(_object(pieces[0][1]).get("id")), str(_object(pieces[2][1]).get("id"))
    raise Unsupported("its tokenizer does not frame a sentence as one special token, the text, one special token "
                      "(MediaPipe always adds [CLS] first and [SEP] last)")


def mediapipe_vocabulary(tokenizer: dict) -> MediaPipeVocabulary:
    """The vocabulary MediaPipe needs for this tokenizer.json; Unsupported where no app-side fix can make
    MediaPipe's ids equal the model's."""
    model = _object(tokenizer.get("model"))
    kind = model.get("type")
    if kind != "WordPiece":
        what = {"BPE": "a byte-level BPE", "Unigram": "a SentencePiece Unigram"}.get(str(kind), f"a {kind}")
        raise Unsupported(f"its tokenizer is {what} tokenizer; MediaPipe's text tasks tokenize BERT WordPiece "
                          "(and plain SentencePiece without fairseq ids) only")
    normalizer = _object(tokenizer.get("normalizer"))
    if normalizer.get("type") != "BertNormalizer" or normalizer.get("lowercase") is not True:
        raise Unsupported("its WordPiece vocabulary is cased (or not BERT-normalised); MediaPipe lowercases ASCII "
                          "letters whatever the vocabulary")
    if normalizer.get("strip_accents") is False or not normalizer.get("clean_text", True) \
            or not normalizer.get("handle_chinese_chars", True):
        raise Unsupported("its BERT normaliser keeps accents or control characters, which the app-side "
                          f"normalisation {NORMALIZATION!r} removes")
    if _object(tokenizer.get("pre_tokenizer")).get("type") != "BertPreTokenizer":
        raise Unsupported("its pre-tokenizer is not BERT's (whitespace and punctuation splits)")
    if model.get("continuing_subword_prefix", WORDPIECE_PREFIX) != WORDPIECE_PREFIX:
        raise Unsupported(f"its word pieces continue with {model.get('continuing_subword_prefix')!r}, not '##'")
    first, last = _special_ends(_object(tokenizer.get("post_processor")))
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise Unsupported("its tokenizer.json holds no WordPiece vocabulary")
    by_id = {i: str(token) for token, i in vocab.items() if isinstance(i, int) and not isinstance(i, bool)}
    if len(by_id) != len(vocab):
        raise Unsupported("its vocabulary gives two tokens one id, or a token no integer id")
    added_tokens = tokenizer.get("added_tokens") if isinstance(tokenizer.get("added_tokens"), list) else []
    for added in added_tokens:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            by_id.setdefault(added["id"], str(added.get("content")))
    if sorted(by_id) != list(range(len(by_id))):
        raise Unsupported("its token ids have gaps, which a vocab.txt (one token per line) cannot express")
    roles = {"cls": first, "sep": last, "unk": str(model.get("unk_token", "[UNK]"))}
    renamed = {token: MEDIAPIPE_SPECIALS[role] for role, token in roles.items() if token != MEDIAPIPE_SPECIALS[role]}
    # An ordinary entry spelled like a name MediaPipe looks up (MPNet keeps BERT's [CLS] and [SEP] at ids 105-106
    # beside its own <s> and </s>) is no text's token in either tokenizer, both split the brackets off first; it
    # takes another such name. An added token is matched in the text by Hugging Face, so it cannot be renamed.
    matched_in_text = {str(added.get("content")) for added in added_tokens if isinstance(added, dict)}
    renamed |= {token: f"{token}#{i}" for i, token in by_id.items() if token in MEDIAPIPE_SPECIALS.values()
                and token not in roles.values() and token not in matched_in_text}
    tokens = [renamed.get(token, token) for _, token in sorted(by_id.items())]
    for role, name in MEDIAPIPE_SPECIALS.items():
        if tokens.count(name) != 1 or by_id.get(tokens.index(name)) != roles[role]:
            raise Unsupported(f"its vocabulary already uses {name!r} for another token than its {role} token, and "
                              "a text can produce it")
    if len(set(tokens)) != len(tokens):
        raise Unsupported("renaming its specials for MediaPipe would give two ids one name")
    if any("\n" in token or "\r" in token for token in tokens):
        raise Unsupported("a token of its vocabulary contains a line break, which vocab.txt cannot hold")
    return MediaPipeVocabulary(tuple(tokens), renamed, NORMALIZATION)


def refusal(source: ModelSource) -> str | None:
    """Why MediaPipe cannot take this model (read from its files, nothing loaded); None when it can."""
    path = source.layout.transformer_dir / "tokenizer.json"
    if not path.is_file():
        return "it has no tokenizer.json, from which the MediaPipe vocabulary is made"
    try:
        mediapipe_vocabulary(read_json(path, ModelSourceError, "tokenizer", cap=MAX_JSON_BYTES))
    except Unsupported as exc:
        return str(exc)
    return None


# The CJK ideograph blocks Hugging Face's BERT normaliser puts spaces around (its is_chinese_char; note the gap
# U+2B820-U+2B91F, which it leaves out).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B81F), (0x2B920, 0x2CEAF),
              (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in CJK_RANGES)


def normalize_for_mediapipe(text: str) -> str:
    """What Hugging Face's uncased BERT normaliser does and MediaPipe's tokenizer does not, in its order: drop
    control and format characters (U+0000, U+FFFD and Unicode category C*, except tab and line breaks), turn
    whitespace into spaces, put spaces around CJK ideographs, decompose (NFD) and drop combining marks (Mn),
    lowercase all of Unicode. The model card's Kotlin and Swift functions do the same, step by step."""
    kept = []
    for char in text:
        if char in "\t\n\r" or char.isspace() and not unicodedata.category(char).startswith("C"):
            kept.append(" ")
        elif char in "\x00\ufffd" or unicodedata.category(char).startswith("C"):
            continue
        elif _is_cjk(ord(char)):
            kept.append(f" {char} ")
        else:
            kept.append(char)
    decomposed = unicodedata.normalize("NFD", "".join(kept))
    # Lowercased one character at a time, as Hugging Face does: a word-final capital sigma becomes σ, not the ς
    # that str.lower() (and Kotlin's String.lowercase) would make of it, which is another token.
    return "".join(char.lower() for char in decomposed if unicodedata.category(char) != "Mn")
