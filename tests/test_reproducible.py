"""Same model, config and versions give the same bytes; a manifest is enough to rebuild its artifact."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main
from core.config import BuildConfig
from core.manifest import sha256_file
from pipelines.export import export


def test_rebuild_from_manifest_gives_identical_onnx(x86_artifact, tmp_path):
    manifest = json.loads((Path(x86_artifact.folder) / "manifest.json").read_text())
    config = {**manifest["build"], "out": str(tmp_path / "rebuilt"), "verify": False}
    (tmp_path / "config.json").write_text(json.dumps({"build": config}))
    result = CliRunner().invoke(main, ["export", "--config", str(tmp_path / "config.json")])
    assert result.exit_code == 0, result.output
    rebuilt = tmp_path / "rebuilt" / "all-MiniLM-L6-v2" / "x86"
    assert sha256_file(rebuilt / "model.onnx") == manifest["files"]["model.onnx"]
    assert sha256_file(rebuilt / "tokenizer.json") == manifest["files"]["tokenizer.json"]


def test_core_ml_package_is_byte_identical_across_builds(tmp_path):
    digests = []
    for run in ("a", "b"):
        (result,) = export(BuildConfig(target="apple", out=str(tmp_path / run), verify=False))
        assert result.ok, result.error
        digests.append(json.loads((Path(result.folder) / "manifest.json").read_text())["files"])
    assert digests[0] == digests[1]
    assert any(name.startswith("model.mlpackage/") for name in digests[0])
