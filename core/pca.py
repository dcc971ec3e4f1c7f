"""PCA projection folded into the graph as a centred linear layer.

y = normalize(components @ (x - mean)) = normalize(W x + b) with W = components and
b = -components @ mean. Centring matters: without it the first component mostly encodes the
mean direction shared by every sentence, and STS-B drops further.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from core.errors import ArtifactError


@dataclass(frozen=True)
class Projection:
    components: np.ndarray  # (dims, source_dim), rows orthonormal
    mean: np.ndarray  # (source_dim,)
    explained_variance_ratio: float

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def linear_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) of the folded layer: W x + b = components @ (x - mean)."""
        return self.components.astype(np.float32), (-self.components @ self.mean).astype(np.float32)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        projected = (embeddings.astype(np.float64) - self.mean) @ self.components.T
        norms = np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        return (projected / norms).astype(np.float32)

    def save(self, path: Path) -> None:
        save_file(
            {
                "components": self.components.astype(np.float64),
                "mean": self.mean.astype(np.float64),
                "explained_variance_ratio": np.array([self.explained_variance_ratio]),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> Projection:
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"{path} is not a readable PCA file ({exc})") from None
        return cls(tensors["components"], tensors["mean"], float(tensors["explained_variance_ratio"][0]))


def fit_pca(embeddings: np.ndarray, dims: int) -> Projection:
    """Fit on (n, d) embeddings. Deterministic: eigen-decomposition with a sign convention."""
    x = embeddings.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:dims]
    components = eigenvectors[:, order].T
    # Fix each component's sign so refits give byte-identical weights.
    signs = np.sign(components[np.arange(dims), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    ratio = float(eigenvalues[order].sum() / eigenvalues.sum())
    return Projection(components=components, mean=mean, explained_variance_ratio=ratio)
