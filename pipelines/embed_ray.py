"""The Ray engine for `embed`: the same planned batches, run by a pool of actors on Ray Data.

The job ships the artifact itself (a tar in Ray's object store), so workers need no shared disk: each actor
unpacks it once into its own temporary folder and keeps one ArtifactEncoder warm. Pinned to Ray 2.60
(``map_batches`` with a callable class and ``concurrency``; the actor-pool API changed across releases).

On a small machine Ray Data needs CPU left for its own tasks: with 2 cores, 2 actors at 1 CPU each starved
them and the job hung. Each actor therefore asks for a fraction of a CPU, and ONNX Runtime inside it gets
the cores divided among the actors.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from core.cpu import usable_cores
from core.errors import ToolchainError, gist, require
from pipelines.embed import Chunk, Engine
from pipelines.package import safe_extract
from pipelines.runtime import ArtifactEncoder

ROOT = Path(__file__).resolve().parent.parent
CODE_EXCLUDES = [".venv*", "dist", "models", ".git", "**/__pycache__", "*.tar.gz"]


def artifact_tar(artifact_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(artifact_dir, arcname="artifact")
    return buffer.getvalue()


class ArtifactActor:
    """One per Ray actor: the artifact unpacked once, its encoder kept warm for every batch."""

    def __init__(self, artifact: list, threads: int, batch_size: int) -> None:
        ray = require("ray", "ray")
        self.folder = Path(tempfile.mkdtemp(prefix="embed-artifact-"))
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)  # also runs when the actor exits
        archive = self.folder / "artifact.tar"
        archive.write_bytes(ray.get(artifact[0]))
        safe_extract(archive, self.folder)
        self.encoder = ArtifactEncoder(self.folder / "artifact", threads=threads)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks, rows, vectors = [], [], []
        for index, texts in zip(batch["chunk"], batch["texts"], strict=True):
            chunks.append(np.full(len(texts), index))
            rows.append(np.arange(len(texts)))
            vectors.append(self.encoder.encode(list(texts), self.batch_size))  # as the local engine runs a chunk
        return {"chunk": np.concatenate(chunks), "row": np.concatenate(rows), "vector": np.concatenate(vectors)}


def ray_engine(artifact_dir: Path, address: str | None, actors: int, batch_size: int) -> Engine:
    """Start (or join, with ``address``) Ray and return an engine that runs whole chunks on it, each run by the actor
    as the local engine runs it (one ``encode`` call: nothing is tokenized on the driver)."""
    ray = require("ray", "ray")
    require("ray.data", "ray")
    cores = usable_cores()
    if address:  # a cluster: the code travels with the job; the artifact through the object store
        runtime_env = {"working_dir": str(ROOT), "excludes": CODE_EXCLUDES}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    artifact = ray.put(artifact_tar(artifact_dir))
    per_actor_cpus = max(cores - 0.5, 0.5) / actors  # leave half a core to Ray Data's own tasks
    threads = max(cores // actors, 1)

    def run(chunks: Iterable[Chunk]) -> Iterator[tuple[int, np.ndarray]]:
        """One dataset over every pending chunk, so the actors start once; a chunk is yielded when its rows come
        back."""
        work = {chunk.index: chunk for chunk in chunks}
        items = [{"chunk": chunk.index, "texts": chunk.texts} for chunk in work.values()]
        if not items:
            return
        dataset = ray.data.from_items(items).map_batches(
            ArtifactActor, fn_constructor_kwargs={"artifact": [artifact], "threads": threads, "batch_size": batch_size},
            batch_size=1, concurrency=actors, num_cpus=per_actor_cpus,
        )
        vectors: dict[int, np.ndarray] = {}
        left = {index: len(chunk.texts) for index, chunk in work.items()}
        try:
            for part in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index in np.unique(part["chunk"]):
                    mine = part["chunk"] == index
                    if index not in vectors:
                        vectors[index] = np.zeros((left[index], part["vector"].shape[1]), dtype=np.float32)
                    vectors[index][part["row"][mine]] = part["vector"][mine]
                    left[index] -= int(mine.sum())
                    if left[index] == 0:
                        yield int(index), vectors.pop(index)
        except ray.exceptions.RayError as exc:
            raise ToolchainError(f"the Ray job failed ({gist(exc)})") from None

    return run


def shutdown() -> None:
    require("ray", "ray").shutdown()
