"""Parity and quality metrics: per-row cosine similarity, STS-B Spearman correlation and a retrieval figure."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class RetrievalScores:
    """Each pair scored at least ``min_score`` as a query (sentence 1) and its positive (sentence 2), searched among
    every other sentence of the split: cosine parity can hide rank damage, these show it. x100."""

    recall_at_1: float
    recall_at_10: float
    mrr: float
    queries: int


def retrieval_scores(embeddings: np.ndarray, sentences: list[str], pairs: StsPairs,
                     min_score: float = 4.0) -> RetrievalScores:
    index = {s: i for i, s in enumerate(sentences)}
    chosen = [(index[a], index[b]) for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores,
                                                          strict=True) if score >= min_score and a != b]
    queries = np.array([q for q, _ in chosen])
    positives = np.array([p for _, p in chosen])
    unit = embeddings.astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    similarity = unit[queries] @ unit.T
    rows = np.arange(len(queries))
    similarity[rows, queries] = -np.inf  # a query does not find itself
    ranks = (similarity > similarity[rows, positives][:, None]).sum(axis=1) + 1
    return RetrievalScores(recall_at_1=float((ranks == 1).mean() * 100), recall_at_10=float((ranks <= 10).mean() * 100),
                           mrr=float((1 / ranks).mean() * 100), queries=len(chosen))
