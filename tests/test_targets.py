"""mobile and apple targets through the real export pipeline: artifacts, manifests, verification, gates."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import BuildConfig
from core.errors import MissingDependencyError, require
from pipelines.export import export


@pytest.fixture(scope="module")
def built(tmp_path_factory, mobile_export):
    out = tmp_path_factory.mktemp("dist")
    results = export(BuildConfig(target="apple", out=str(out)))
    assert all(r.ok for r in results), [r.error for r in results]
    return {**mobile_export, **{Path(r.folder).relative_to(out / "all-MiniLM-L6-v2").as_posix(): r for r in results}}


def test_mobile_writes_every_artifact(built):
    assert set(built) == {"mobile/tflite", "mobile/executorch", "mobile/mediapipe", "apple"}
    tflite, pte = built["mobile/tflite"].manifest.to_json(), built["mobile/executorch"].manifest.to_json()
    assert tflite["file"] == "model.tflite" and tflite["runtime"] == "ai-edge-litert"
    assert pte["file"] == "model.pte" and pte["runtime"] == "executorch"


@pytest.mark.parametrize("name", ["mobile/tflite", "mobile/executorch"])
def test_mobile_parity_in_real_runtimes(built, name):
    manifest = built[name].manifest.to_json()
    parity = manifest["parity"]
    assert parity["sentences"] > 2800 and not parity["emulated"]
    assert parity["mean_cosine"] >= 0.99
    assert parity["spearman_drop"] <= 0.5
    assert parity["test_vectors_min_cosine"] >= manifest["gate"]["min_cosine"]


def test_tflite_buckets_size_and_truncation(built):
    manifest = built["mobile/tflite"].manifest.to_json()
    assert [(s["batch"], s["sequence"]) for s in manifest["shapes"]] == [(1, 32), (1, 64), (1, 128), (1, 256)]
    assert manifest["max_seq_length"] == 256 == manifest["tokenizer"]["max_length"]
    assert "as the source model" in manifest["tokenizer"]["truncation"]
    assert manifest["size_bytes"] <= 0.30 * manifest["conversion"]["fp32_bytes"]


def test_running_tflite_needs_no_torch(built, run_without_build_stack):
    run_without_build_stack(built["mobile/tflite"].folder, 384)


def test_apple_manifest_and_emulated_verification(built):
    manifest = built["apple"].manifest.to_json()
    assert manifest["precision"] == "fp16" and manifest["file"] == "model.mlpackage"
    assert [(s["batch"], s["sequence"]) for s in manifest["shapes"]] == [(1, 32), (1, 64), (1, 128), (1, 256)]
    assert manifest["versions"]["coremltools"] == "9.0"
    assert manifest["parity"]["emulated"] is True and "emulation" in manifest["parity"]["runtime"]
    assert manifest["parity"]["mean_cosine"] >= 0.99 and manifest["parity"]["spearman_drop"] <= 0.5
    structure = manifest["structure"]
    assert structure["facts"]["spec"]["model_type"] == "mlProgram"
    assert structure["facts"]["spec"]["op_precisions"].get("float16", 0) > 100
    assert structure["program_test_vectors_min_cosine"]["program"] >= 0.99  # the saved program itself, op by op


def test_missing_optional_dependency_names_the_install_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def without_litert(name, *args, **kwargs):
        if name.startswith("litert_torch"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_litert)
    with pytest.raises(MissingDependencyError, match=r"pip install -c constraints.txt -e '\.\[mobile\]'"):
        require("litert_torch", "mobile")
