"""MediaPipe's own TextEmbedder on the artifact: strings in, MediaPipe's tokenizer, vectors out, as an Android,
iOS or web app calls it (the wheel runs the same C++ task as the phone). Needs mediapipe and numpy, no torch."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from converters.base import Shape, StructuralReport, manifest_shapes
from converters.mediapipe.package import echo_model, package, packed_vocabulary
from converters.mediapipe.tokenizer import NORMALIZATION, normalize_for_mediapipe
from core.data import EDGE_TEXTS, TOKENIZER_TEXTS, load_stsb
from core.errors import ArtifactError, require

NORMALIZATIONS = {NORMALIZATION: normalize_for_mediapipe}


class MediaPipeTextEmbedder:
    """One TextEmbedder; its C++ task holds the model, the tokenizer and the interpreter."""

    def __init__(self, model: Path | bytes) -> None:
        base = require("mediapipe.tasks.python.core.base_options", "mobile")
        text = require("mediapipe.tasks.python.text.text_embedder", "mobile")
        asset = {"model_asset_buffer": model} if isinstance(model, bytes) else {"model_asset_path": str(model)}
        options = text.TextEmbedderOptions(base_options=base.BaseOptions(**asset), l2_normalize=False,
                                           quantize=False)
        self._embedder = text.TextEmbedder.create_from_options(options)
        # Closed with this wrapper, or at exit while MediaPipe's dispatcher thread still runs: concurrent.futures
        # stops that thread in threading's exit hooks, after which MediaPipe's own __del__ prints a traceback. Hooks
        # run newest first, so this one runs before concurrent.futures' (CPython's hook for exactly that purpose).
        self._finalizer = weakref.finalize(self, self._embedder.close)
        threading._register_atexit(self._finalizer)

    def outputs(self, text: str) -> list[np.ndarray]:
        """Every output head's values for one text."""
        result = self._embedder.embed(text)
        return [np.asarray(head.embedding, dtype=np.float32) for head in result.embeddings]

    def close(self) -> None:
        self._finalizer()


class MediaPipeRunner:
    """A text runner (converters.base.TextRunner): token-id batches are not what this artifact takes."""

    def __init__(self, model_path: Path, shapes: list[Shape], normalization: str | None) -> None:
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise ArtifactError(f"the manifest names an unknown app normalisation {normalization!r} "
                                f"(known: {', '.join(NORMALIZATIONS)})")
        self.shapes: list[Shape] | None = shapes
        self.description = f"mediapipe {metadata.version('mediapipe')} TextEmbedder"
        self._normalize = NORMALIZATIONS.get(normalization or "", lambda text: text)
        self._embedder = MediaPipeTextEmbedder(model_path)

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        rows = [self._embed(_ascii_lower(self._normalize(text) if normalize else text)) for text in texts]
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    @lru_cache(maxsize=4096)  # noqa: B019  (one runner per artifact; the gate embeds STS-B raw and normalised)
    def _embed(self, text: str) -> np.ndarray:
        return self._embedder.outputs(text)[0]

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        raise ArtifactError("the MediaPipe artifact takes strings (TextEmbedder tokenizes inside); use embed_texts")

    def close(self) -> None:
        self._embedder.close()


ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(text: str) -> str:
    """MediaPipe's tokenizer lowercases ASCII letters first, so texts that differ only there are one input."""
    return text.translate(ASCII_LOWER)


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> MediaPipeRunner:
    if not manifest.get("shapes"):
        raise ArtifactError("a MediaPipe manifest must list its fixed length; the artifact is incomplete")
    normalization = (manifest.get("conversion") or {}).get("app_normalization")
    return MediaPipeRunner(Path(artifact_dir) / manifest["file"], manifest_shapes(manifest), normalization)


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


def tokenizer_agreement(artifact_dir: Path, manifest: dict, texts: Sequence[str] | None = None) -> dict:
    """On each text: do MediaPipe's ids equal the model's tokenizer's (the artifact's tokenizer.json, which
    truncates at the same length), raw and after the app normalisation the manifest names?"""
    texts = agreement_texts() if texts is None else texts
    (shape,) = manifest_shapes(manifest) or [None]
    if shape is None:
        raise ArtifactError("a MediaPipe manifest must list its fixed length; the artifact is incomplete")
    vocab = packed_vocabulary((Path(artifact_dir) / manifest["file"]).read_bytes())
    tokenizer = Tokenizer.from_file(str(Path(artifact_dir) / manifest["tokenizer"]["file"]))
    tokenizer.no_padding()
    expected = [encoding.ids for encoding in tokenizer.encode_batch(list(texts))]
    normalize = NORMALIZATIONS.get((manifest.get("conversion") or {}).get("app_normalization") or "",
                                   lambda text: text)
    raw = mediapipe_ids(vocab, shape.sequence, texts)
    normalized = mediapipe_ids(vocab, shape.sequence, [normalize(text) for text in texts])
    differ = [text for text, ids, want in zip(texts, normalized, expected, strict=True) if ids != want]
    return {
        "strings": len(texts),
        "ids_equal_raw": sum(ids == want for ids, want in zip(raw, expected, strict=True)),
        "ids_equal_normalized": len(texts) - len(differ),
        "differ_after_normalization": [text[:60] for text in differ],
    }


def structural_checks(artifact_dir: Path, manifest: dict) -> StructuralReport:
    agreement = tokenizer_agreement(artifact_dir, manifest)
    differ = agreement["differ_after_normalization"]
    failures = [f"MediaPipe's tokenizer gives other ids than the model's on {len(differ)} of {agreement['strings']} "
                f"strings even after the app normalisation (first: {differ[0]!r})"] if differ else []
    return StructuralReport(facts={"mediapipe_tokenizer": agreement, "gate_failures": failures})
