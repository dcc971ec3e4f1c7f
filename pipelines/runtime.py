"""Run an artifact the way an app would: its own tokenizer.json, its manifest, its runtime.

Nothing here needs torch or the source model: the format's runner is looked up in the registry and only
its runtime is loaded (ONNX Runtime, LiteRT; ExecuTorch and the Core ML emulation bring torch themselves).
If this works, an app that knows only the manifest can reproduce the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from converters.base import ManyBatchRunner, Runner, TextRunner
from converters.registry import get_format
from core.cpu import cpu_mismatch
from core.errors import ArtifactError, ToolchainError, gist
from core.manifest import read_artifact
from core.model_files import read_tokenizer
from core.tokenizer_guard import encode_rows
from pipelines.signing import check_signature


class ArtifactEncoder:
    def __init__(
        self, artifact_dir: Path, threads: int | None = None, runner: Runner | None = None, strict: bool = False,
        public_key: Path | None = None,
    ) -> None:
        """``public_key``: load only an artifact whose model-signing signature that key verifies (pipelines.signing),
        checked before any of its files is read."""
        artifact_dir = Path(artifact_dir)
        if public_key is not None:
            check_signature(artifact_dir, public_key)
        self.artifact = read_artifact(artifact_dir)
        manifest = self.artifact.manifest
        # An int8 artifact built for one CPU class on another: a note to show, or, with strict, an error.
        self.cpu_mismatch = cpu_mismatch(manifest.isa_class)
        if strict and self.cpu_mismatch:
            raise ArtifactError(f"{artifact_dir}: {self.cpu_mismatch}")
        self.tokenizer = read_tokenizer(self.artifact.tokenizer_path, ArtifactError,
                                        "the artifact is damaged: export it again")
        self.tokenizer.no_padding()  # we pad per batch or per bucket below
        self.input_names: list[str] = [spec.name for spec in manifest.inputs]
        self.pad_id = manifest.tokenizer.pad_token_id
        self.prompts: dict[str, str] = manifest.prompts
        self.default_prompt_name: str | None = manifest.default_prompt_name
        fmt = get_format(manifest.format)
        self.sequence_multiple = fmt.sequence_multiple
        self.max_length = manifest.tokenizer.max_length
        self.runner = runner or self._load_runner(fmt, threads)
        # A runner may stand in for a runtime that cannot run on this OS (Core ML off macOS): it says so.
        self.emulated: bool = getattr(self.runner, "emulated", False)
        self.runtime_name: str = getattr(self.runner, "description", manifest.runtime)

    def _load_runner(self, fmt, threads: int | None) -> Runner:
        """The format's runtime on the artifact's file; whatever the runtime raises on a damaged file becomes one
        ArtifactError line (it ran after the checksums, or on an artifact whose manifest was rewritten too)."""
        try:
            return fmt.load_runner(self.artifact, threads)
        except (ToolchainError, ImportError):
            raise
        except Exception as exc:
            raise ArtifactError(f"{self.artifact.model_path} cannot be loaded by its runtime "
                                f"({self.artifact.manifest.runtime}): {gist(exc, last=True)}") from None

    def _run(self, inputs: dict[str, np.ndarray], shape) -> np.ndarray:
        return self._run_many([inputs], lambda batches: [self.runner.run(batches[0], shape)])[0]

    def _run_many(self, batches: list[dict[str, np.ndarray]], run) -> list[np.ndarray]:
        """``run(batches)`` with whatever the runtime raises, or a wrong output shape, as one ArtifactError."""
        return self._checked(lambda: run(batches), [len(next(iter(inputs.values()))) for inputs in batches])

    def _checked(self, call, rows: list[int]) -> list[np.ndarray]:
        """``call()``'s outputs, one (rows, dims) array per entry of ``rows``; a runtime error or a wrong shape is
        one ArtifactError line."""
        try:
            outputs = [np.asarray(output) for output in call()]
        except Exception as exc:
            raise ArtifactError(f"{self.artifact.manifest.file} failed to run: {gist(exc, last=True)}") from None
        for count, output in zip(rows, outputs, strict=True):
            if output.ndim != 2 or output.shape[0] != count:
                raise ArtifactError(f"{self.artifact.manifest.file} returned shape {output.shape}, not (batch, dims)")
        return outputs

    def prompt(self, prompt_name: str | None = None) -> str:
        """The text put before each sentence: the named prompt, else the model's default one, else none."""
        name = prompt_name or self.default_prompt_name
        if name is not None and name not in self.prompts:
            known = ", ".join(self.prompts) or "none"
            raise ArtifactError(f"prompt {name!r} is not in the manifest (its prompts: {known})")
        return self.prompts[name] if name is not None else ""

    def tokenize(self, sentences: Sequence[str], prompt_name: str | None = None) -> list[dict[str, list[int]]]:
        prompt = self.prompt(prompt_name)
        return encode_rows(self.tokenizer, [prompt + sentence for sentence in sentences], ArtifactError,
                           f"{self.artifact.folder}: its tokenizer failed on the texts")

    def _sequence_bucket(self, length: int) -> int:
        sequences = sorted({s.sequence for s in self.runner.shapes})
        return next((seq for seq in sequences if seq >= length), sequences[-1])

    def _chunks_for_bucket(self, rows: list, sequence: int):
        """Split rows of one sequence bucket into batches, using the largest batch bucket that fills."""
        shapes = sorted((s for s in self.runner.shapes if s.sequence == sequence), key=lambda s: -s.batch)
        start = 0
        while start < len(rows):
            left = len(rows) - start
            shape = next((s for s in shapes if s.batch <= left), shapes[-1])
            yield shape, rows[start : start + shape.batch]
            start += shape.batch

    def pad(self, rows: list[dict[str, list[int]]], batch: int, sequence: int) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            fill = self.pad_id if name == "input_ids" else 0
            out = np.full((batch, sequence), fill, dtype=np.int64)
            for i, row in enumerate(rows):
                values = row[name][:sequence]
                out[i, : len(values)] = values
            if batch > len(rows) and name == "attention_mask":
                out[len(rows) :, 0] = 1  # filler rows need one real position; their outputs are dropped
            arrays[name] = out
        return arrays

    def _pad_to_longest(self, rows: list[dict[str, list[int]]], multiple: int = 1) -> dict[str, np.ndarray]:
        """Padded to the longest row, rounded up to ``multiple`` (within the model's limit)."""
        length = max(len(r["input_ids"]) for r in rows)
        rounded = -(-length // multiple) * multiple
        return self.pad(rows, len(rows), max(length, min(rounded, self.max_length)))

    def require_token_input(self) -> None:
        """Refuse, in one line, a batch path on an artifact that takes strings (MediaPipe's TextEmbedder)."""
        if isinstance(self.runner, TextRunner):
            raise ArtifactError(f"{self.artifact.folder} takes strings in an app's own runtime (its tokenizer is "
                                "inside, one text per call); embed a corpus with the tflite or x86 artifact instead")

    def run_tokenized(self, rows: list[dict[str, list[int]]]) -> np.ndarray:
        """One batch of tokenized rows -> (len(rows), dim) embeddings."""
        self.require_token_input()
        if self.runner.shapes is None:
            return self._run(self._pad_to_longest(rows, self.sequence_multiple), None)
        by_bucket: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_bucket.setdefault(self._sequence_bucket(len(row["input_ids"])), []).append(i)
        parts: list[tuple[list[int], np.ndarray]] = []
        for sequence, indices in by_bucket.items():
            for shape, chunk in self._chunks_for_bucket(indices, sequence):
                padded = self.pad([rows[i] for i in chunk], shape.batch, shape.sequence)
                parts.append((chunk, self._run(padded, shape)[: len(chunk)]))
        return _scatter(len(rows), parts)

    def run_planned(self, rows: list[dict[str, list[int]]], batches: list[np.ndarray]) -> np.ndarray:
        """Tokenized rows in planned batches (row positions, ``plan_batches``) -> (len(rows), dim) in row order. A
        runner with parallel streams gets every batch at once; each batch is padded the same way either way."""
        if len(batches) > 1 and self.runner.shapes is None and isinstance(self.runner, ManyBatchRunner):
            padded = [self._pad_to_longest([rows[i] for i in batch], self.sequence_multiple) for batch in batches]
            outputs = self._run_many(padded, self.runner.run_batches)
            return _scatter(len(rows), list(zip(batches, outputs, strict=True)))
        return _scatter(len(rows), [(batch, self.run_tokenized([rows[i] for i in batch])) for batch in batches])

    def encode(self, sentences: Sequence[str], batch_size: int = 32, prompt_name: str | None = None) -> np.ndarray:
        """Embed sentences in length-sorted batches (as sentence-transformers does), original order out."""
        if isinstance(self.runner, TextRunner):  # strings in, as the app calls it; its tokenizer is inside
            return self.embed_texts(sentences, prompt_name)
        rows = self.tokenize(sentences, prompt_name)
        if not rows:
            return np.zeros((0, self.artifact.manifest.embedding_dim), dtype=np.float32)
        return self.run_planned(rows, plan_batches([len(row["input_ids"]) for row in rows], batch_size))

    def embed_texts(self, sentences: Sequence[str], prompt_name: str | None = None,
                    normalize: bool = True) -> np.ndarray:
        """A text runner's embeddings: the prompt prepended, then (``normalize``) the app-side normalisation the
        manifest names, as the app does before each call."""
        prompt = self.prompt(prompt_name)
        if not sentences:
            return np.zeros((0, self.artifact.manifest.embedding_dim), dtype=np.float32)
        texts = [prompt + sentence for sentence in sentences]
        return self._checked(lambda: [self.runner.embed_texts(texts, normalize=normalize)], [len(texts)])[0]


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row positions of each batch: longest first (little padding), stable, ``batch_size`` rows each. ``encode``,
    ``bench`` and every ``embed`` engine plan by this one rule, so their batches, and a dynamic int8 artifact's
    per-batch activation scales, are the same."""
    order = np.argsort([-n for n in lengths], kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _scatter(count: int, parts) -> np.ndarray:
    """Put (indices, embeddings) batches back in input order; the width is what the model really outputs."""
    width = parts[0][1].shape[1]
    result = np.zeros((count, width), dtype=np.float32)
    for index, embeddings in parts:
        result[index] = embeddings
    return result
