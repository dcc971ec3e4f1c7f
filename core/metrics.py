"""Parity metrics: per-row cosine similarity and STS-B Spearman correlation."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from core.data import StsPairs


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (NaN where a row is all zeros)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / norms


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row cosine, counting a non-finite row as -1 (the worst) rather than dropping it."""
    return float(np.nan_to_num(row_cosines(a, b), nan=-1.0).mean())


def sts_spearman(embeddings: np.ndarray, sentences: list[str], pairs: StsPairs) -> float:
    """Spearman x100 between the pairs' cosines and their gold scores; ``embeddings`` rows follow ``sentences``."""
    index = {s: i for i, s in enumerate(sentences)}
    left = embeddings[[index[s] for s in pairs.sentences1]]
    right = embeddings[[index[s] for s in pairs.sentences2]]
    return float(spearmanr(row_cosines(left, right), pairs.scores).statistic * 100)
