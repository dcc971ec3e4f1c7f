"""The fp32 PyTorch reference: sentence-transformers' own encode, plus the PCA projection if any.

Reference embeddings of a sentence list are cached on disk (keyed by the sha256 of the model's files,
tokenizer and module configs included, and the sentences), since verify, bench and the tests all need the
same STS-B dev embeddings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import ModelSourceError
from core.model_source import ModelSource
from core.pca import Projection
from core.tokenizer_guard import tokenizer_errors


def cache_dir() -> Path:
    root = os.environ.get("EMBEDDING_TOOLCHAIN_CACHE") or Path.home() / ".cache" / "embedding-toolchain"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Reference:
    def __init__(self, st_model, source: ModelSource, projection: Projection | None = None) -> None:
        self.st_model = st_model
        self.source = source
        self.projection = projection
        self._model_sha = source.sha256()

    @property
    def model_sha256(self) -> str:
        return self._model_sha

    def source_embeddings(self, sentences: Sequence[str]) -> np.ndarray:
        """fp32 embeddings of the unmodified source model (its own dims)."""
        key = hashlib.sha256("\x00".join(sentences).encode("utf-8")).hexdigest()[:16]
        path = cache_dir() / f"ref-{self._model_sha[:16]}-{key}.npy"
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(sentences):
                return cached
        with tokenizer_errors(ModelSourceError, f"the source model {self.source.spec!r} failed on the texts"):
            embeddings = self.st_model.encode(list(sentences), batch_size=32, convert_to_numpy=True)
        embeddings = embeddings.astype(np.float32)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings)
        os.replace(tmp, path)
        return embeddings

    def project(self, source: np.ndarray) -> np.ndarray:
        """Source-model embeddings as the artifact should output them: projected and re-normalised if PCA is on."""
        return self.projection.apply(source) if self.projection is not None else source

    def embeddings(self, sentences: Sequence[str]) -> np.ndarray:
        return self.project(self.source_embeddings(sentences))
