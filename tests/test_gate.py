"""The deployment gate: every way an artifact can be broken makes `verify` fail, naming what is wrong."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper

from core.errors import ArtifactError
from core.manifest import checksums, file_sizes, write_json_atomic
from core.reference import Reference
from pipelines.gatekeeper import verify_path
from pipelines.package import package_all, safe_extract
from pipelines.verify import MIN_SPEARMAN_PAIRS, gate_failures, measure_parity
from targets.base import target_gate

QUICK = 60  # STS-B dev pairs per verify here; the full set runs in test_x86


@pytest.fixture
def artifact(x86_artifact, tmp_path):
    copy = tmp_path / "x86"
    shutil.copytree(x86_artifact.folder, copy)
    return copy


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _resign(folder):
    """Recompute the checksums, as a buggy converter would have written them."""
    manifest = _manifest(folder)
    manifest["files"] = checksums(folder)
    manifest["file_bytes"] = file_sizes(folder)
    write_json_atomic(folder / "manifest.json", manifest)


def test_untouched_artifact_passes(artifact):
    (row,) = verify_path(artifact, limit=QUICK)
    assert row["ok"], row["failures"]
    assert row["parity"]["mean_cosine"] >= 0.99


def test_missing_file_fails_naming_it(artifact):
    (artifact / "tokenizer_config.json").unlink()
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and "tokenizer_config.json" in row["failures"][0] and "missing" in row["failures"][0]


def test_truncated_file_fails_naming_it(artifact):
    data = (artifact / "tokenizer.json").read_bytes()
    (artifact / "tokenizer.json").write_bytes(data[: len(data) // 2])
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and "tokenizer.json" in row["failures"][0]


def test_extra_file_fails(artifact):
    (artifact / "payload.bin").write_bytes(b"\x00")
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and "payload.bin" in row["failures"][0]


def test_nan_output_fails(artifact):
    model = onnx.load(str(artifact / "model.onnx"))
    output = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Mul", [output + "_raw", "nan_const"], [output]))
    for node in model.graph.node[:-1]:
        node.output[:] = [o + "_raw" if o == output else o for o in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan_const"))
    onnx.save(model, str(artifact / "model.onnx"))
    _resign(artifact)
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"]
    assert any("NaN or inf" in f for f in row["failures"]), row["failures"]


def test_dims_mismatch_fails(artifact):
    manifest = _manifest(artifact)
    manifest["embedding_dim"], manifest["output"]["shape"] = 128, ["batch", 128]  # consistent: the run must tell
    write_json_atomic(artifact / "manifest.json", manifest)
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and "outputs 384 dims but the manifest says 128" in row["failures"][0]


def test_cosine_below_threshold_fails(artifact):
    (row,) = verify_path(artifact, limit=QUICK, min_mean_cosine=0.9999)
    assert not row["ok"]
    assert any(f.startswith("mean cosine") and "< 0.9999" in f for f in row["failures"]), row["failures"]


def test_foreign_manifest_fails(artifact):
    (artifact / "manifest.json").write_text(json.dumps({"name": "someone else's"}))
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and "not a manifest of this toolchain" in row["failures"][0]


def test_package_then_verify_archive_and_tampered_archive(x86_artifact, tmp_path):
    (archive,) = package_all(_model_root(x86_artifact), tmp_path / "release")
    assert archive.name.endswith(".tar.gz")
    (row,) = verify_path(archive, limit=QUICK)
    assert row["ok"], row["failures"]
    again = package_all(_model_root(x86_artifact), tmp_path / "again")[0]
    assert again.read_bytes() == archive.read_bytes()  # archives are reproducible
    # Rewrite the archive with one byte of the model changed.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model.onnx"):
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    (row,) = verify_path(tampered, limit=QUICK)
    assert not row["ok"] and "model.onnx" in row["failures"][0]


def _model_root(result):
    from pathlib import Path

    return Path(result.folder).parent


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b""):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_archive_members_cannot_escape(tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 3
    archive = _tar_with(tmp_path, info, b"bad")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArtifactError, match="escaping"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists()


def test_archive_links_are_refused(tmp_path):
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArtifactError, match="link"):
        safe_extract(_tar_with(tmp_path, info), dest)


def test_verify_judges_by_the_targets_gate_whatever_the_manifest_says(artifact):
    """A scrambled artifact whose manifest lowers its own gate (and whose checksums were rewritten) still fails:
    the gate comes from the target registry."""
    model = onnx.load(str(artifact / "model.onnx"))
    for initializer in model.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT and len(initializer.raw_data) > 4096:
            values = np.frombuffer(initializer.raw_data, np.float32)
            initializer.raw_data = np.random.default_rng(0).permutation(values).tobytes()
    onnx.save(model, str(artifact / "model.onnx"))
    manifest = _manifest(artifact)
    manifest["gate"] = {"min_mean_cosine": -1.0, "min_cosine": -1.0, "max_spearman_drop": 100.0, "pca_extra_drop": 9.0}
    write_json_atomic(artifact / "manifest.json", manifest)
    _resign(artifact)
    (row,) = verify_path(artifact, limit=QUICK)
    assert not row["ok"] and row["gate"]["min_mean_cosine"] == 0.995, row


@pytest.mark.parametrize("folder", ["x86", "mobile/mediapipe"])
def test_verify_reaches_the_verdict_export_recorded(tiny_exports, folder):
    """One verification: `verify` on an exported artifact measures and decides what export's gate recorded
    (the MediaPipe artifact adds structural facts and app-text strings to compare)."""
    exported = tiny_exports("bert")[folder]
    (row,) = verify_path(exported.folder)
    manifest = exported.manifest.to_json()
    assert row["ok"] and manifest["verdict"] == "pass" and row["failures"] == []
    assert row["gate"] == manifest["gate"] and row["structure"] == manifest["structure"]
    assert row["parity"].keys() == manifest["parity"].keys()
    for key, recorded in manifest["parity"].items():
        measured = row["parity"][key]
        if isinstance(recorded, float):
            assert measured == pytest.approx(recorded, abs=1e-5), key
        elif key != "app_text":
            assert measured == recorded, key
    for kind in ("normalized", "raw"):
        for subset, figures in (manifest["parity"]["app_text"] or {}).get(kind, {}).items():
            assert row["parity"]["app_text"][kind][subset] == pytest.approx(figures, abs=1e-5), (kind, subset)


class _ZeroForFirstRows(Reference):
    """The bundled model made degenerate: it embeds the first three STS-B dev sentences as the zero vector."""

    def source_embeddings(self, sentences):
        embeddings = super().source_embeddings(sentences).copy()
        embeddings[:3] = 0.0
        return embeddings


def test_a_source_model_that_embeds_zero_vectors_is_named_not_a_cosine_of_minus_one(st_model, source):
    reference = _ZeroForFirstRows(st_model, source)
    faithful = Reference(st_model, source)  # an artifact that reproduces the model, except its zero rows
    parity = measure_parity(faithful.source_embeddings, reference, limit=QUICK)
    failures = gate_failures(parity, target_gate("x86", "onnx"))
    assert parity.zero_reference_rows == 3 and parity.min_cosine > 0.9999
    assert len(failures) == 1 and "zero vector (a degenerate model)" in failures[0], failures


def test_a_spearman_drop_is_judged_only_on_enough_pairs(st_model, source):
    """On 25 pairs sampling alone moves the drop past the gate (pipelines.verify.MIN_SPEARMAN_PAIRS): recorded,
    not judged; on the full set the same drop fails."""
    reference = Reference(st_model, source)
    parity = measure_parity(reference.source_embeddings, reference, limit=25)
    gate = target_gate("mobile", "executorch")
    assert parity.pairs == 25 and parity.spearman_drop == 0.0
    assert gate_failures(replace(parity, spearman_drop=1.05), gate) == []
    failures = gate_failures(replace(parity, spearman_drop=1.05, pairs=MIN_SPEARMAN_PAIRS), gate)
    assert len(failures) == 1 and "Spearman drop 1.05 > 0.5" in failures[0], failures
