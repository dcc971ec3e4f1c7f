"""bench: the baseline and an artifact timed in their own processes, ratios and the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.bench import BenchConfig, bench, markdown_table, roofline_of
from pipelines.peers import flops_per_sentence

ROOT = Path(__file__).resolve().parent.parent


def test_bench_times_baseline_and_artifact(x86_artifact):
    config = BenchConfig(threads=2, throughput_sentences=64, latency_sentences=5, repeats=1)
    result = bench([Path(x86_artifact.folder)], config)
    baseline, row = result["rows"]
    assert baseline["throughput_ratio"] == 1.0 and baseline["label"].startswith("fp32 PyTorch")
    assert row["throughput_sps"] > 0 and row["latency_p50_ms"] > 0 and row["peak_rss_mb"] > 50
    assert row["throughput_ratio"] == row["throughput_sps"] / baseline["throughput_sps"]
    assert row["size_bytes"] == x86_artifact.manifest.to_json()["size_bytes"]
    assert row["baseline"]["throughput_sps"] == baseline["throughput_sps"]
    table = markdown_table(result)
    assert "threads: 2" in table and "x86 ONNX int8" in table


def test_flops_per_sentence_counts_projections_and_attention(spec):
    assert (spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers) == (384, 1536, 6)  # all-MiniLM-L6-v2
    tokens = 10
    projections = tokens * (4 * 384 * 384 + 2 * 384 * 1536)
    attention = 2 * tokens * tokens * 384
    assert flops_per_sentence(spec, tokens) == 2 * 6 * (projections + attention)


def test_roofline_sets_each_engines_rate_against_the_peak_of_its_precision(x86_artifact):
    fp32 = {"label": "fp32 PyTorch", "throughput_sps": 100.0, "compute": "fp32"}
    int8 = {"label": "x86 ONNX int8", "throughput_sps": 400.0, "compute": "int8"}
    result = roofline_of([fp32, int8], [x86_artifact.artifact], BenchConfig(throughput_sentences=64))
    assert fp32["gops"] == pytest.approx(result["flops_per_sentence_mean"] * 100 / 1e9) and fp32["gops"] > 0
    assert int8["gops"] == pytest.approx(4 * fp32["gops"])
    for row in (fp32, int8):
        peak = result["peak_gops"][row["compute"]]
        assert row["peak_fraction"] == (pytest.approx(row["gops"] / peak) if peak else None)


def test_a_worker_reports_its_own_peak_memory_not_its_parents():
    hog = bytearray(400 * 1024 * 1024)  # this process now peaks above 400 MB
    hog[::4096] = b"x" * len(hog[::4096])
    script = "from pipelines.bench import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert float(child.stdout) < 300, child.stdout  # numpy + the bench module, not the parent's 400 MB
