"""Signed release bundles (OpenSSF model-signing, pipelines.signing), on a tiny model: a signed bundle verifies;
one byte changed, a file added or removed, the manifest rewritten to match, another key or no signature is refused
in one line (exit 2) before anything in it is parsed; model-signing's own command line verifies our bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipelines.gatekeeper as gatekeeper
from cli import main
from core.config import BuildConfig
from core.errors import ArtifactError
from core.manifest import PROVENANCE, SIGNATURE, checksums, file_sizes
from pipelines.export import export
from pipelines.package import safe_extract
from pipelines.runtime import ArtifactEncoder
from pipelines.signing import SLSA_PROVENANCE, generate_key, signing_python


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_key(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="module")
def archive(tiny_models, keys, tmp_path_factory) -> Path:
    """The tiny BERT's x86 artifact, packaged with --sign-key."""
    dist = tmp_path_factory.mktemp("signed") / "dist"
    (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="x86", out=str(dist)))
    assert result.ok, result.error
    packaged = CliRunner().invoke(main, ["package", str(dist), "--sign-key", str(keys[0])])
    assert packaged.exit_code == 0, packaged.output
    (archive,) = (dist / "release").glob("*.tar.gz")
    return archive


def _unpacked(archive: Path, where: Path) -> Path:
    safe_extract(archive, where)
    (folder,) = [p for p in where.iterdir() if p.is_dir()]
    return folder


def _verify(path: Path, public_key: Path):
    return CliRunner().invoke(main, ["verify", str(path), "--public-key", str(public_key)])


def test_a_signed_bundle_verifies_and_carries_signed_provenance(archive, keys, tmp_path):
    result = _verify(archive, keys[1])
    assert result.exit_code == 0, result.output
    folder = _unpacked(archive, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    statement = json.loads((folder / PROVENANCE).read_text())
    assert (folder / SIGNATURE).is_file() and statement["predicateType"] == SLSA_PROVENANCE
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == manifest["files"]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["build"] == manifest["build"]
    assert definition["resolvedDependencies"][0]["digest"]["sha256"] == manifest["model"]["sha256"]
    (byproduct,) = statement["predicate"]["runDetails"]["byproducts"]
    assert byproduct["annotations"]["verdict"] == "pass" and byproduct["annotations"]["parity"] == manifest["parity"]


def _rewrite_checksums(folder: Path) -> None:
    """What an attacker who changes a file also does: make the manifest's checksums match again."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"], manifest["file_bytes"] = checksums(folder), file_sizes(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", ["one byte", "file added", "file removed", "manifest rewritten", "another key",
                                    "unsigned"])
def test_a_changed_bundle_is_refused_in_one_line_before_anything_is_parsed(archive, keys, other_keys, tmp_path,
                                                                          monkeypatch, change):
    folder = _unpacked(archive, tmp_path)
    public_key = keys[1]
    if change == "one byte":
        model = folder / "model.onnx"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 1
        model.write_bytes(bytes(data))
        _rewrite_checksums(folder)
    elif change == "file added":
        (folder / "extra.onnx").write_bytes(b"\0" * 16)
        _rewrite_checksums(folder)
    elif change == "file removed":
        (folder / "test_vectors.json").unlink()
        _rewrite_checksums(folder)
    elif change == "manifest rewritten":
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["gate"]["min_cosine"] = -1.0
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif change == "another key":
        public_key = other_keys[1]
    else:
        (folder / SIGNATURE).unlink()

    def parsed(*args, **kwargs):
        raise AssertionError("the manifest was read before the signature was checked")

    monkeypatch.setattr(gatekeeper, "read_artifact", parsed)
    result = _verify(folder, public_key)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and ("signature check failed" in line or "is not signed" in line), line


def test_model_signings_own_command_line_verifies_the_bundle(archive, keys, tmp_path):
    folder = _unpacked(archive, tmp_path)
    tool = signing_python().parent / "model_signing"
    result = subprocess.run([str(tool), "verify", "key", str(folder), "--signature", str(folder / SIGNATURE),
                             "--public_key", str(keys[1])], capture_output=True, text=True)
    assert result.returncode == 0 and "Verification succeeded" in result.stdout + result.stderr, result.stderr


def test_the_runtime_loads_only_what_the_key_signed(archive, keys, other_keys, tmp_path):
    folder = _unpacked(archive, tmp_path)
    assert ArtifactEncoder(folder, public_key=keys[1]).encode(["a sentence"]).shape[0] == 1
    with pytest.raises(ArtifactError, match="signature check failed"):
        ArtifactEncoder(folder, public_key=other_keys[1])
    changed = tmp_path / "copy"
    shutil.copytree(folder, changed)
    (changed / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="differ from the signed ones"):
        ArtifactEncoder(changed, public_key=keys[1])
