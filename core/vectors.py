"""Stored-vector precision: float32, int8 and binary embeddings, calibrated once and declared in the manifest.

int8 follows sentence-transformers' ``quantize_embeddings(precision="int8", ranges=...)``: 256 buckets between
each dimension's calibrated low and high, ``q = clip(floor((x - low) / step), 0, 255) - 128`` with
``step = (high - low) / 255``, so an index built with either tool reads the other's vectors. Binary keeps one bit
per dimension,
``x > threshold`` (the calibrated median, 0 for a centred PCA output), packed 8 per byte as ``numpy.packbits``
does (sentence-transformers' "ubinary"); its cosine is ``1 - 2 * hamming / dims``.

The ranges live in the manifest's ``vectors`` entry; ``decode`` maps stored vectors back to float so the same
cosine scoring measures every precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import ArtifactError
from core.manifest import BinaryCut, Int8Ranges, VectorsRecord

PRECISIONS = ("float32", "int8", "binary")


@dataclass(frozen=True)
class VectorCodec:
    low: np.ndarray  # (dims,) float32, int8 range start
    high: np.ndarray  # (dims,) float32, int8 range end
    threshold: np.ndarray  # (dims,) float32, binary cut
    calibration: str  # the corpus the ranges come from

    @property
    def dims(self) -> int:
        return int(self.low.shape[0])

    @classmethod
    def fit(cls, embeddings: np.ndarray, calibration: str) -> VectorCodec:
        # float32 throughout: the manifest's JSON numbers then round-trip to exactly the values used here.
        x = embeddings.astype(np.float32)
        return cls(x.min(axis=0), x.max(axis=0), np.median(x, axis=0).astype(np.float32), calibration)

    def encode(self, embeddings: np.ndarray, precision: str) -> np.ndarray:
        """float32 (n, dims) -> stored vectors: float32 (n, dims), int8 (n, dims) or uint8 (n, ceil(dims/8))."""
        if precision == "float32":
            return embeddings.astype(np.float32)
        if precision == "int8":
            # float32 arithmetic, as sentence-transformers does: identical buckets.
            buckets = np.clip(np.floor((embeddings.astype(np.float32) - self.low) / self._steps()), 0, 255)
            return (buckets - 128).astype(np.int8)
        if precision == "binary":
            return np.packbits(embeddings > self.threshold, axis=-1)
        raise ArtifactError(f"unknown vector precision {precision!r}; choose one of {', '.join(PRECISIONS)}")

    def decode(self, stored: np.ndarray, precision: str) -> np.ndarray:
        """Stored vectors back to float32 for cosine scoring: each int8 bucket's centre, +-1 for binary."""
        if precision == "float32":
            return stored.astype(np.float32)
        if precision == "int8":
            return (self.low + (stored.astype(np.float64) + 128.5) * self._steps()).astype(np.float32)
        if precision == "binary":
            bits = np.unpackbits(stored, axis=-1, count=self.dims)
            return (bits.astype(np.float32) * 2 - 1)
        raise ArtifactError(f"unknown vector precision {precision!r}; choose one of {', '.join(PRECISIONS)}")

    def _steps(self) -> np.ndarray:
        steps = (self.high - self.low) / np.float32(255)
        return np.where(steps == 0, np.float32(1), steps)  # a constant dimension, as sentence-transformers treats it

    def record(self) -> VectorsRecord:
        """The manifest's ``vectors`` entry."""
        return VectorsRecord(self.calibration, Int8Ranges(tuple(self.low.tolist()), tuple(self.high.tolist())),
                             BinaryCut(tuple(self.threshold.tolist()), "numpy.packbits, most significant first"))

    @classmethod
    def from_record(cls, record: VectorsRecord, dims: int) -> VectorCodec:
        """From a manifest's ``vectors`` entry (typed by core.manifest), its sizes and values checked."""
        arrays = [np.asarray(v, dtype=np.float32) for v in (record.int8.low, record.int8.high, record.binary.threshold)]
        if any(a.shape != (dims,) or not np.isfinite(a).all() for a in arrays) or (arrays[1] < arrays[0]).any():
            raise ArtifactError(f"the manifest's 'vectors' ranges are not {dims} finite low <= high values; "
                                "re-export the artifact")
        return cls(*arrays, record.calibration)


def bytes_per_vector(dims: int, precision: str) -> int:
    return {"float32": 4 * dims, "int8": dims, "binary": -(-dims // 8)}[precision]

