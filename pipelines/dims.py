"""`--dims auto`: the smallest PCA output size whose STS-B dev drop stays within ``--max-drop``, and the sweep.

Each candidate size is fitted on the fit corpus (STS-B train by default) and scored on STS-B dev against the full
model: Spearman, the retrieval figure (core.metrics.retrieval_scores), and both again for the stored int8 and
binary vectors (core.vectors), with the bytes each vector takes. The chosen size's row and the whole table go into
the manifest, so the report shows the trade-off the choice was made on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.data import load_stsb
from core.manifest import DimsSweepRecord, Gate, SweepRow
from core.metrics import retrieval_scores, sts_spearman
from core.pca import Projection, fit_pca
from core.vectors import PRECISIONS, VectorCodec, bytes_per_vector

CANDIDATE_DIMS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
DEFAULT_MAX_DROP = Gate.pca_extra_drop  # STS-B points: what the gate allows a projection to cost


@dataclass(frozen=True)
class DimsSweep:
    rows: list[SweepRow]
    max_drop: float
    chosen: int  # the smallest float32 size within max_drop (the model's own size if none smaller is)

    def record(self) -> DimsSweepRecord:
        return DimsSweepRecord("STS-B dev", self.max_drop, self.chosen, tuple(self.rows))


def vector_quality(fit: np.ndarray, dev: np.ndarray, projection: Projection | None) -> list[SweepRow]:
    """One row per stored precision for one projection (None: the model's own output). Rows carry no drops yet."""
    pairs = load_stsb("dev")
    sentences = pairs.unique_sentences()
    fitted, evaluated = (fit, dev) if projection is None else (projection.apply(fit), projection.apply(dev))
    codec = VectorCodec.fit(fitted, "fit corpus")
    rows = []
    for precision in PRECISIONS:
        stored = codec.decode(codec.encode(evaluated, precision), precision)
        retrieval = retrieval_scores(stored, sentences, pairs)
        rows.append(SweepRow(evaluated.shape[1], precision, bytes_per_vector(evaluated.shape[1], precision),
                             round(sts_spearman(stored, sentences, pairs), 2), 0.0,
                             round(retrieval.recall_at_10, 2), round(retrieval.mrr, 2), 0.0))
    return rows


def sweep(fit: np.ndarray, dev: np.ndarray, max_drop: float | None = None,
          candidates: Sequence[int] = CANDIDATE_DIMS) -> DimsSweep:
    """``fit``/``dev``: the source model's embeddings of the fit corpus and of the STS-B dev sentences."""
    max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop  # checked by pipelines.preflight.check_build
    rows = vector_quality(fit, dev, None)
    for dims in sorted(d for d in candidates if d < min(fit.shape[1], len(fit))):
        rows += vector_quality(fit, dev, fit_pca(fit, dims))
    full = rows[0]
    rows = sorted((replace(r, spearman_drop=round(full.spearman - r.spearman, 2), mrr_drop=round(full.mrr - r.mrr, 2))
                   for r in rows),
                  key=lambda r: (PRECISIONS.index(r.precision), r.dims))
    chosen = min(r.dims for r in rows if r.precision == "float32" and r.spearman_drop <= max_drop)
    return DimsSweep(rows, max_drop, chosen)
