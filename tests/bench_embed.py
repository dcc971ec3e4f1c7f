"""`make bench-embed`, corpus scale: synthetic corpora (STS-B sentences with their row numbers, generated here, never
stored in the repository) embedded by the local engine and by Ray on a three-node cluster on this machine (a head
with no CPU for work and two worker nodes, each with its own raylet and object store).

For each corpus size and engine: sentences/s, wall time with start-up, the driver's peak RSS and the largest Ray
worker's peak RSS (VmHWM, read from /proc while the job runs); every output is then checked to hold every row once,
ids in order. Writes scale.json and scale.md to the output folder and prints the table.

    python -m tests.bench_embed ARTIFACT OUT [--rows 1000000 --rows 10000000] [--engine local --engine ray]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import click
import pyarrow.parquet as pq

from core.cpu import cpu_flags, cpu_name
from core.data import load_stsb
from pipelines.embed import JOB, LEDGER, shard_name
from tests.peak import measured_cli, vm_hwm_kb

ROOT = Path(__file__).resolve().parent.parent
FILE_ROWS = 1_000_000  # rows per input file: a corpus arrives as shards
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
RATE = re.compile(r"\((\d+) embedded by this run in ([\d.]+) s")


def write_corpus(folder: Path, rows: int) -> Path:
    """``rows`` lines "<row>: <STS-B sentence>" in files of FILE_ROWS rows; reused when already there."""
    if (folder / "complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sentences = load_stsb("train").unique_sentences() + load_stsb("dev").unique_sentences()
    for start in range(0, rows, FILE_ROWS):
        lines = (f"{row}: {sentences[row % len(sentences)]}\n" for row in range(start, min(start + FILE_ROWS, rows)))
        (folder / f"shard-{start // FILE_ROWS:05d}.txt").write_text("".join(lines), encoding="utf-8")
    (folder / "complete").write_text(str(rows))
    return folder


class WorkerPeaks:
    """The largest VmHWM of any Ray worker process ("ray::...") seen while it runs."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    command = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if command.startswith(b"ray::"):
                    self.peak_kb = max(self.peak_kb, vm_hwm_kb(proc.name) or 0)


def run_embed(artifact: Path, corpus: Path, output: Path, engine: str, address: str | None) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    peak_file = output.with_name(f"{output.name}.peak-kb")
    args = ["embed", str(artifact), "--input", str(corpus), "--output", str(output), "--engine", "ray" if address
            else "local", *(["--ray-address", address, "--actors", "2"] if address else [])]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    with WorkerPeaks() as workers:
        result = subprocess.run(measured_cli(peak_file, args), cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise click.ClickException(f"{engine} run failed: {result.stderr[-2000:]}")
    embedded, seconds = RATE.search(result.stdout).groups()
    return {"engine": engine, "rows": int(embedded), "sentences_per_second": round(int(embedded) / float(seconds), 1),
            "wall_s": round(wall, 1), "driver_peak_mb": round(int(peak_file.read_text()) / 1024, 1),
            "worker_peak_mb": round(workers.peak_kb / 1024, 1) if address else None}


def check_output(output: Path, rows: int) -> str:
    """Every row once, ids in order, and the ledger's counts: read an id column at a time."""
    job = json.loads((output / JOB).read_text())
    recorded = sum(json.loads(path.read_text())["rows"] for path in (output / LEDGER).glob("*.json"))
    expected = 0
    for index in range(job["shards"]):
        ids = pq.read_table(output / shard_name(index), columns=["id"]).column("id").to_pylist()
        if ids != [str(row) for row in range(expected, expected + len(ids))]:
            return f"ids out of order in {shard_name(index)}"
        expected += len(ids)
    return "ok" if expected == recorded == rows == job["rows"] else f"{expected} rows, ledger {recorded}, of {rows}"


@click.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--rows", "sizes", type=int, multiple=True, default=(1_000_000, 10_000_000), show_default=True)
@click.option("--engine", "engines", type=click.Choice(["local", "ray"]), multiple=True, default=("local", "ray"),
              show_default=True)
def main(artifact: Path, out: Path, sizes: tuple[int, ...], engines: tuple[str, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cluster = None
    if "ray" in engines:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
    rows_out = []
    try:
        for size in sizes:
            corpus = write_corpus(out / f"corpus-{size}", size)
            for engine in engines:
                output = out / f"vectors-{engine}-{size}"
                row = run_embed(artifact, corpus, output, engine, cluster.address if engine == "ray" else None)
                row["check"] = check_output(output, size)
                rows_out.append(row)
                click.echo(json.dumps(row))
                shutil.rmtree(output)  # 10M rows of vectors: gigabytes
    finally:
        if cluster is not None:
            cluster.shutdown()
    flags = " ".join(flag for flag in ISA_FLAGS if flag in cpu_flags())
    table = ["| engine | rows | sentences/s | wall s (with start-up) | driver peak RSS MB | worker peak RSS MB "
             "| check |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['engine']} | {r['rows']:,} | {r['sentences_per_second']:,.0f} | {r['wall_s']:,.0f} | "
              f"{r['driver_peak_mb']:,.0f} | {r['worker_peak_mb'] or '-'} | {r['check']} |" for r in rows_out]
    machine = f"{cpu_name()}, {os.cpu_count()} cores, ISA flags: {flags}"
    summary = {"artifact": str(artifact), "machine": machine, "rows": rows_out}
    (out / "scale.json").write_text(json.dumps(summary, indent=2))
    (out / "scale.md").write_text(f"{artifact}; {machine}\n\n" + "\n".join(table) + "\n")
    click.echo(f"{machine}\n" + "\n".join(table))


if __name__ == "__main__":
    main()
