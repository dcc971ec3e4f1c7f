"""Bad input gets one clear line on stderr and exit code 2; nothing is written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr.strip()


@pytest.fixture
def out(tmp_path):
    return tmp_path / "dist"


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_missing_model_dir(out, tmp_path):
    code, err = run("export", "--model", str(tmp_path / "nope"), "--out", str(out))
    _assert_one_line_error(code, err, "does not exist", "--model")
    assert not out.exists()


def test_dir_that_is_not_a_sentence_transformers_model(out, tmp_path):
    (tmp_path / "notamodel").mkdir()
    code, err = run("export", "--model", str(tmp_path / "notamodel"), "--out", str(out))
    _assert_one_line_error(code, err, "not a sentence-transformers model directory", "modules.json")


def test_unknown_target(out):
    code, err = run("export", "--target", "fridge", "--out", str(out))
    _assert_one_line_error(code, err, "unknown target 'fridge'", "x86")


@pytest.mark.parametrize("dims", ["0", "-3"])
def test_non_positive_dims(out, dims):
    code, err = run("export", "--dims", dims, "--out", str(out))
    _assert_one_line_error(code, err, "--dims")


def test_dims_larger_than_model(out):
    code, err = run("export", "--dims", "1000", "--out", str(out))
    _assert_one_line_error(code, err, "--dims must be between 1 and the model's dimension 384")


def test_empty_corpus(out, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n  \n")
    code, err = run("export", "--dims", "16", "--fit-corpus", str(corpus), "--out", str(out))
    _assert_one_line_error(code, err, "is empty")


def test_non_utf8_corpus(out, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    code, err = run("export", "--dims", "16", "--fit-corpus", str(corpus), "--out", str(out))
    _assert_one_line_error(code, err, "not UTF-8", "line 2")


def test_output_dir_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run("export", "--out", str(blocker))
    _assert_one_line_error(code, err, "is a file", "--out")


def test_verify_foreign_folder(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not ours")
    code, err = run("verify", str(tmp_path))
    _assert_one_line_error(code, err, "not made by this toolchain")


def test_hub_id_while_offline(out, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run("export", "--model", "someone/some-model", "--out", str(out))
    _assert_one_line_error(code, err, "HF_HUB_OFFLINE", "--model DIR")


def test_targets_command_lists_every_registered_target():
    result = CliRunner().invoke(main, ["targets"], terminal_width=200)
    assert result.exit_code == 0
    for folder in ("x86", "mobile/tflite", "mobile/executorch", "apple", "gpu"):
        assert folder in result.output


@pytest.mark.parametrize("args, needle", [
    (("export", "--dims", "abc"), "'abc' is neither a number of dimensions nor 'auto'"),
    (("export", "--isa", "sse2"), "'sse2' is not one of"),
    (("exprt",), "No such command 'exprt'"),
    (("verify",), "Missing argument 'PATH'"),
])
def test_a_mistyped_command_line_is_one_line(args, needle):
    code, err = run(*args)
    _assert_one_line_error(code, err, needle, "--help")
