"""The web target in headless Chromium: the gate passes on the bundled model with the browser's own figures,
a silently wrong int8 artifact fails it, and transformers.js loads the layout in the browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cli import main
from converters.web import WASM_FILE, WEB_OUTPUT, WEBGPU_FILE
from converters.web.runner import check_truncation
from core.manifest import Artifact, checksums, file_sizes, write_json_atomic
from core.metrics import row_cosines
from pipelines.gatekeeper import verify_path
from tests.transformers_js import embed_with_transformers_js

QUICK = 60  # STS-B dev pairs per verify here; the export's own gate ran on all of them


@pytest.fixture(scope="module")
def web_artifact(tmp_path_factory):
    from core.config import BuildConfig
    from pipelines.export import export

    out = tmp_path_factory.mktemp("dist")
    (result,) = export(BuildConfig(target="web", out=str(out)))
    assert result.ok, result.error
    return result


def test_web_export_passes_its_gate_in_chromium(web_artifact):
    manifest = web_artifact.manifest.to_json()
    folder = Path(web_artifact.folder)
    parity = manifest["parity"]
    assert manifest["verdict"] == "pass"
    assert parity["sentences"] > 2000 and parity["mean_cosine"] >= 0.99 and parity["min_cosine"] >= 0.97
    assert "onnxruntime-web" in parity["runtime"] and "Chromium" in parity["runtime"]
    facts = manifest["structure"]["facts"]
    assert facts["cross_origin_isolated"] is True and facts["wasm_threads"] == 2
    assert facts["wasm_b1_p50_ms"] > 0 and facts["native_b1_p50_ms"] > 0
    assert facts["wasm_vs_native"] == pytest.approx(facts["wasm_b1_p50_ms"] / facts["native_b1_p50_ms"], rel=0.02)
    raw = sum((folder / name).stat().st_size for name in (WASM_FILE, "tokenizer.json"))
    assert 0 < facts["download_gzip_bytes"] < raw
    assert facts["webgpu"].startswith(("checked on", "fp16 variant not checked here: "))
    # transformers.js's layout, with the output its feature-extraction pipeline reads
    for name in (WASM_FILE, WEBGPU_FILE, "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert manifest["output"]["name"] == WEB_OUTPUT
    for name in (WASM_FILE, WEBGPU_FILE):
        assert [o.name for o in onnx.load(str(folder / name), load_external_data=False).graph.output] == [WEB_OUTPUT]
    assert manifest["precision"] == "int8" and manifest["isa"] is None


def _resign(folder: Path) -> None:
    """Rewrite the checksums, as a buggy converter would have written them."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"], manifest["file_bytes"] = checksums(folder), file_sizes(folder)
    write_json_atomic(folder / "manifest.json", manifest)


def test_silently_wrong_web_artifact_fails_the_gate(web_artifact, tmp_path):
    """A quantized graph that runs without an error but computes the wrong thing (as web backends have done)."""
    folder = tmp_path / "web"
    shutil.copytree(web_artifact.folder, folder)
    model = onnx.load(str(folder / WASM_FILE))
    matmul = next(n for n in model.graph.node if n.op_type == "MatMulInteger" and "intermediate" in n.name)
    weights = next(i for i in model.graph.initializer if i.name == matmul.input[1])
    flipped = -numpy_helper.to_array(weights).astype(np.int16)
    weights.CopyFrom(numpy_helper.from_array(np.clip(flipped, -127, 127).astype(np.int8), weights.name))
    onnx.save(model, str(folder / WASM_FILE))
    _resign(folder)
    (row,) = verify_path(folder, limit=QUICK)
    assert not row["ok"]
    assert any("cosine" in failure for failure in row["failures"]), row["failures"]
    assert row["parity"]["runtime"].startswith("onnxruntime-web")


def test_damaged_web_model_fails_naming_the_runtime(web_artifact, tmp_path):
    """A model file onnxruntime-web cannot load (checksums rewritten, so the runtime is what meets it)."""
    folder = tmp_path / "web"
    shutil.copytree(web_artifact.folder, folder)
    data = (folder / WASM_FILE).read_bytes()
    (folder / WASM_FILE).write_bytes(data[: len(data) // 3])
    _resign(folder)
    (row,) = verify_path(folder, limit=QUICK)
    assert not row["ok"]
    assert f"{WASM_FILE} failed in onnxruntime-web" in row["failures"][0], row["failures"]
    assert "\n" not in row["failures"][0]


def test_transformers_js_loads_the_web_layout_in_chromium(web_artifact):
    folder = Path(web_artifact.folder)
    vectors = json.loads((folder / "test_vectors.json").read_text())["vectors"]
    texts = [v["text"] for v in vectors]
    got = embed_with_transformers_js(folder, texts)
    expected = np.array([v["expected_embedding"] for v in vectors], dtype=np.float32)
    assert got.shape == expected.shape
    cosines = row_cosines(got, expected)
    assert cosines.min() >= web_artifact.manifest.gate.min_cosine, dict(zip(texts, cosines.round(4), strict=True))


def test_a_tokenizer_config_that_would_not_truncate_is_refused(web_artifact, tmp_path):
    """Probe: tokenizer_config.json's model_max_length raised to 10^9 (checksums rewritten): transformers.js would
    feed the model texts past its limit; verify refuses the artifact in one line, exit 2."""
    folder = tmp_path / "web"
    shutil.copytree(web_artifact.folder, folder)
    check_truncation(Artifact(folder, web_artifact.manifest))  # the exported one agrees
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 10**9}))
    _resign(folder)
    result = CliRunner().invoke(main, ["verify", str(folder)])
    assert result.exit_code == 2, result.output
    assert "model_max_length is 1000000000, not the manifest's 256" in result.output
