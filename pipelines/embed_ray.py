"""The Ray engine for `embed`: the shards of the plan, each read, embedded and written by an actor on Ray Data.

The driver holds the plan (one small record per shard) and the ledger's records: Ray tasks scan the input files,
and each actor reads its shard's rows from the input's place, embeds them as the local engine does (one
``encode`` call, the same planned batches) and writes the shard's file and ledger record itself, so neither the texts
nor the vectors pass through the driver. Input and output must be places every node reaches: an object store
(``s3://...``) or a shared folder. The job ships the artifact itself (a tar in Ray's object store), so workers need
no copy of it: each actor unpacks it once into its own temporary folder and keeps one ArtifactEncoder warm. Pinned
to Ray 2.60 (``map_batches`` with a callable class and ``concurrency``; the actor-pool API changed across releases).

On a small machine Ray Data needs CPU left for its own tasks: with 2 cores, 2 actors at 1 CPU each starved
them and the job hung. Each actor therefore asks for a fraction of a CPU, and ONNX Runtime inside it gets
the cores divided among the actors.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tarfile
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np

from core.cpu import usable_cores
from core.errors import ConfigError, ToolchainError, gist, require
from core.storage import Place
from pipelines.corpus import Fields, FileScan, Shard, scan_file
from pipelines.embed import ShardRecord, ShardWriter
from pipelines.package import safe_extract
from pipelines.runtime import ArtifactEncoder

ROOT = Path(__file__).resolve().parent.parent
CONNECT_SECONDS = 5
# The packages travel with a job; not the web runtime (600 MB), venvs, exports or tests.
CODE_EXCLUDES = [".venv*", "dist", "models", ".git", "**/__pycache__", "*.tar.gz", "**/node_modules", "tests",
                 ".*cache", ".hypothesis", "*.egg-info"]


def artifact_tar(artifact_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(artifact_dir, arcname="artifact")
    return buffer.getvalue()


class ShardActor:
    """One per Ray actor: the artifact unpacked once, its encoder kept warm for every shard."""

    def __init__(self, artifact: list, threads: int, writer: ShardWriter) -> None:
        ray = require("ray", "ray")
        self.folder = Path(tempfile.mkdtemp(prefix="embed-artifact-"))
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)  # also runs when the actor exits
        archive = self.folder / "artifact.tar"
        archive.write_bytes(ray.get(artifact[0]))
        safe_extract(archive, self.folder)
        self.encoder = ArtifactEncoder(self.folder / "artifact", threads=threads)
        self.writer = writer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [Shard(int(index), Place(str(file)), int(start), int(first), int(rows)) for index, file, start, first,
                  rows in zip(*(batch[name] for name in SHARD_COLUMNS), strict=True)]
        records = [self.writer.embed(shard, self.encoder) for shard in shards]
        return {name: np.array([getattr(record, name) for record in records]) for name in RECORD_COLUMNS}


SHARD_COLUMNS = ("index", "file", "start", "first_row", "rows")
RECORD_COLUMNS = tuple(field.name for field in dataclass_fields(ShardRecord))


@dataclass
class RayEngine:
    """Shards on a pool of actors; file scans as Ray tasks."""

    artifact: object  # the artifact's tar in the object store
    actors: int
    threads: int  # ONNX Runtime threads per actor
    actor_cpus: float

    def scan(self, files: Sequence[Place], fields: Fields, chunk_rows: int) -> Iterator[FileScan]:
        """One Ray task per file, on any node."""
        ray = require("ray", "ray")
        task = ray.remote(num_cpus=self.actor_cpus)(scan_file)
        pending = [task.remote(file, fields, chunk_rows) for file in files]
        with _toolchain_errors(ray):
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])

    def run(self, shards: Sequence[Shard], writer: ShardWriter) -> Iterator[ShardRecord]:
        """One dataset over every pending shard, so the actors start once; a record comes back per written shard."""
        ray = require("ray", "ray")
        if not shards:
            return
        items = [{"index": s.index, "file": s.file.uri, "start": s.start, "first_row": s.first_row, "rows": s.rows}
                 for s in shards]
        dataset = ray.data.from_items(items).map_batches(
            ShardActor, fn_constructor_kwargs={"artifact": [self.artifact], "threads": self.threads, "writer": writer},
            batch_size=1, concurrency=self.actors, num_cpus=self.actor_cpus, scheduling_strategy="SPREAD",
        )
        with _toolchain_errors(ray):
            for row in dataset.iter_rows():
                yield ShardRecord(int(row["index"]), int(row["rows"]), int(row["bytes"]), str(row["sha256"]))


@contextlib.contextmanager
def _toolchain_errors(ray) -> Iterator[None]:
    """A worker's own one-line error (a damaged shard, an unwritable output) reaches the user as itself; anything
    else Ray raises becomes one line."""
    try:
        yield
    except ray.exceptions.RayError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ToolchainError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise cause from None
        raise ToolchainError(f"the Ray job failed ({gist(exc)})") from None


def ray_engine(artifact_dir: Path, address: str | None, actors: int) -> RayEngine:
    """Start (or join, with ``address``) Ray; an engine that runs whole shards on it."""
    ray = require("ray", "ray")
    require("ray.data", "ray")
    cores = usable_cores()
    if address:  # a cluster: the code travels with the job; the artifact through the object store
        check_reachable(address)
        runtime_env = {"working_dir": str(ROOT), "excludes": CODE_EXCLUDES}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    # The cluster's CPUs (this machine's, on a local Ray) divided among the actors, half a core left to Ray Data's own
    # tasks; ONNX Runtime in each actor gets as many threads as its share.
    total = int(ray.cluster_resources().get("CPU", cores))
    return RayEngine(ray.put(artifact_tar(artifact_dir)), actors, max(total // actors, 1),
                     max(total - 0.5, 0.5) / actors)


def check_reachable(address: str) -> None:
    """One line at once for a head that does not answer (ray.init would retry it for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not host:port (the head's GCS port, 6379) or "
                          "ray://host:port (Ray Client, 10001)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at --ray-address {address} ({gist(exc)}); start it with "
                          "`ray start --head` or check the address") from None


def shutdown() -> None:
    require("ray", "ray").shutdown()
