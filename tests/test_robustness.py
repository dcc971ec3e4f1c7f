"""Odd texts, interrupted runs, a full disk and untrusted inputs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import BuildConfig
from core.manifest import find_artifacts
from core.metrics import row_cosines
from pipelines.export import export
from pipelines.runtime import ArtifactEncoder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def encoder(x86_artifact):
    return ArtifactEncoder(Path(x86_artifact.folder))


@pytest.fixture(scope="module")
def min_cosine(x86_artifact):
    return x86_artifact.manifest["gate"]["min_cosine"]


ODD_TEXTS = {
    "empty": "",
    "whitespace": " \t\n ",
    "emoji": "🙂🚀🔥 ok 👍🏽",
    "mixed_scripts": "東京 Москва القاهرة मुंबई Αθήνα",
    "control_chars": "tab\tnew\nline\x00nul",
    "very_long_10k_tokens": "token " * 10_000,
}


@pytest.mark.parametrize("name", ODD_TEXTS)
def test_odd_texts_embed_like_the_source_model(name, encoder, st_model, min_cosine):
    text = ODD_TEXTS[name]
    got = encoder.encode([text])
    expected = st_model.encode([text])
    assert got.shape == (1, 384) and np.isfinite(got).all()
    assert row_cosines(got, expected)[0] >= min_cosine


def test_long_text_is_truncated_like_the_source_model(encoder, st_model):
    (row,) = encoder.tokenize(["word " * 10_000])
    assert len(row["input_ids"]) == st_model.max_seq_length == 256


def test_batch_of_one_and_of_a_thousand(encoder, st_model, dev_sentences, min_cosine):
    sentences = (dev_sentences * 2)[:1000]
    many = encoder.encode(sentences, batch_size=1000)
    one = encoder.encode(sentences[:1], batch_size=1)
    assert many.shape == (1000, 384)
    # Dynamic int8 picks activation scales per batch, so batch company moves an embedding slightly; no more.
    assert row_cosines(many[:1], one)[0] >= 0.99
    assert row_cosines(many, st_model.encode(sentences, batch_size=64)).min() >= min_cosine


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=200), min_size=1, max_size=4))
def test_fuzz_texts(encoder, st_model, min_cosine, texts):
    got = encoder.encode(texts)
    assert got.shape == (len(texts), 384) and np.isfinite(got).all()
    assert row_cosines(got, st_model.encode(texts)).min() >= min_cosine


def _export_cmd(out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "export", "--target", "x86", "--out", str(out)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_killed_export_leaves_old_artifact_or_none(tmp_path, sig):
    out = tmp_path / "dist"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_export_cmd(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Wait until conversion has started writing, then kill it mid-build.
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.rglob(".x86.tmp-*")):
        time.sleep(0.2)
    assert any(out.rglob(".x86.tmp-*")), "export never started writing"
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    leftovers = [p for p in out.rglob("*") if p.is_dir() and ".tmp-" in p.name]
    assert not leftovers, leftovers
    assert not (out / "all-MiniLM-L6-v2" / "x86").exists()
    with pytest.raises(Exception, match="no artifact"):
        find_artifacts(out)


def test_disk_full_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import converters.onnx.quantize as onnx_converter

    real = onnx_converter.quantize_int8

    def fill_disk(model_path, out_path, *args, **kwargs):
        Path(out_path).write_bytes(b"partial")  # a half-written file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_converter, "quantize_int8", fill_disk)
    out = tmp_path / "dist"
    (result,) = export(BuildConfig(target="x86", out=str(out)))
    monkeypatch.setattr(onnx_converter, "quantize_int8", real)
    assert not result.ok
    assert "disk is full" in result.error and "--out" in result.error
    assert not any(p for p in out.rglob("*") if p.is_file())


def test_pickle_only_model_is_refused(tmp_path):
    from click.testing import CliRunner

    from cli import main

    model = tmp_path / "pickled"
    model.mkdir()
    (model / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "pickle" in result.stderr and "--allow-pickle" in result.stderr
