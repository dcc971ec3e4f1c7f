"""Compression before export: the dims sweep and --dims auto, int8 / binary stored vectors, the retrieval figure,
and the report's trade-off tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sentence_transformers.quantization import quantize_embeddings

from cli import main
from core.config import BuildConfig
from core.data import load_stsb
from core.errors import ArtifactError, ConfigError
from core.manifest import VectorsRecord, read_manifest
from core.metrics import retrieval_scores, row_cosines
from core.schema import decode
from core.vectors import VectorCodec
from pipelines.embed import read_vectors
from pipelines.export import export
from pipelines.report import write_model_report
from pipelines.runtime import ArtifactEncoder
from tests.tiny_models import FAMILIES, HIDDEN, build_tiny_model


@pytest.fixture(scope="module")
def x86_codec(x86_artifact) -> VectorCodec:
    return VectorCodec.from_record(x86_artifact.manifest.vectors, x86_artifact.manifest.embedding_dim)


def test_int8_and_binary_vectors_round_trip_through_the_manifests_ranges(x86_artifact, x86_codec, dev_sentences):
    vectors = ArtifactEncoder(Path(x86_artifact.folder)).encode(dev_sentences[:500])
    int8 = x86_codec.encode(vectors, "int8")
    # The same buckets as sentence-transformers' quantize_embeddings with these ranges: either tool reads the other's.
    ranges = np.vstack([x86_codec.low, x86_codec.high])
    np.testing.assert_array_equal(int8, quantize_embeddings(vectors, precision="int8", ranges=ranges))
    binary = x86_codec.encode(vectors, "binary")
    assert binary.shape == (500, 384 // 8) and binary.dtype == np.uint8
    assert row_cosines(x86_codec.decode(int8, "int8"), vectors).min() >= 0.99
    assert row_cosines(x86_codec.decode(binary, "binary"), vectors).mean() >= 0.7
    assert np.array_equal(x86_codec.decode(binary, "binary") > 0, vectors > x86_codec.threshold)


@pytest.mark.parametrize("damage", [
    lambda v: v["int8"].pop("low"),
    lambda v: v["int8"]["high"].pop(),
    lambda v: v["binary"].update(threshold=["x"] * 384),
    lambda v: v["int8"].update(low=[float("nan")] * 384),
    lambda v: v["int8"].update(high=[-1e9] * 384),
])
def test_damaged_vector_ranges_are_refused(x86_artifact, damage):
    entry = json.loads(json.dumps(x86_artifact.manifest.to_json()["vectors"]))
    damage(entry)
    with pytest.raises(ArtifactError, match="vectors"):
        VectorCodec.from_record(decode(VectorsRecord, entry, ArtifactError, "vectors"), 384)


def test_embed_stores_int8_and_binary_vectors_with_the_artifacts_ranges(x86_artifact, x86_codec, dev_sentences,
                                                                        tmp_path):
    texts = dev_sentences[:300]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    float_out = tmp_path / "float32"
    assert CliRunner().invoke(main, ["embed", str(x86_artifact.folder), "--input", str(corpus), "--output",
                                     str(float_out)]).exit_code == 0
    _, floats, _ = read_vectors(float_out)
    for precision, width in (("int8", 384), ("binary", 48)):
        out = tmp_path / precision
        result = CliRunner().invoke(main, ["embed", str(x86_artifact.folder), "--input", str(corpus), "--output",
                                           str(out), "--precision", precision])
        assert result.exit_code == 0, result.output
        _, stored, metadata = read_vectors(out)
        assert stored.shape == (300, width) and metadata["dtype"] == precision
        np.testing.assert_array_equal(stored, x86_codec.encode(floats, precision))


def test_retrieval_scores_rank_the_positive():
    pairs = load_stsb("dev")
    sentences = pairs.unique_sentences()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(sentences), 64))
    index = {s: i for i, s in enumerate(sentences)}
    perfect = vectors.copy()
    for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores, strict=True):
        if score >= 4:
            perfect[index[b]] = perfect[index[a]] + rng.normal(scale=1e-3, size=64)
    best = retrieval_scores(perfect, sentences, pairs)
    chance = retrieval_scores(vectors, sentences, pairs)
    assert best.queries == chance.queries > 200
    assert best.recall_at_1 > 95 and best.mrr > 95  # a positive shared by two queries can cost one rank
    assert chance.recall_at_10 < 5 and chance.mrr < 5


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model(FAMILIES["bert"], tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.mark.parametrize("max_drop", [0.0, 100.0])
def test_auto_dims_picks_the_smallest_size_within_the_drop(tiny_bert, dev_sentences, tmp_path, max_drop):
    corpus = tmp_path / "fit.txt"
    corpus.write_text("\n".join(dev_sentences[:400]) + "\n", encoding="utf-8")
    # No gate: int8 of a random tiny model projected to 16 dims is not what this test is about.
    config = BuildConfig(model=str(tiny_bert), target="x86", dims="auto", max_drop=max_drop, fit_corpus=str(corpus),
                         out=str(tmp_path / "dist"), verify=False)
    (result,) = export(config)
    assert result.ok, result.error
    sweep = result.manifest.to_json()["dims_sweep"]
    floats = [r for r in sweep["rows"] if r["precision"] == "float32"]
    assert sorted(r["dims"] for r in floats) == [16, 32, 48, HIDDEN]
    within = [r["dims"] for r in floats if r["spearman_drop"] <= max_drop]
    assert sweep["smallest_within_max_drop"] == min(within)
    assert result.manifest.to_json()["embedding_dim"] == min(within)
    if max_drop == 100.0:
        assert min(within) == 16 and result.manifest.to_json()["pca"]["dims"] == 16
    rows = {(r["dims"], r["precision"]): r for r in sweep["rows"]}
    assert rows[(16, "binary")]["bytes_per_vector"] == 2 and rows[(HIDDEN, "int8")]["bytes_per_vector"] == HIDDEN


def test_max_drop_needs_auto_dims():
    with pytest.raises(ConfigError, match="--max-drop"):
        export(BuildConfig(target="x86", dims=128, max_drop=0.5))
    result = CliRunner().invoke(main, ["export", "--dims", "some", "--out", "/tmp/unused"])
    assert result.exit_code == 2 and "neither a number" in result.output


def test_report_shows_the_sweep_and_a_student_beside_its_teacher(x86_artifact, tmp_path):
    root = tmp_path / "dist"
    teacher = root / "all-MiniLM-L6-v2" / "x86"
    student = root / "student" / "x86"
    for folder, distillation in ((teacher, None), (student, {
            "teacher": "all-MiniLM-L6-v2", "kept_layers": [0, 2, 5], "teacher_layers": 6, "spearman_teacher": 86.7,
            "spearman_student": 85.0, "seconds": 60.0, "matryoshka_dims": None})):
        folder.mkdir(parents=True)
        for path in Path(x86_artifact.folder).iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["model"]["distillation"] = distillation
        (folder / "manifest.json").write_text(json.dumps(manifest))
    md, page = write_model_report(root)
    text = page.read_text()
    assert "quality against bytes per vector" in text and "<polyline" in text
    assert "Distilled students" in md.read_text() and "3 of 6 (0,2,5)" in md.read_text()
    assert read_manifest(teacher).to_json()["dims_sweep"]["rows"]
