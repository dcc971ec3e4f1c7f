"""Where commands write, and the model files that used to fail an export minutes in (issue 29).

Each class ends as one ``error:`` line, exit 2, nothing written, within seconds: an output that is a file, under one,
a symlink to nothing or unwritable; an output inside, equal to or holding what the command reads (a model folder,
an artifact, a corpus folder); an export into a folder another export holds; a safetensors header listing more
tensors than any model has; a max_seq_length past the model's position table.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from cli import main
from core.config import BuildConfig
from core.errors import ConfigError, ModelSourceError, OutputError
from core.model_files import MAX_SAFETENSORS_TENSORS, check_model_files, safetensors_header
from core.output_paths import check_output_folder
from pipelines.export import export
from pipelines.staging import output_lock
from tests.tiny_models import FAMILIES, build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
REFUSAL_S = 10
# A fixed sample in the suite (a failure is the same on every run); FUZZ_EXAMPLES=N explores N new ones.
FUZZ_EXAMPLES = os.environ.get("FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(FUZZ_EXAMPLES or 40), derandomize=FUZZ_EXAMPLES is None, deadline=None,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def refused(*args: str, needles: tuple[str, ...] = ()) -> str:
    """Run the CLI; it must end as one ``error:`` line naming ``needles``, exit 2, within REFUSAL_S seconds."""
    started = time.perf_counter()
    result = CliRunner().invoke(main, list(args))
    seconds = time.perf_counter() - started
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err
    assert seconds < REFUSAL_S, f"refused after {seconds:.1f} s: {err}"
    return err


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` and the folder itself: (size, mtime) as lstat sees them."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in (folder, *folder.rglob("*"))}


# --- fixtures: a tiny model, its x86 artifact, a copy with pickle weights, a corpus ---------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(FAMILIES["bert-max"], tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    (result,) = export(BuildConfig(model=str(tiny_model), target="x86", out=str(tmp_path_factory.mktemp("dist")),
                                   verify=False))
    assert result.ok, result.error
    return Path(result.folder)


@pytest.fixture(scope="module")
def pickle_model(tiny_model, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("pickled") / "tiny"
    shutil.copytree(tiny_model, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "texts.txt").write_text("A man plays a guitar.\nA dog runs in the park.\n", encoding="utf-8")
    return folder


def model_copy(tiny_model: Path, folder: Path) -> Path:
    copy = folder / "model"
    shutil.copytree(tiny_model, copy)
    return copy


# --- an output that cannot be a folder, or cannot be written -----------------------------------------------

def _under_a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file" / "x.npy"


def _a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file"


def _dangling_symlink(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "nowhere")
    return tmp / "link" / "vectors"


def _in_proc(tmp: Path) -> Path:
    return Path("/proc/vectors")  # no one may create files there, root included


@pytest.mark.parametrize("place, needle", [(_under_a_file, "which is a file"), (_a_file, "is a file"),
                                           (_dangling_symlink, "a symlink to a missing path"),
                                           (_in_proc, "cannot be written")])
def test_embed_into_what_cannot_be_a_folder_is_one_line(artifact, corpus, tmp_path, place, needle):
    output = place(tmp_path)
    before, artifact_before = snapshot(tmp_path), snapshot(artifact)
    refused("embed", str(artifact), "--input", str(corpus), "--output", str(output), needles=(needle, "--output"))
    assert snapshot(tmp_path) == before and snapshot(artifact) == artifact_before


def _read_only_command(folder: Path, args: list[str]) -> list[str]:
    """``args`` run with ``folder`` read-only: by its mode, or for root (whom modes do not stop) in a read-only
    bind mount of its own mount namespace; skips where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return args
    mount = f"mount --bind -o ro {folder} {folder}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && ! touch {folder}/probe"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without the right to mount: no folder can be read-only here")
    return ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *args]


def test_embed_into_a_read_only_folder_is_one_line(artifact, corpus, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    command = _read_only_command(folder, [sys.executable, "cli.py", "embed", str(artifact), "--input", str(corpus),
                                          "--output", str(folder / "vectors")])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: --output") and len(result.stderr.strip().splitlines()) == 1
    assert "cannot be written" in result.stderr and "Traceback" not in result.stderr
    assert list(folder.iterdir()) == []


# --- an output inside, equal to or holding an input ----------------------------------------------------------

@pytest.mark.parametrize("where, needle", [("inside", "is inside the artifact"), ("equal", "is the artifact"),
                                           ("holding", "holds the artifact")])
def test_embed_output_overlapping_the_artifact_is_refused_and_the_artifact_stays_intact(artifact, corpus, where,
                                                                                        needle):
    output = {"inside": artifact / "vectors", "equal": artifact, "holding": artifact.parent}[where]
    before = snapshot(artifact.parent)
    refused("embed", str(artifact), "--input", str(corpus), "--output", str(output), needles=(needle,))
    assert snapshot(artifact.parent) == before  # its checksums still hold: not one byte changed


def test_embed_output_inside_the_corpus_folder_is_refused(artifact, corpus):
    before = snapshot(corpus)
    refused("embed", str(artifact), "--input", str(corpus), "--output", str(corpus / "vectors"),
            needles=("is inside the corpus",))
    assert snapshot(corpus) == before


@pytest.mark.parametrize("where, needle", [("inside", "is inside the model folder"), ("equal", "is the model folder"),
                                           ("holding", "holds the model folder")])
def test_export_out_overlapping_the_model_folder_is_refused(tiny_model, tmp_path, where, needle):
    model = model_copy(tiny_model, tmp_path)
    out = {"inside": model / "dist", "equal": model, "holding": tmp_path}[where]
    before = snapshot(tmp_path)
    refused("export", "--target", "x86", "--model", str(model), "--out", str(out), "--no-verify",
            needles=(needle, "--out"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where, needle", [("inside", "is inside the model folder"),
                                           ("holding", "holds the model folder")])
def test_import_weights_out_overlapping_the_model_folder_is_refused(pickle_model, where, needle):
    out = {"inside": pickle_model / "converted", "holding": pickle_model.parent}[where]
    before = snapshot(pickle_model.parent)
    refused("import-weights", str(pickle_model), "--out", str(out), needles=(needle,))
    assert snapshot(pickle_model.parent) == before


def test_distill_out_inside_the_teacher_is_refused(tiny_model, tmp_path):
    teacher = model_copy(tiny_model, tmp_path)
    before = snapshot(teacher)
    refused("distill", "--teacher", str(teacher), "--layers", "1", "--out", str(teacher / "student"),
            needles=("is inside the teacher model folder",))
    assert snapshot(teacher) == before


NAMES = ["model", "sub", "beside", "afile", "to-model", "dangling", "new", "..", ".", "x" * 300]


def _sandbox(scratch: Path) -> tuple[Path, Path]:
    """root/{model/sub, model/weights.bin, beside/, afile, to-model -> model, dangling -> nowhere}, five folders
    deep in ``scratch`` so that five '..' stay inside it."""
    root = scratch.joinpath("a", "b", "c", "d", "root")
    model = root / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"weights")
    (root / "beside").mkdir()
    (root / "afile").write_text("x")
    (root / "to-model").symlink_to(model)
    (root / "dangling").symlink_to(root / "nowhere")
    return root, model


def _overlap(path: Path, other: Path) -> bool:
    a, b = os.path.realpath(path), os.path.realpath(other)
    return os.path.commonpath([a, b]) in (a, b)


@FUZZ
@given(parts=st.lists(st.sampled_from(NAMES), max_size=5))
def test_any_output_path_is_refused_in_one_line_or_safe_to_write(parts):
    """Whatever path, through files, symlinks and '..': the check refuses it in one line for a reason that holds
    (it overlaps the model, or the folder cannot be made there), or the folder can be made and written, where the
    check said, and the model folder is untouched. Plain new paths beside the model are never refused."""
    with tempfile.TemporaryDirectory() as scratch:
        root, model = _sandbox(Path(scratch))
        out = root.joinpath(*parts)
        before, model_before = snapshot(Path(scratch)), snapshot(model)
        try:
            target = check_output_folder(out, "--out", {"model folder": model})
        except OutputError as exc:
            message = str(exc)
            assert message.startswith(f"--out '{root}") and "\n" not in message, message
            assert snapshot(Path(scratch)) == before, "the check wrote something"
            assert not (parts and set(parts) <= {"beside", "sub", "new"}), message  # new or empty, beside the model
            if "model folder" in message:
                assert _overlap(out, model), message
            elif "'..'" in message:  # the kernel cannot walk it: '..' after a folder that does not exist
                assert any(p.name == ".." and not os.path.exists(p) for p in (out, *out.parents)), message
            else:
                with pytest.raises(OSError):
                    out.mkdir(parents=True, exist_ok=True)
            return
        assert snapshot(Path(scratch)) == before, "the check wrote something"
        out.mkdir(parents=True, exist_ok=True)
        (out / "written").write_text("x")
        assert Path(os.path.realpath(out)) == target
        assert not _overlap(out, model) and snapshot(model) == model_before


# --- a second export into a folder one holds -------------------------------------------------------------------

def test_an_export_into_a_held_folder_is_refused_before_the_model_loads(tiny_model, tmp_path):
    """--dims 1000 is only found wrong once the model has loaded and embedded the fit corpus: the lock's refusal
    must come first, at once."""
    out = tmp_path / "dist"
    with output_lock(out):
        (out / "kept").write_text("the first export's")
        before = snapshot(out)
        refused("export", "--target", "x86", "--model", str(tiny_model), "--dims", "1000", "--out", str(out),
                needles=("another export is writing to", "--out"))
        assert snapshot(out) == before


def test_an_export_refused_after_taking_the_lock_leaves_no_folder(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="--dims must be between 1 and the model's dimension 64"):
        export(BuildConfig(model=str(tiny_model), target="x86", dims=1000, out=str(tmp_path / "a" / "b" / "dist")))
    assert list(tmp_path.iterdir()) == []


def test_the_lock_keeps_folders_that_existed_or_were_written(tmp_path):
    existing, written = tmp_path / "existing", tmp_path / "new" / "written"
    existing.mkdir()
    with output_lock(existing):
        pass
    with output_lock(written):
        (written / "artifact").write_text("x")
    assert existing.is_dir() and (written / "artifact").is_file()


# --- model files that failed an export minutes in ------------------------------------------------------------

def write_empty_tensors(path: Path, count: int) -> None:
    """A safetensors file of ``count`` zero-size tensors: consistent, and slow to check without a cap."""
    header = json.dumps({f"{i:x}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(count)},
                        separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


@pytest.mark.parametrize("count", [MAX_SAFETENSORS_TENSORS + 1, 2 * MAX_SAFETENSORS_TENSORS])  # after, while parsing
def test_a_header_of_more_tensors_than_any_model_has_is_refused_at_once(tiny_model, tmp_path, count):
    model = model_copy(tiny_model, tmp_path)
    write_empty_tensors(model / "empty.safetensors", count)
    refused("export", "--target", "x86", "--model", str(model), "--out", str(tmp_path / "dist"),
            needles=("empty.safetensors", f"more than {MAX_SAFETENSORS_TENSORS} tensors"))
    assert not (tmp_path / "dist").exists()


def test_a_header_at_the_tensor_cap_is_read(tmp_path):
    write_empty_tensors(tmp_path / "many.safetensors", MAX_SAFETENSORS_TENSORS)
    assert len(safetensors_header(tmp_path / "many.safetensors")) == MAX_SAFETENSORS_TENSORS


@pytest.fixture(scope="module")
def sequence_model(tiny_model, tmp_path_factory) -> tuple[Path, int]:
    """A copy of the tiny model whose sentence_bert_config.json the tests rewrite; its position table's size."""
    model = model_copy(tiny_model, tmp_path_factory.mktemp("sequence"))
    return model, json.loads((model / "config.json").read_text())["max_position_embeddings"]


def set_max_seq_length(model: Path, length: int) -> None:
    path = model / "sentence_bert_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "max_seq_length": length}))


@FUZZ
@given(data=st.data())
def test_max_seq_length_past_the_position_table_is_refused_at_check_time(sequence_model, data):
    model, positions = sequence_model
    length = data.draw(st.one_of(st.sampled_from([1, positions - 1, positions, positions + 1, 10**9]),
                                 st.integers(1, 10**12)))
    set_max_seq_length(model, length)
    if length <= positions:
        assert check_model_files(model, str(model)).model_type == "bert"
        return
    with pytest.raises(ModelSourceError) as refusal:
        check_model_files(model, str(model))
    message = str(refusal.value)
    assert f"max_seq_length {length} " in message and f"model's {positions} positions" in message
    assert f"set max_seq_length to {positions} or less" in message


def test_max_seq_length_of_a_billion_is_one_line_at_once(tiny_model, tmp_path):
    model = model_copy(tiny_model, tmp_path)
    set_max_seq_length(model, 10**9)
    refused("export", "--target", "x86", "--model", str(model), "--out", str(tmp_path / "dist"),
            needles=("sentence_bert_config.json", "max_seq_length 1000000000", "128 positions"))
    assert not (tmp_path / "dist").exists()
