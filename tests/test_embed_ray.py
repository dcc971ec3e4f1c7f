"""`embed --engine ray`: on a local Ray with input and output on an S3-compatible server, and on a Ray cluster of
three nodes on this machine (a head and two workers, each with its own raylet and object store, joined by address as
a real cluster is) with a worker node killed mid-job, and with the driver killed and the job run again. Each ends with
every row once and the local engine's vectors, row for row. The tiny BERT's x86 artifact: what is tested is the job,
not the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.storage import Place
from pipelines.corpus import Fields
from pipelines.embed import LEDGER, LocalEngine, embed_corpus, plan_input, read_vectors
from pipelines.runtime import ArtifactEncoder

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

ROOT = Path(__file__).resolve().parent.parent
FILES, ROWS_PER_FILE, CHUNK = 2, 2000, 100  # 40 shards over two input files


@pytest.fixture(scope="module")
def corpus(dev_sentences, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-corpus")
    for number in range(FILES):
        rows = (f"{number * ROWS_PER_FILE + i}: {dev_sentences[i % len(dev_sentences)]}" for i in range(ROWS_PER_FILE))
        (folder / f"shard-{number}.txt").write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def expected(tiny_x86, corpus, tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """The local engine's ids and vectors for the same input."""
    encoder = ArtifactEncoder(tiny_x86[1])
    engine = LocalEngine(encoder)
    plan = plan_input(Place.of(corpus), Fields(), CHUNK, engine)
    output = Place.of(tmp_path_factory.mktemp("cluster-local") / "vectors")
    embed_corpus(plan, output, engine, encoder.artifact.manifest, CHUNK)
    ids, vectors, _ = read_vectors(output)
    return ids, vectors


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU for work (it holds the driver's objects) and two worker nodes of 2 logical CPUs. Each of
    the two actors asks for 1.75 CPUs (the cluster's 4, less half a core for Ray Data, divided by two), so they run
    on different nodes and no node has room for a third: a killed node's work must go to the actor that is left.
    The test that kills a node runs last."""
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def _start(artifact: Path, corpus: Path | str, output: Path | str, address: str | None) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "cli.py"), "embed", str(artifact), "--input", str(corpus), "--output",
           str(output), "--chunk-rows", str(CHUNK), "--engine", "ray", "--actors", "2",
           *(["--ray-address", address] if address else [])]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(output: Path) -> dict[str, int]:
    """Ledger record -> its file's modification time."""
    return {path.name: path.stat().st_mtime_ns for path in (output / LEDGER).glob("*.json")}


def _settled_records(output: Path) -> dict[str, int]:
    """The ledger once nothing has been added for 2 s: an actor may finish the shard it held as its job ends."""
    records, since = _records(output), time.time()
    while time.time() - since < 2:
        time.sleep(0.1)
        if (now := _records(output)) != records:
            records, since = now, time.time()
    return records


def _wait_for_shards(output: Path, job: subprocess.Popen, count: int) -> None:
    deadline = time.time() + 300
    while len(_records(output)) < count:
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.time() < deadline, "no shard was written in 300 s"
        time.sleep(0.05)


def _assert_complete(output: Path | str, expected) -> None:
    ids, vectors, _ = read_vectors(output)
    assert ids == expected[0]  # every row once, in order
    np.testing.assert_allclose(vectors, expected[1], atol=1e-6)  # the local engine's vectors, row for row


def test_local_ray_reads_and_writes_the_object_store(tiny_x86, corpus, expected, object_store):
    """Each actor reads its shards from the store and writes them there; the driver never holds a text or a vector.
    Runs before the cluster starts (a local Ray of its own)."""
    uri, store = object_store
    for file in sorted(corpus.iterdir()):  # the same files under the same names: the same plan
        with store.open_output_stream(f"bucket/ray-in/{file.name}") as stream:
            stream.write(file.read_bytes())
    job = _start(tiny_x86[1], uri("ray-in"), uri("ray-out"), None)
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-2000:]
    _assert_complete(uri("ray-out"), expected)


def test_a_killed_driver_resumes_without_recomputing_finished_shards(cluster, tiny_x86, corpus, expected, tmp_path):
    head, _ = cluster
    output = tmp_path / "vectors"
    job = _start(tiny_x86[1], corpus, output, head.address)
    _wait_for_shards(output, job, 2)
    job.kill()  # the driver, as a lost login node or an OOM kill would; Ray ends the job's actors with it
    job.communicate()
    finished = _settled_records(output)
    assert len(finished) < FILES * ROWS_PER_FILE // CHUNK, "the job ended before the driver was killed"
    rerun = _start(tiny_x86[1], corpus, output, head.address)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-2000:]
    rows_before = sum(json.loads((output / LEDGER / name).read_text())["rows"] for name in finished)
    assert f"({FILES * ROWS_PER_FILE - rows_before} embedded by this run" in stdout, stdout
    assert all(_records(output)[name] == mtime for name, mtime in finished.items())  # not written again
    _assert_complete(output, expected)
    assert len(_records(output)) == FILES * ROWS_PER_FILE // CHUNK


def test_a_worker_node_killed_mid_job(cluster, tiny_x86, corpus, expected, tmp_path):
    head, workers = cluster
    output = tmp_path / "vectors"
    job = _start(tiny_x86[1], corpus, output, head.address)
    _wait_for_shards(output, job, 2)
    head.remove_node(workers[0], allow_graceful=False)  # its raylet, object store and actor die at once
    assert len(_records(output)) < FILES * ROWS_PER_FILE // CHUNK, "the job ended before the node was killed"
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-2000:]
    _assert_complete(output, expected)
    assert len(_records(output)) == FILES * ROWS_PER_FILE // CHUNK
