"""Layouts other tools read: each loaded by its own library with the usage lines the layout writes, and the
embeddings compared with the artifact's own runtime and with the fp32 model's test vectors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from core.data import load_stsb
from core.manifest import checksums, file_sizes
from core.metrics import row_cosines
from pipelines.layouts import get_layout, layout_folder, write_layout
from pipelines.runtime import ArtifactEncoder
from tests.consumers import consumer_python
from tests.transformers_js import embed_with_transformers_js

SENTENCES = 200  # STS-B dev sentences beside the test vectors' odd texts


@pytest.fixture(scope="module")
def consumer():
    return consumer_python()


def _texts(artifact_dir: Path) -> tuple[list[str], np.ndarray]:
    vectors = json.loads((artifact_dir / "test_vectors.json").read_text())["vectors"]
    return [v["text"] for v in vectors], np.array([v["expected_embedding"] for v in vectors], dtype=np.float32)


def _embed_in_consumer(consumer: Path, folder: Path, texts: list[str], tmp_path: Path) -> np.ndarray:
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(consumer), str(Path(__file__).parent / "consumers.py"), str(folder), str(texts_file)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=np.float32)


@pytest.mark.parametrize("name", ["sentence-transformers", "fastembed"])
def test_python_libraries_load_their_layout_with_parity(name, x86_artifact, consumer, tmp_path):
    artifact = Path(x86_artifact.folder)
    layout = get_layout(name)
    folder = write_layout(layout, artifact, layout_folder(x86_artifact.artifact, layout))
    assert folder.parent.name == name and folder.parent.parent.name == "layouts"
    odd, expected = _texts(artifact)
    texts = odd + load_stsb("dev").unique_sentences()[:SENTENCES]
    got = _embed_in_consumer(consumer, folder, texts, tmp_path)
    ours = ArtifactEncoder(artifact).encode(texts, batch_size=1)
    assert got.shape == ours.shape
    # the same graph in the same ONNX Runtime through the library's own tokenizer and pooling
    assert row_cosines(got, ours).min() >= 0.9999
    assert row_cosines(got[: len(odd)], expected).min() >= x86_artifact.manifest.gate.min_cosine
    if name == "sentence-transformers":
        assert (folder / "onnx" / f"model_qint8_{x86_artifact.manifest.to_json()['isa']['class']}.onnx").is_file()


def test_transformers_js_loads_the_x86_artifact_in_its_layout(x86_artifact):
    """The x86 graph with its output renamed, as transformers.js reads it, in Chromium's WASM."""
    artifact = Path(x86_artifact.folder)
    layout = get_layout("transformers.js")
    folder = write_layout(layout, artifact, layout_folder(x86_artifact.artifact, layout))
    texts, expected = _texts(artifact)
    got = embed_with_transformers_js(folder, texts)
    assert row_cosines(got, expected).min() >= x86_artifact.manifest.gate.min_cosine
    assert "dtype: \"q8\"" in json.loads((folder / "layout.json").read_text())["usage"]


def test_layout_of_a_format_it_does_not_take_is_refused(x86_artifact, tmp_path):
    result = CliRunner().invoke(main, ["export", "--target", "apple", "--layout", "fastembed",
                                       "--out", str(tmp_path / "dist")])
    assert result.exit_code == 2 and "fastembed takes onnx artifacts" in result.output
    assert not (tmp_path / "dist").exists()
    result = CliRunner().invoke(main, ["package", x86_artifact.folder, "--layout", "pytorch"])
    assert result.exit_code == 2 and "unknown layout 'pytorch'" in result.output


def test_package_layout_archives_the_library_folder(x86_artifact, tmp_path):
    result = CliRunner().invoke(main, ["package", x86_artifact.folder, "--layout", "transformers.js",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (archive,) = tmp_path.glob("*.tar.gz")
    assert archive.name.endswith("-transformers.js.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    root = archive.name.removesuffix(".tar.gz")
    assert {f"{root}/onnx/model_quantized.onnx", f"{root}/tokenizer.json", f"{root}/config.json",
            f"{root}/layout.json", f"{root}/test_vectors.json"} <= set(names)


def test_a_model_with_external_data_is_refused_in_one_line(x86_artifact, tmp_path):
    """Probe: an artifact whose model.onnx was rewritten to keep its weights in an external file (checksums
    rewritten to match): a layout takes self-contained models only, and says so in one line, writing nothing."""
    artifact = tmp_path / "x86"
    shutil.copytree(x86_artifact.folder, artifact)
    onnx.save_model(onnx.load(str(artifact / "model.onnx")), str(artifact / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data")
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"], manifest["file_bytes"] = checksums(artifact), file_sizes(artifact)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["package", str(artifact), "--layout", "sentence-transformers", "--out",
                                       str(tmp_path / "release")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "keeps its weights in external data files" in result.output
    assert not any((tmp_path / "release").glob("*.tar.gz"))
