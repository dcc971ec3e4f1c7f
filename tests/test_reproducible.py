"""Same model, config and versions give the same bytes; a manifest is enough to rebuild its artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli import main
from core.config import BuildConfig
from core.manifest import sha256_file
from pipelines.export import export
from pipelines.rebuild import rebuild_config


def test_rebuild_from_manifest_goes_to_out_and_checks_every_byte(tiny_x86, tmp_path):
    model, built = tiny_x86
    artifact = tmp_path / ("shipped-" + "x" * 150) / "x86"  # a path longer than the console: the line must not break
    shutil.copytree(built, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["build"]["verify"] = False  # the bytes are the point here; the gate runs everywhere else
    manifest["files"]["tokenizer.json"] = "0" * 64  # one checksum the rebuild cannot reproduce
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["export", "--config", str(artifact / "manifest.json"), "--out",
                                       str(tmp_path / "rebuilt"), "--check"], terminal_width=240)
    assert result.exit_code == 1, result.output
    assert f"{artifact / 'manifest.json'}: 1 file(s) differ from the manifest: tokenizer.json" in result.output
    rebuilt = tmp_path / "rebuilt" / model.name / "x86"
    assert sha256_file(rebuilt / "model.onnx") == manifest["files"]["model.onnx"]
    assert (artifact / "manifest.json").read_text() == json.dumps(manifest)  # the original is untouched


def test_a_rebuild_never_replaces_the_artifact_it_checks(x86_artifact):
    manifest = Path(x86_artifact.folder) / "manifest.json"
    result = CliRunner().invoke(main, ["export", "--config", str(manifest), "--out", str(manifest.parents[2])])
    assert result.exit_code == 2 and "would replace the artifact" in result.stderr, result.output


def test_core_ml_package_is_byte_identical_across_builds(tiny_models, tmp_path):
    digests = []
    for run in ("a", "b"):
        (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="apple", out=str(tmp_path / run),
                                       verify=False))
        assert result.ok, result.error
        digests.append(json.loads((Path(result.folder) / "manifest.json").read_text())["files"])
    assert digests[0] == digests[1]
    assert any(name.startswith("model.mlpackage/") for name in digests[0])


def test_a_config_file_never_turns_on_pickle_or_remote_code(x86_artifact, tmp_path):
    manifest = json.loads((Path(x86_artifact.folder) / "manifest.json").read_text())
    manifest["build"].update(trust_remote_code=True, allow_pickle=True)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    config, _ = rebuild_config(tmp_path / "manifest.json", str(tmp_path / "out"))
    assert not config.trust_remote_code and not config.allow_pickle
    config, _ = rebuild_config(tmp_path / "manifest.json", str(tmp_path / "out"), allow_pickle=True,
                               trust_remote_code=True)
    assert config.trust_remote_code and config.allow_pickle  # said on the command line
