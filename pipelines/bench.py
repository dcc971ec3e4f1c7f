"""Speed: each engine runs in its own subprocess (clean peak RSS, no shared thread pools), one after
the other in the same `bench` run, so ratios against the fp32 PyTorch model are like for like.

Workload: STS-B dev sentences sorted by length (as sentence-transformers batches them).
- throughput: batch 32 over ``throughput_sentences`` sentences, median of ``repeats`` passes;
- latency: batch 1 over ``latency_sentences`` sentences spread over the length range, p50/p95;
- fixed-shape artifacts also report batch-1 latency per sequence bucket.
Tokenization is inside every timing, as an app would see it, except where the runtime times itself
(``TimedInsideRunner``: the web artifact, timed inside the browser page on token ids).

Each worker imports only its own engine's stack (torch for the baseline, the format's runtime for an
artifact), so the peak memory a row reports is that engine's own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters.base import TextRunner, TimedInsideRunner
from core.cpu import compute_precision, cpu_isa, cpu_mismatch, cpu_name, peak_gops, usable_cores
from core.data import load_stsb
from core.errors import ArtifactError
from core.manifest import Artifact, Manifest, Speed, read_artifact
from core.model_files import read_tokenizer
from core.model_source import load_sentence_transformer, resolve_model
from core.reference import Reference
from core.schema import encode
from core.tokenizer_guard import encode_rows
from pipelines.peers import PEER_PRECISION, PEERS, build_peer, ensure_peer_venv, flops_per_sentence
from pipelines.report import record_results
from pipelines.runtime import ArtifactEncoder
from pipelines.verify import measure_parity


@dataclass(frozen=True)
class BenchConfig:
    threads: int = field(default_factory=usable_cores)
    batch_size: int = 32
    throughput_sentences: int = 1024
    latency_sentences: int = 100
    repeats: int = 3
    warmup: int = 1
    device: str = "cpu"  # "cuda": the fp32 PyTorch baseline runs on the same GPU as the artifact


def default_device() -> str:
    """cuda where both torch and onnxruntime can use a GPU, else cpu."""
    import onnxruntime as ort
    import torch

    has_gpu = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    return "cuda" if has_gpu else "cpu"


def workload(config: BenchConfig) -> tuple[list[str], list[str]]:
    sentences = load_stsb("dev").unique_sentences()
    throughput = sorted(sentences[: config.throughput_sentences], key=len, reverse=True)
    step = max(1, len(sentences) // config.latency_sentences)
    latency = sentences[::step][: config.latency_sentences]
    return throughput, latency


def time_engine(encode, config: BenchConfig) -> dict:
    throughput_set, latency_set = workload(config)
    for _ in range(config.warmup):
        encode(throughput_set[: config.batch_size * 2], config.batch_size)
        encode(latency_set[:5], 1)
    passes = []
    for _ in range(config.repeats):
        started = time.perf_counter()
        encode(throughput_set, config.batch_size)
        passes.append(time.perf_counter() - started)
    latencies = []
    for sentence in latency_set:
        started = time.perf_counter()
        encode([sentence], 1)
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "throughput_sps": len(throughput_set) / float(np.median(passes)),
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
    }


def time_inside_runtime(encoder, config: BenchConfig) -> dict:
    """For runners that time themselves inside their runtime (a browser page: a protocol round trip per call would
    be most of a batch-1 figure). Tokenization is outside these timings: an app tokenizes in its own language."""
    throughput_set, latency_set = workload(config)
    batches = []
    for start in range(0, len(throughput_set), config.batch_size):
        rows = encoder.tokenize(throughput_set[start:start + config.batch_size])
        batches.append(encoder.pad(rows, len(rows), max(len(r["input_ids"]) for r in rows)))
    per_batch = np.asarray(encoder.runner.latency_ms(batches, config.repeats)).reshape(config.repeats, len(batches))
    singles = [encoder.pad([row], 1, len(row["input_ids"])) for row in encoder.tokenize(latency_set)]
    latencies = encoder.runner.latency_ms(singles, 1)
    return {
        "throughput_sps": len(throughput_set) / (float(np.median(per_batch.sum(axis=1))) / 1000),
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "timed": "inside the runtime, tokenization excluded",
    }


def _bucket_latency(encoder, config: BenchConfig) -> dict[str, float]:
    """Batch-1 latency of each fixed sequence bucket (a sentence padded to it)."""
    out = {}
    row = encoder.tokenize(["A man is playing a guitar."])
    for shape in sorted(encoder.runner.shapes, key=lambda s: (s.batch, s.sequence)):
        if shape.batch != 1:
            continue
        padded = encoder.pad(row, 1, shape.sequence)
        encoder.runner.run(padded, shape)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            encoder.runner.run(padded, shape)
            times.append((time.perf_counter() - started) * 1000)
        out[str(shape.sequence)] = float(np.median(times))
    return out


def artifact_label(manifest: Manifest) -> str:
    pca = f" PCA→{manifest.embedding_dim}d" if manifest.pca else ""
    isa = f" (--isa {manifest.isa.class_})" if manifest.isa else ""
    return f"{manifest.target} {manifest.artifact}{pca}{isa}"


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux keeps getrusage's ru_maxrss across exec, so a worker started by a
    bench process that holds the reference embeddings would report that process's peak; VmHWM belongs to
    the worker's own address space."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        status = []
    for line in status:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(job: dict) -> dict:
    """Runs inside the subprocess."""
    config = BenchConfig(**job["config"])
    result: dict = {"engine": job["engine"]}
    if job["engine"] == "torch":
        import torch  # only this engine's process loads torch

        torch.set_num_threads(config.threads)
        source = resolve_model(job["model"])
        model = load_sentence_transformer(source).to(config.device)
        result.update(time_engine(lambda s, b: model.encode(s, batch_size=b), config))
        if config.device == "cuda":
            result["gpu"] = torch.cuda.get_device_name(0)
        result["label"] = "fp32 PyTorch (sentence-transformers)"
        result["compute"] = "fp32"
        result["size_bytes"] = sum(p.stat().st_size for p in source.path.glob("*.safetensors"))
    elif job["engine"] == "peer":
        model, label, size = build_peer(job["peer"], job["model_path"], config.threads)
        result.update(time_engine(lambda s, b: model.encode(s, batch_size=b), config))
        np.save(job["embeddings_out"], model.encode(load_stsb("dev").unique_sentences(), batch_size=32))
        result.update(label=label, size_bytes=size, compute=compute_precision(PEER_PRECISION[job["peer"]]))
    else:
        encoder = ArtifactEncoder(Path(job["artifact"]), threads=config.threads)
        if encoder.emulated:  # timing a stand-in would mislead: report why there is no figure instead
            return {**result, "skipped": f"{encoder.runtime_name}: no speed figure on this OS"}
        timed_inside = isinstance(encoder.runner, TimedInsideRunner)
        result.update(time_inside_runtime(encoder, config) if timed_inside else time_engine(encoder.encode, config))
        manifest = encoder.artifact.manifest
        result["label"] = artifact_label(manifest)
        result["runtime"] = encoder.runtime_name
        result["size_bytes"] = manifest.size_bytes
        result["compute"] = compute_precision(manifest.precision)
        if encoder.runner.shapes and not isinstance(encoder.runner, TextRunner):  # a text runner has no buckets
            result["bucket_latency_ms"] = _bucket_latency(encoder, config)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_in_subprocess(job: dict, python: str = sys.executable) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["config"]["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [python, "-m", "pipelines.bench", json.dumps(job)],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    marker = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not marker:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench worker for {job.get('artifact') or job['engine']} failed: {tail}")
    return json.loads(marker[-1][len("BENCH_RESULT ") :])


def _peer_rows(model: str, config: BenchConfig, progress) -> list[dict]:
    """Every peer in its own environment and process; parity is measured here like ours (STS-B dev, vs fp32).
    A peer that fails to build is a row saying so, not the end of the run."""
    python = ensure_peer_venv(progress)
    source = resolve_model(model)
    reference = Reference(load_sentence_transformer(source), source)
    rows = []
    for name in PEERS:
        progress(f"peer {name} (own venv)")
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "peer_dev.npy"
            job = {"engine": "peer", "peer": name, "model_path": str(source.path), "embeddings_out": str(out),
                   "config": asdict(config)}
            try:
                row = run_in_subprocess(job, python=str(python))
            except RuntimeError as exc:
                rows.append({"engine": "peer", "path": f"peer {name}", "skipped": str(exc)})
                continue
            embeddings = np.load(out, allow_pickle=False)
        row["parity"] = encode(measure_parity(lambda sentences, e=embeddings: e, reference).rounded())
        rows.append(row)
    return rows


def roofline_of(rows: list[dict], artifacts: list[Artifact], config: BenchConfig) -> dict:
    """Achieved GOP/s of each engine on the throughput workload, against this CPU's peak in the precision
    the engine computes in."""
    artifact = artifacts[0]
    tokenizer = read_tokenizer(artifact.tokenizer_path, ArtifactError, "the artifact is damaged: export it again")
    sentences, _ = workload(config)
    encoded = encode_rows(tokenizer, sentences, ArtifactError, f"{artifact.folder}: its tokenizer failed on the texts")
    total = sum(flops_per_sentence(artifact.manifest.graph, len(ids["input_ids"])) for ids in encoded)
    peak = peak_gops()
    for row in rows:
        row["gops"] = total / len(sentences) * row["throughput_sps"] / 1e9
        row_peak = peak["peak_gops"].get(row.get("compute", "fp32"))
        row["peak_fraction"] = row["gops"] / row_peak if row_peak else None
    per_cycle = ", ".join(f"{p} {n}" for p, n in peak["ops_per_cycle_per_core"].items())
    return {**peak, "flops_per_sentence_mean": total / len(sentences),
            "assumptions": "FLOPs = 2 x MACs of the 6 projections per layer and the two attention products, "
                           f"no padding; peak = cores x max cpu MHz x ops/cycle/core in the precision the engine "
                           f"computes in ({per_cycle}; core.cpu.ops_per_cycle)"}


def cpu_notes(artifacts: list[Artifact], strict: bool = False) -> dict[str, str]:
    """Artifacts built for another CPU class than this one; ArtifactError under ``strict``."""
    notes = {}
    for artifact in artifacts:
        note = cpu_mismatch(artifact.manifest.isa_class)
        if note and strict:
            raise ArtifactError(f"{artifact.folder}: {note}")
        if note:
            notes[str(artifact.folder)] = note
    return notes


def bench(folders: list[Path], config: BenchConfig, progress=lambda msg: None, peers: bool = False,
          strict: bool = False) -> dict:
    """Per source model: its fp32 PyTorch baseline, then the peers (optional), then its artifacts. Every row's
    ratios are against its own model's baseline, measured in the same run; with several models (a student beside
    its teacher) each label names its model."""
    artifacts = [read_artifact(folder) for folder in folders]  # read once; workers read their own
    notes = cpu_notes(artifacts, strict)
    groups: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        groups.setdefault(artifact.manifest.model.source, []).append(artifact)
    rows, skipped, flops = [], [], {}
    roofline = None
    for model, group in groups.items():
        name = group[0].manifest.model.name
        group_rows = _bench_model(model, group, config, progress, peers)
        skipped += [row for row in group_rows if "skipped" in row]
        group_rows = [row for row in group_rows if "skipped" not in row]
        if peers:
            roofline = roofline_of(group_rows, group, config)
            flops[name] = roofline["flops_per_sentence_mean"]
        if len(groups) > 1:
            for row in group_rows:
                row["label"] = f"{name}: {row['label']}"
        rows += group_rows
    if roofline:
        roofline["flops_per_sentence_mean"] = flops
    return {"config": asdict(config), "cpu": f"{cpu_name()}, ISA class {cpu_isa()}", "rows": rows,
            "skipped": skipped, "roofline": roofline, "cpu_notes": notes}


def _bench_model(model: str, artifacts: list[Artifact], config: BenchConfig, progress, peers: bool) -> list[dict]:
    """One source model's baseline, peers and artifacts; each timed row carries its ratios and its baseline."""
    progress(f"fp32 PyTorch baseline of {model}")
    baseline = run_in_subprocess({"engine": "torch", "model": model, "config": asdict(config)})
    rows = [baseline]
    if peers:
        rows += _peer_rows(model, config, progress)
    for artifact in artifacts:
        progress(str(artifact.folder))
        row = run_in_subprocess({"engine": "artifact", "artifact": str(artifact.folder), "config": asdict(config)})
        row["path"] = str(artifact.folder)
        row["parity"] = encode(artifact.manifest.parity)
        rows.append(row)
    timed = [row for row in rows if "skipped" not in row]
    sources = [r["parity"]["spearman_source"] for r in timed if (r.get("parity") or {}).get("spearman_source")]
    if sources:  # the baseline is the reference itself
        baseline["parity"] = {"spearman": sources[0], "mean_cosine": 1.0, "min_cosine": 1.0}
    summary = {key: baseline.get(key) for key in ("label", "throughput_sps", "latency_p50_ms", "size_bytes")}
    for row in timed:
        row["throughput_ratio"] = row["throughput_sps"] / baseline["throughput_sps"]
        row["latency_p50_ratio"] = row["latency_p50_ms"] / baseline["latency_p50_ms"]
        if row is not baseline:
            row["baseline"] = summary
    return rows


def record_speed(result: dict, table: str) -> None:
    """Each timed artifact's row into its manifest (and report), with the run's baseline, settings and CPU."""
    for row in (r for r in result["rows"] if "path" in r and "skipped" not in r):
        folder = Path(row["path"])
        speed = Speed(label=row["label"], runtime=row["runtime"], throughput_sps=row["throughput_sps"],
                      latency_p50_ms=row["latency_p50_ms"], latency_p95_ms=row["latency_p95_ms"],
                      throughput_ratio=row["throughput_ratio"], latency_p50_ratio=row["latency_p50_ratio"],
                      baseline_size_bytes=row["baseline"]["size_bytes"] or 0, batch_size=result["config"]["batch_size"],
                      threads=result["config"]["threads"], cpu=result["cpu"], table_md=table)
        record_results(read_artifact(folder).with_results(speed=speed))


def markdown_table(result: dict) -> str:
    config = result["config"]
    gpu = f"GPU: {result['rows'][0]['gpu']} (baseline and artifacts on it); " if result["rows"][0].get("gpu") else ""
    lines = [
        f"CPU: {result['cpu']}; {gpu}threads: {config['threads']}; throughput at batch {config['batch_size']} over "
        f"{config['throughput_sentences']} length-sorted STS-B dev sentences, median of {config['repeats']}; "
        f"latency at batch 1 over {config['latency_sentences']} sentences.",
        "",
        f"| engine | size MB | batch-{config['batch_size']} sent/s | × fp32 | b1 p50 ms | b1 p95 ms | × fp32 p50 "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    roofline = result.get("roofline")
    if roofline:
        lines[-2] = lines[-2] + " STS-B dev | mean cos | min cos | GOP/s | % of peak |"
        lines[-1] = lines[-1] + "---|---|---|---|---|"
    for row in result["rows"]:
        size = f"{row['size_bytes'] / 1e6:.1f}" if row.get("size_bytes") else "–"
        line = (
            f"| {row['label']} | {size} | {row['throughput_sps']:.0f} | {row['throughput_ratio']:.2f} | "
            f"{row['latency_p50_ms']:.2f} | {row['latency_p95_ms']:.2f} | {row['latency_p50_ratio']:.2f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
        if roofline:
            parity = row.get("parity") or {}
            sts = parity.get("spearman", parity.get("spearman_source"))
            fraction = row.get("peak_fraction")
            if sts is not None and fraction:
                line += (f" {sts:.2f} | {parity.get('mean_cosine', 1.0):.4f} | {parity.get('min_cosine', 1.0):.4f} | "
                         f"{row['gops']:.0f} | {100 * fraction:.1f}% {row.get('compute', 'fp32')} |")
            else:
                line += " – | – | – | – | – |"
        lines.append(line)
    if roofline:
        peaks = ", ".join(f"{p} {g:.0f}" for p, g in roofline["peak_gops"].items())
        lines.append(f"\nPeaks: {peaks} GOP/s ({roofline['cores']} cores × {roofline['clock_ghz']} GHz × ops/cycle); "
                     + ", ".join(f"{flops / 1e6:.0f} MFLOP per sentence of {name}" for name, flops in
                                 roofline["flops_per_sentence_mean"].items()) + " on average. "
                     f"{roofline['assumptions']}.")
    for row in result["rows"]:
        if row.get("timed"):
            lines.append(f"\n{row['label']}: timed {row['timed']} ({row.get('runtime', '')})")
    for path, note in result.get("cpu_notes", {}).items():
        lines.append(f"\nnote: {path}: {note}")
    for row in result.get("skipped", []):
        lines.append(f"\n{row['path']}: not timed ({row['skipped']})")
    buckets = [r for r in result["rows"] if r.get("bucket_latency_ms")]
    for row in buckets:
        per = ", ".join(f"{seq} tokens: {ms:.2f} ms" for seq, ms in row["bucket_latency_ms"].items())
        lines.append(f"\n{row['label']} batch-1 latency per bucket: {per}")
    return "\n".join(lines)


if __name__ == "__main__":
    print("BENCH_RESULT " + json.dumps(run_worker(json.loads(sys.argv[1]))), flush=True)
