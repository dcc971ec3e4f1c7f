"""Odd texts, interrupted runs, a full disk and untrusted inputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
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
from core.manifest import check_files, read_artifact
from core.metrics import row_cosines
from pipelines.export import export
from pipelines.runtime import ArtifactEncoder
from pipelines.staging import recover

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def encoder(x86_artifact):
    return ArtifactEncoder(Path(x86_artifact.folder))


@pytest.fixture(scope="module")
def min_cosine(x86_artifact):
    return x86_artifact.manifest.gate.min_cosine


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


# derandomize: the same 40 texts on every run, so a CPU class that embeds one of them badly fails every time,
# never by chance.
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=200), min_size=1, max_size=4))
def test_fuzz_texts(encoder, st_model, min_cosine, texts):
    got = encoder.encode(texts)
    assert got.shape == (len(texts), 384) and np.isfinite(got).all()
    assert row_cosines(got, st_model.encode(texts)).min() >= min_cosine


# A shell without job control starts background commands with SIGINT ignored, and Python keeps an inherited
# SIG_IGN: a suite run that way (`make test &` in a script) would start the CLI deaf to Ctrl-C. The shim gives the
# CLI SIGINT's default, as a terminal would, then execs it.
_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def _start_export(out: Path, model: Path, *extra: str) -> subprocess.Popen:
    """The CLI in its own process group, so a test can freeze it together with its build process."""
    cmd = [sys.executable, "-c", _DEFAULT_SIGINT, sys.executable, str(ROOT / "cli.py"), "export", "--target", "x86",
           "--model", str(model), "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _group_states(group: int) -> list[str]:
    """The scheduler state (R, S, D, T, ...) of every thread of every live process in the process group."""
    states = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if int((process / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            states += [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in process.glob("task/*")]
        except (OSError, IndexError):  # the process or thread just ended
            continue
    return states


def _freeze(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGSTOP)
    # SIGSTOP lands asynchronously. A thread in D (e.g. a parent in vfork, waiting for a child the same signal
    # stopped before its exec) runs no user code again before it stops, so it counts as frozen.
    while not all(state in "TtDZX" for state in _group_states(proc.pid)):
        time.sleep(0.01)


def _pause_at(model_dir: Path, inside_staging: str | None, proc: subprocess.Popen,
              stale: set[Path] = frozenset()) -> None:
    """Freeze the export once its own staging folder exists (holding ``inside_staging``, if given). The point is
    checked again while the export is frozen, so however loaded the machine, the build cannot move past it before
    what the test does next; the caller resumes it with ``_resume``. Generous deadline: a loaded 2-core machine
    converts slowly."""

    def at_point() -> bool:
        staged = [p for p in model_dir.glob(".x86.tmp-*") if p not in stale]
        return bool(staged) and (inside_staging is None or (staged[0] / inside_staging).exists())

    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if at_point():
            _freeze(proc)
            if at_point():
                return
            _resume(proc)
        time.sleep(0.05)
    pytest.fail(f"export never reached {inside_staging or 'its staging folder'} (exit {proc.poll()})")


def _resume(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGCONT)


@pytest.fixture
def previous_artifact(tiny_x86, tmp_path):
    """An output folder that already holds a good x86 artifact: what a rebuild must never damage. A tiny model's:
    staging, locks and signals are the same for any model, and each interrupted export starts faster."""
    model, built = tiny_x86
    out = tmp_path / "dist"
    final = out / model.name / "x86"
    shutil.copytree(built, final)
    return out, final, (final / "manifest.json").read_bytes(), model


def _assert_intact(final: Path, manifest_bytes: bytes) -> None:
    assert (final / "manifest.json").read_bytes() == manifest_bytes
    check_files(read_artifact(final))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_export_within_seconds(previous_artifact, sig):
    out, final, manifest_bytes, model = previous_artifact
    proc = _start_export(out, model)
    _pause_at(final.parent, "model.onnx", proc)  # mid-build: the converter is busy in C++
    proc.send_signal(sig)
    started = time.time()
    _resume(proc)
    proc.wait(timeout=30)
    assert time.time() - started < 10, "export took more than 10 s to stop"
    assert proc.returncode == 130, proc.stdout.read()
    assert "interrupted" in proc.stdout.read()
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]
    _assert_intact(final, manifest_bytes)


def test_sigkill_at_any_point_keeps_the_old_artifact_and_the_next_run_sweeps(previous_artifact):
    out, final, manifest_bytes, model = previous_artifact
    for point in (None, "model.onnx", "test_vectors.json"):  # staging made, converted, verifying
        left_behind = set(final.parent.glob(".x86.tmp-*"))  # SIGKILL cannot be handled: the next run sweeps
        assert len(left_behind) == (0 if point is None else 1)
        proc = _start_export(out, model)
        _pause_at(final.parent, point, proc, stale=left_behind)
        proc.kill()  # the build process dies with it (PR_SET_PDEATHSIG), frozen or not
        proc.wait(timeout=30)
        assert not left_behind & set(final.parent.glob(".x86.tmp-*"))
        _assert_intact(final, manifest_bytes)
    proc = _start_export(out, model, "--no-verify")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]
    assert (final / "manifest.json").read_bytes() != manifest_bytes  # replaced by the new build


def test_a_second_export_into_the_same_folder_refuses(previous_artifact):
    from click.testing import CliRunner

    from cli import main

    out, final, manifest_bytes, model = previous_artifact
    first = _start_export(out, model)
    try:
        _pause_at(final.parent, None, first)  # frozen while it holds the folder's lock
        second = CliRunner().invoke(main, ["export", "--target", "x86", "--model", str(model), "--out", str(out)])
        assert second.exit_code == 2, second.output
        assert "another export" in second.stderr and "--out" in second.stderr
        assert len(list(final.parent.glob(".x86.tmp-*"))) == 1  # the second wrote nothing
    finally:
        first.send_signal(signal.SIGINT)
        _resume(first)
        first.wait(timeout=30)
    _assert_intact(final, manifest_bytes)


def test_recovery_puts_back_an_artifact_a_killed_swap_moved_aside(tmp_path):
    model_dir = tmp_path / "dist" / "m"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (model_dir / f".x86.old-{dead}").mkdir(parents=True)
    (model_dir / f".x86.old-{dead}" / "manifest.json").write_text("{}")
    (model_dir / f".gpu.tmp-{dead}").mkdir()
    (model_dir / f".apple.tmp-{os.getpid()}").mkdir()  # a live process's staging folder stays
    recover(tmp_path / "dist")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([f".apple.tmp-{os.getpid()}", "x86"])
    assert (model_dir / "x86" / "manifest.json").read_text() == "{}"


def test_disk_full_mid_write_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    import converters.onnx.quantize as onnx_converter

    real = onnx_converter.quantize_int8

    def fill_disk(model_path, out_path, *args, **kwargs):
        Path(out_path).write_bytes(b"partial")  # a half-written file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_converter, "quantize_int8", fill_disk)
    out = tmp_path / "dist"
    (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="x86", out=str(out)))
    monkeypatch.setattr(onnx_converter, "quantize_int8", real)
    assert not result.ok
    assert "disk is full" in result.error and "--out" in result.error
    assert not any(p for p in out.rglob("*") if p.is_file())


def test_a_converter_crash_on_a_nearly_full_disk_says_the_disk_is_full(tiny_models, tmp_path, monkeypatch):
    """OpenVINO and coremltools report a full disk in their own words ("basic_ios::clear: iostream error")."""
    import converters.openvino.convert as openvino_converter
    import pipelines.export as export_module

    def runtime_io_error(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino_converter, "export_fp32", runtime_io_error)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(export_module.shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=10 * 2**20))  # a disk with 10 MB left
    (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="x86-openvino", out=str(tmp_path / "dist")))
    assert not result.ok
    assert result.error.startswith("RuntimeError: basic_ios::clear: iostream error (only 10 MB free on the disk")
    assert "--out" in result.error


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
