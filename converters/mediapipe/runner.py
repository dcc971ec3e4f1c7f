"""MediaPipe's own TextEmbedder on the artifact: strings in, MediaPipe's tokenizer, vectors out, as an Android,
iOS or web app calls it (the wheel runs the same C++ task as the phone). Needs mediapipe and numpy, no torch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from converters.base import SEQUENCE_LIMIT, Shape, StructuralReport
from converters.mediapipe import MediaPipeFacts
from converters.mediapipe.package import echo_model, package, packed_vocabulary
from converters.mediapipe.tokenizer import NORMALIZATION, normalize_for_mediapipe
from core.data import EDGE_TEXTS, TOKENIZER_TEXTS, load_stsb
from core.errors import ArtifactError, gist, require
from core.manifest import Artifact, Manifest
from core.model_files import read_tokenizer
from core.safe_io import read_capped
from core.tokenizer_guard import encode_rows

NORMALIZATIONS = {NORMALIZATION: normalize_for_mediapipe}
MAX_MODEL_BYTES = 2 << 30  # MediaPipe's loader stops at 2 GiB anyway
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
MAX_KEPT_VECTORS = 20_000  # normalised vectors kept for a raw pass (STS-B dev: 2,910 sentences)
Normalize = Callable[[str], str]


def _unchanged(text: str) -> str:
    return text


def text_input(manifest: Manifest) -> tuple[Shape, Normalize]:
    """The one length and the app-side normalisation a MediaPipe manifest names, each checked: a damaged or hostile
    manifest is one ArtifactError, never a TypeError or a multi-gigabyte allocation later."""
    where = "a MediaPipe manifest"
    shapes = list(manifest.shapes or ())
    if len(shapes) != 1 or shapes[0].batch != 1 or not 2 <= shapes[0].sequence <= SEQUENCE_LIMIT:
        raise ArtifactError(f"{where} must list one shape of batch 1 and 2 to {SEQUENCE_LIMIT} tokens, "
                            f"not {[(s.batch, s.sequence) for s in shapes][:3]}")
    name = app_normalization(manifest)
    return shapes[0], NORMALIZATIONS[name] if name else _unchanged


def app_normalization(manifest: Manifest) -> str | None:
    """The text normalisation an app applies before MediaPipe, one of the known ones (checked by the record)."""
    return manifest.conversion_as(MediaPipeFacts).app_normalization


class MediaPipeTextEmbedder:
    """One TextEmbedder; its C++ task holds the model, the tokenizer and the interpreter. Whatever MediaPipe raises
    on a damaged model or text is one ArtifactError line."""

    def __init__(self, model: Path | bytes) -> None:
        base = require("mediapipe.tasks.python.core.base_options", "mobile")
        text = require("mediapipe.tasks.python.text.text_embedder", "mobile")
        asset = {"model_asset_buffer": model} if isinstance(model, bytes) else {"model_asset_path": str(model)}
        options = text.TextEmbedderOptions(base_options=base.BaseOptions(**asset), l2_normalize=False,
                                           quantize=False)
        try:
            self._embedder = text.TextEmbedder.create_from_options(options)
        except Exception as exc:  # MediaPipe raises ValueError/RuntimeError with its C++ status text
            raise ArtifactError(f"MediaPipe's TextEmbedder cannot open the model ({gist(exc, last=True)})") from None
        # Closed by close(), or at exit while MediaPipe's dispatcher thread still runs: concurrent.futures stops that
        # thread in threading's exit hooks, after which MediaPipe's own __del__ prints a traceback; hooks run newest
        # first, so this one runs before concurrent.futures'. Never from a garbage-collector finalizer: closing
        # submits to MediaPipe's executor, and a collection that fires inside another executor's submit (holding
        # concurrent.futures' global lock) would deadlock. The hook keeps the task alive until then.
        threading._register_atexit(self._embedder.close)

    def outputs(self, text: str) -> list[np.ndarray]:
        """Every output head's values for one text."""
        try:
            result = self._embedder.embed(text)
        except Exception as exc:
            raise ArtifactError(f"MediaPipe's TextEmbedder failed on a text ({gist(exc, last=True)})") from None
        return [np.asarray(head.embedding, dtype=np.float32) for head in result.embeddings]

    def first_output(self, text: str) -> np.ndarray:
        return self.outputs(text)[0]

    def close(self) -> None:
        self._embedder.close()  # idempotent


class MediaPipeRunner:
    """A text runner (converters.base.TextRunner): token-id batches are not what this artifact takes."""

    def __init__(self, model_path: Path, shapes: list[Shape], normalize: Normalize) -> None:
        self._embedder = MediaPipeTextEmbedder(model_path)
        self.shapes: list[Shape] | None = shapes
        self.description = f"mediapipe {metadata.version('mediapipe')} TextEmbedder"
        self._normalize = normalize
        # The app-normalised calls' vectors by the text MediaPipe got, for the raw-text calls only: the gate's raw
        # pass (what an app that skips the normalisation gets) repeats the normalised pass on every text whose
        # normalisation changes nothing MediaPipe would not (its ASCII lowercasing): most texts, the same input,
        # the same vector (tests/test_mediapipe.py checks reused rows against a fresh task's).
        self._normalized_vectors: dict[str, np.ndarray] = {}

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        # Texts that reach MediaPipe as the same input run once per call. App-normalised calls never reuse an
        # earlier call's vectors: a benchmark that repeats a call must time the model, not a cache.
        fed = [_ascii_lower(self._normalize(text) if normalize else text) for text in texts]
        known = {} if normalize else self._normalized_vectors
        unique = {text: known[text] if text in known else self._embedder.first_output(text)
                  for text in dict.fromkeys(fed)}
        if normalize and len(self._normalized_vectors) + len(unique) <= MAX_KEPT_VECTORS:
            self._normalized_vectors.update(unique)
        return np.stack([unique[text] for text in fed]) if fed else np.zeros((0, 0), dtype=np.float32)

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        raise ArtifactError("the MediaPipe artifact takes strings (TextEmbedder tokenizes inside); use embed_texts")

    def close(self) -> None:
        self._embedder.close()


def _ascii_lower(text: str) -> str:
    """MediaPipe's tokenizer lowercases ASCII letters first, so texts that differ only there are one input."""
    return text.translate(ASCII_LOWER)


def load_runner(artifact: Artifact, threads: int | None) -> MediaPipeRunner:
    shape, normalize = text_input(artifact.manifest)
    return MediaPipeRunner(artifact.model_path, [shape], normalize)


def mediapipe_ids(vocab_txt: bytes, length: int, texts: Sequence[str]) -> list[list[int]]:
    """The ids MediaPipe's tokenizer feeds a model of this vocabulary and length, read back through MediaPipe's
    own task (an echo model packed with the vocabulary)."""
    embedder = MediaPipeTextEmbedder(package(echo_model(length), vocab_txt, "token ids and mask, as floats"))
    try:
        rows = []
        for text in texts:
            ids, mask = embedder.outputs(text)
            rows.append([int(i) for i, m in zip(ids, mask, strict=True) if m > 0])
        return rows
    finally:
        embedder.close()


def agreement_texts() -> list[str]:
    """The tokenizer test strings, the calibration's odd short texts and the first 200 STS-B dev sentences."""
    return [*TOKENIZER_TEXTS, *EDGE_TEXTS, *load_stsb("dev").unique_sentences()[:200]]


def tokenizer_agreement(artifact: Artifact, texts: Sequence[str] | None = None) -> dict:
    """On each text: do MediaPipe's ids equal the model's tokenizer's (the artifact's tokenizer.json, which
    truncates at the same length), raw and after the app normalisation the manifest names?"""
    texts = agreement_texts() if texts is None else texts
    shape, normalize = text_input(artifact.manifest)
    vocab = packed_vocabulary(read_capped(artifact.model_path, MAX_MODEL_BYTES, ArtifactError, "MediaPipe model"))
    tokenizer = read_tokenizer(artifact.tokenizer_path, ArtifactError, "the artifact is damaged: export it again")
    tokenizer.no_padding()
    expected = [row["input_ids"] for row in encode_rows(tokenizer, list(texts), ArtifactError,
                                                         f"{artifact.folder}: its tokenizer failed on the texts")]
    raw = mediapipe_ids(vocab, shape.sequence, texts)
    normalized = mediapipe_ids(vocab, shape.sequence, [normalize(text) for text in texts])
    differ = [text for text, ids, want in zip(texts, normalized, expected, strict=True) if ids != want]
    return {
        "strings": len(texts),
        "ids_equal_raw": sum(ids == want for ids, want in zip(raw, expected, strict=True)),
        "ids_equal_normalized": len(texts) - len(differ),
        "differ_after_normalization": [text[:60] for text in differ],
    }


def structural_checks(artifact: Artifact) -> StructuralReport:
    agreement = tokenizer_agreement(artifact)
    differ = agreement["differ_after_normalization"]
    failures = [f"MediaPipe's tokenizer gives other ids than the model's on {len(differ)} of {agreement['strings']} "
                f"strings even after the app normalisation (first: {differ[0]!r})"] if differ else []
    return StructuralReport(facts={"mediapipe_tokenizer": agreement}, gate_failures=failures)
