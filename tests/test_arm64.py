"""`verify --arch arm64`: a tiny model's phone artifacts on emulated ARM64 CPU kernels (qemu 10, the runtimes'
own aarch64 builds), on every CPU model; and a corrupted artifact, checksums rewritten, fails there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ai_edge_litert.schema_py_generated as schema
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from converters.arm64 import UNSUPPORTED
from core.cpu import ARM_CPU_MODELS
from core.manifest import checksums, file_sizes, read_manifest
from pipelines.arm64 import verify_arm64

SENTENCES = 100  # per CPU model: a kernel family that computes wrong fails on any 100 sentences


@pytest.fixture(scope="module")
def phone_artifacts(tiny_exports) -> Path:
    """bert-max (WordPiece, 128 tokens): a family every phone format takes."""
    results = tiny_exports("bert-max")
    phone = [results[f"mobile/{name}"] for name in ("tflite", "mediapipe", "executorch")]
    assert all(r.ok and not r.refused for r in phone), [r.error or r.refused for r in phone]
    return Path(phone[0].folder).parent


@pytest.fixture(scope="module")
def verified(phone_artifacts) -> list[dict]:
    return verify_arm64(phone_artifacts, sentences=SENTENCES, log=lambda line: None)


def test_every_phone_artifact_passes_on_every_cpu_model(verified, phone_artifacts):
    assert {Path(r["path"]).name for r in verified} == {"tflite", "mediapipe", "executorch"}
    for row in verified:
        assert row["ok"], row["failures"]
        assert set(row["arm64"].cpus) == set(ARM_CPU_MODELS)
        assert "qemu-aarch64 version 10." in row["arm64"].qemu
        for cpu, figures in row["arm64"].cpus.items():
            if (Path(row["path"]).name, cpu) in UNSUPPORTED:
                assert "Armv8.1" in figures.skipped
                continue
            assert figures.sentences >= SENTENCES and figures.mean_cosine >= 0.99, (row["path"], cpu)
            assert "emulated ARM64 " + cpu in figures.runtime
            # The same artifact on other int8 kernels: close to x86, not bit-identical by construction.
            assert figures.min_cosine_vs_x86 >= 0.999, (row["path"], cpu, figures)
        # the figures are in the manifest and the artifact's report
        assert read_manifest(Path(row["path"])).arm64 == row["arm64"]
        assert "emulated ARM64 CPU kernels" in (Path(row["path"]) / "report.md").read_text(encoding="utf-8")


def test_cli_verify_arm64_exits_0_and_prints_the_table(phone_artifacts, tmp_path):
    shutil.copytree(phone_artifacts / "tflite", tmp_path / "tflite")  # the shared artifact's figures stay
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "tflite"), "--arch", "arm64", "--cpu", "max",
                                       "--sentences", "20"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "max" in result.output and "pass" in result.output
    misplaced = CliRunner().invoke(main, ["verify", str(tmp_path / "tflite"), "--arch", "arm64", "--quick"])
    assert misplaced.exit_code == 2 and "--quick does not apply to --arch arm64" in misplaced.output


def test_a_corrupted_artifact_with_rewritten_checksums_fails_on_arm(phone_artifacts, tmp_path):
    """The largest weight buffer (the int8 word embeddings) scrambled, the manifest's checksums made to match: the
    files check passes, the ARM run does not."""
    broken = tmp_path / "tflite"
    shutil.copytree(phone_artifacts / "tflite", broken)
    model = broken / "model.tflite"
    data = bytearray(model.read_bytes())
    parsed = schema.Model.GetRootAs(bytes(data), 0)
    largest = max((parsed.Buffers(i) for i in range(parsed.BuffersLength())),
                  key=lambda b: max(b.Size(), b.DataLength()))
    # Stored after the flatbuffer (offset, size) in larger models, inside it (a data vector) in small ones.
    if largest.Offset() > 1:
        start, size = largest.Offset(), largest.Size()
    else:
        start, size = largest._tab.Vector(largest._tab.Offset(4)), largest.DataLength()
    assert size > 10_000
    data[start: start + size] = np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes()
    model.write_bytes(bytes(data))
    manifest = json.loads((broken / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("arm64", None)
    manifest["files"], manifest["file_bytes"] = checksums(broken), file_sizes(broken)
    (broken / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (row,) = verify_arm64(broken, cpus=["cortex-a76"], sentences=40, log=lambda line: None)
    assert not row["ok"] and any("cosine" in failure for failure in row["failures"]), row


def test_unknown_cpu_model_and_non_phone_artifacts_are_one_line(phone_artifacts, tmp_path):
    result = CliRunner().invoke(main, ["verify", str(phone_artifacts), "--arch", "arm64", "--cpu", "pentium"])
    assert result.exit_code == 2 and "pentium" in result.output
    (tmp_path / "x").mkdir()
    shutil.copytree(phone_artifacts / "tflite", tmp_path / "x" / "tflite")
    manifest = json.loads((tmp_path / "x" / "tflite" / "manifest.json").read_text(encoding="utf-8"))
    (tmp_path / "x" / "tflite" / "manifest.json").write_text(json.dumps({**manifest, "format": "onnx"}))
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "x"), "--arch", "arm64"])
    assert result.exit_code == 2 and result.stderr.startswith("error: no phone artifact")
