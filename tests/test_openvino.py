"""x86-openvino: the bundled model as an OpenVINO IR, verified in OpenVINO itself."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converters.openvino import COMPILED_MODELS, CompileCandidate, OpenVinoFacts
from converters.openvino.runner import OpenVinoRunner, compile_properties, compiles_safely
from core.config import BuildConfig
from core.cpu import cpu_flags
from core.errors import ArtifactError, ConfigError
from core.metrics import row_cosines
from pipelines.export import export
from pipelines.runtime import ArtifactEncoder

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def openvino_artifact(tmp_path_factory):
    (result,) = export(BuildConfig(target="x86-openvino", out=str(tmp_path_factory.mktemp("dist"))))
    assert result.ok, result.error
    return result


def test_ir_passes_its_gate_in_openvino(openvino_artifact):
    manifest = openvino_artifact.manifest.to_json()
    assert manifest["file"] == "model.xml" and {"model.xml", "model.bin"} <= set(manifest["files"])
    parity = manifest["parity"]
    assert parity["sentences"] > 2800 and not parity["emulated"] and "openvino" in parity["runtime"]
    assert parity["mean_cosine"] >= 0.995 and parity["min_cosine"] >= 0.98 and parity["spearman_drop"] <= 0.3
    expected = "bf16" if "avx512_bf16" in cpu_flags() else "f32"
    assert f"({expected})" in parity["runtime"]  # what OpenVINO computed in, on this CPU
    assert 0.45 * 90.9e6 <= manifest["size_bytes"] <= 0.55 * 90.9e6  # .xml + .bin, fp16 weights: half of fp32


def test_running_openvino_needs_no_torch(openvino_artifact, run_without_build_stack):
    run_without_build_stack(openvino_artifact.folder, 384)


def test_padding_to_fewer_shapes_leaves_embeddings_unchanged(openvino_artifact):
    sentences = ["A man plays a guitar.", "", "ŉ", "Three dogs run through the snow in a park " * 5]
    encoder = ArtifactEncoder(openvino_artifact.folder, threads=1)
    assert encoder.sequence_multiple == 16
    padded = encoder.encode(sentences)
    encoder.sequence_multiple = 1
    exact = encoder.encode(sentences)
    assert row_cosines(padded, exact).min() > 0.999  # bf16 rounding differs a little between shapes


def test_many_batches_run_in_parallel_streams_as_one_at_a_time(openvino_artifact, dev_sentences, monkeypatch):
    """encode() hands every batch to the throughput-compiled model at once; each sentence comes out as the
    latency model embeds it alone, in input order."""
    encoder = ArtifactEncoder(openvino_artifact.folder, threads=2)
    sentences = dev_sentences[:200] + ["", "ŉ"]
    handed: list[int] = []
    run_batches = encoder.runner.run_batches
    monkeypatch.setattr(encoder.runner, "run_batches",
                        lambda batches: handed.append(len(batches)) or run_batches(batches))
    together = encoder.encode(sentences, batch_size=16)
    assert handed == [-(-len(sentences) // 16)]
    one_at_a_time = np.concatenate([encoder.encode([s], batch_size=1) for s in sentences[:40] + sentences[-2:]])
    assert row_cosines(together[:40], one_at_a_time[:40]).min() > 0.999
    assert row_cosines(together[-2:], one_at_a_time[-2:]).min() > 0.999


def test_a_model_openvino_cannot_compile_for_streams_runs_one_batch_at_a_time(tmp_path):
    """The probe compiles in a child: a child that dies or fails means no parallel streams (a tiny Qwen3 in
    tests/test_families.py kills OpenVINO 2026.4 with SIGFPE; here, a file that is no model)."""
    (tmp_path / "model.xml").write_text("<net/>")
    assert not compiles_safely(str(tmp_path / "model.xml"), '{"PERFORMANCE_HINT": "THROUGHPUT"}')


def test_export_records_the_fastest_compile_properties_and_the_runner_uses_them(openvino_artifact, dev_sentences):
    choice = openvino_artifact.manifest.conversion_as(OpenVinoFacts).compile
    measured = choice.measured
    assert set(measured) == {"default", "snippets off"}
    assert all(m.batch_32_sentences_per_s > 0 and m.batch_1_p50_ms > 0 for m in measured.values())
    assert choice.throughput.candidate == max(measured, key=lambda name: measured[name].batch_32_sentences_per_s)
    assert choice.latency.candidate == min(measured, key=lambda name: measured[name].batch_1_p50_ms)
    encoder = ArtifactEncoder(openvino_artifact.folder, threads=2)
    assert encoder.runner.properties == choice.properties()
    # Every candidate computes the same embeddings: only speed differs.
    model_file = Path(openvino_artifact.folder) / "model.xml"
    batches = [encoder._pad_to_longest(encoder.tokenize(dev_sentences[i : i + 16])) for i in range(0, 64, 16)]
    runners = (OpenVinoRunner(model_file, 2, "bf16", dict.fromkeys(COMPILED_MODELS, asked))
               for asked in ({}, {"SNIPPETS_MODE": "DISABLE"}))
    default, snippets_off = (np.concatenate(runner.run_batches(batches)) for runner in runners)
    assert row_cosines(default, snippets_off).min() > 0.999


@pytest.mark.parametrize("asked", [{"CACHE_DIR": "/tmp/elsewhere"}, {"SNIPPETS_MODE": "SOMETHING"},
                                   {"SNIPPETS_MODE": ["DISABLE"]}, "DISABLE"])
def test_a_manifest_asking_openvino_for_other_properties_is_refused(openvino_artifact, asked):
    chosen = {"latency": {"candidate": "default", "properties": {}},
              "throughput": {"candidate": "asked", "properties": asked}}
    asking = replace(openvino_artifact.manifest, conversion={"compile": chosen})
    with pytest.raises(ArtifactError, match=r"compile\.throughput"):
        compile_properties(asking)
    built_before_tuning = replace(openvino_artifact.manifest, conversion={})
    assert compile_properties(built_before_tuning) == {"latency": {}, "throughput": {}}


def test_a_compile_candidate_outside_the_tunable_properties_is_a_config_error():
    with pytest.raises(ConfigError, match="CACHE_DIR=/tmp is not tunable"):
        CompileCandidate("cache", (("CACHE_DIR", "/tmp"),))
