"""Every file the toolchain reads, damaged or made to do harm (issue 15).

Property: whatever hypothesis does to a model directory, an artifact, a release archive, a corpus or a build
config (flip bytes, truncate, rename or delete an entry, rewrite a field with a hostile value, a path out
of the folder, a symlink), the command ends with one clean ToolchainError line or a correct result: never
another exception, never a read of the honeypot folder beside the input, never a write outside the output.

Reads are watched with an audit hook (``open`` events of Python code) and by placing the honeypot where a
traversal would land; the native loaders (tokenizers, safetensors, ONNX Runtime) are handed paths only after
the checks that keep them inside.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.model_files as model_files
from cli import main
from core.config import BuildConfig
from core.data import read_corpus
from core.errors import ToolchainError
from core.manifest import read_manifest, sha256_file, write_json_atomic
from core.model_source import load_sentence_transformer
from pipelines.export import export
from pipelines.gatekeeper import verify_path
from pipelines.package import write_archive
from pipelines.preflight import check_build, preflight
from tests.tiny_models import FAMILIES, build_tiny_model

HONEYPOT = "outside"
SECRET = "secret.json"
# A fixed sample in the suite (a failure is the same on every run); FUZZ_EXAMPLES=N explores N new ones.
FUZZ_EXAMPLES = os.environ.get("FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(FUZZ_EXAMPLES or 25), derandomize=FUZZ_EXAMPLES is None, deadline=None,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_opened: list[str] = []
_watching = False


def _audit(event: str, args: tuple) -> None:
    if _watching and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def watched(honeypot: Path) -> Iterator[None]:
    """Fail if Python code opens anything under ``honeypot`` (resolved, so a symlink into it counts)."""
    global _watching
    _opened.clear()
    _watching = True
    try:
        yield
    finally:
        _watching = False
    trap = honeypot.resolve()
    leaked = [p for p in _opened if Path(p).resolve() == trap or trap in Path(p).resolve().parents]
    assert not leaked, f"read outside the folder it was given: {leaked[:3]}"


def clean_outcome(action) -> object:
    """Run ``action``: its result, or None when it refused with one ToolchainError line. Anything else fails."""
    try:
        return action()
    except ToolchainError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return None


# --- what hypothesis does to a file ----------------------------------------------------------------------------

HOSTILE_VALUES = [None, -1, 0, 10**12, 1.5, True, "", "x" * 500, [], {}, f"../{HONEYPOT}/{SECRET}",
                  f"../../{HONEYPOT}/{SECRET}", "/etc/passwd", "sub/../../x", "\u0000", {"a": [1, 2]}]


@st.composite
def byte_damage(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "empty", "garbage", "append"]))
    if kind == "flip" and data:
        out = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[position] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "garbage":
        return draw(st.binary(max_size=256))
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return b""


def _json_paths(value, prefix=()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            paths += _json_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:4]):
            paths += _json_paths(inner, (*prefix, index))
    return paths


@st.composite
def json_damage(draw, data: bytes) -> bytes:
    """A structurally valid JSON file with one field rewritten, deleted or renamed."""
    value = json.loads(data)
    paths = _json_paths(value)
    if not paths:
        return draw(byte_damage(data))
    path = draw(st.sampled_from(paths))
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["set", "delete", "rename"]))
    if action == "set" or isinstance(parent, list):
        parent[path[-1]] = draw(st.sampled_from(HOSTILE_VALUES))
    elif action == "delete":
        del parent[path[-1]]
    else:
        parent[f"{path[-1]}_"] = parent.pop(path[-1])
    return json.dumps(value).encode()


@st.composite
def damage(draw, folder: Path, files: list[str], honeypot: Path) -> str:
    """Damage one file of ``folder`` in place; returns a description for the failure message."""
    name = draw(st.sampled_from(files))
    path = folder / name
    kind = draw(st.sampled_from(["bytes", "json", "rename", "symlink"]))
    if kind == "rename":
        path.rename(path.with_name(path.name + ".bak"))
    elif kind == "symlink":
        path.unlink()
        path.symlink_to(honeypot / SECRET)
    elif kind == "json" and path.suffix == ".json":
        path.write_bytes(draw(json_damage(path.read_bytes())))
    else:
        path.write_bytes(draw(byte_damage(path.read_bytes())))
    return f"{kind} {name}"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


# --- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / HONEYPOT).mkdir()
    (root / HONEYPOT / SECRET).write_text('{"secret": true}')
    return root


@pytest.fixture(scope="module")
def tiny_model(workspace) -> Path:
    return build_tiny_model(FAMILIES["bert"], workspace / "models" / "tiny-bert")  # Dense, prompts, CLS pooling


@pytest.fixture(scope="module")
def tiny_artifact(tiny_model, workspace) -> Path:
    (result,) = export(BuildConfig(model=str(tiny_model), target="x86", out=str(workspace / "dist")))
    assert result.ok, result.error
    return Path(result.folder)


def _fresh_copy(source: Path, workspace: Path, name: str) -> Path:
    """A copy beside the honeypot, so '../outside/...' from inside it lands in the trap."""
    target = workspace / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


# --- model directories -----------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_a_damaged_model_directory_is_refused_cleanly_or_loads(tiny_model, workspace, data):
    model = _fresh_copy(tiny_model, workspace, "model-under-test")
    what = data.draw(damage(model, _files(model), workspace / HONEYPOT))
    out = workspace / "never-written"
    with watched(workspace / HONEYPOT):
        def load():
            source, _ = check_build(BuildConfig(model=str(model), out=str(out)))
            return load_sentence_transformer(source).encode(["a sentence", ""])
        clean_outcome(load)
    assert not out.exists(), what


@pytest.mark.parametrize("case, needle", [
    ("module path out of the folder", "leaves its folder"),
    ("module type outside sentence-transformers", "not a sentence-transformers module"),
    ("absurd config sizes", "hidden_size"),
    ("config larger than the weights", "do not belong together"),
    ("truncated weights", "truncated"),
    ("weights of another model", "lacks"),
    ("corrupt tokenizer", "tokenizer.json"),
    ("damaged distillation record", "distillation.json"),
])
def test_kept_aside_model_cases_are_one_line_exit_2(tiny_model, workspace, case, needle):
    model = _fresh_copy(tiny_model, workspace, "kept-aside")
    modules = json.loads((model / "modules.json").read_text())
    config = json.loads((model / "config.json").read_text())
    weights = model / "model.safetensors"
    if case == "module path out of the folder":
        modules[1]["path"] = f"../{HONEYPOT}"
    elif case == "module type outside sentence-transformers":
        modules[1]["type"] = "os.system"
    elif case == "absurd config sizes":
        config["hidden_size"] = 10**9
    elif case == "config larger than the weights":
        config.update(hidden_size=4096, intermediate_size=16384, num_hidden_layers=48)
    elif case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif case == "weights of another model":
        _rename_tensor(weights, "embeddings.word_embeddings.weight", "embeddings.word_embeddings.weighX")
    elif case == "damaged distillation record":
        (model / "distillation.json").write_text('{"teacher": "x", "kept_layers": "0,1", "teacher_layers": 2}')
    else:
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    (model / "modules.json").write_text(json.dumps(modules))
    (model / "config.json").write_text(json.dumps(config))
    out = workspace / "kept-aside-out"
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    assert not out.exists()


def test_one_export_checks_the_model_folder_once(tiny_model, workspace, monkeypatch):
    """The checked model (ModelSource.layout) travels: preflight checks the folder, and the build, in process or in
    the isolated child that is handed the checked source, reads nothing of it again to decide anything."""
    checked = []
    check_modules = model_files.check_modules
    monkeypatch.setattr(model_files, "check_modules", lambda path: checked.append(path) or check_modules(path))
    config = BuildConfig(model=str(tiny_model), target="all", out=str(workspace / "checked-once"))
    source, _, refused = preflight(config)  # every target's formats asked whether they refuse it (MediaPipe reads)
    assert len(checked) == 1 and not refused
    (child,) = export(replace(config, target="x86"), source=source)  # what export_isolated's child runs
    assert child.ok and len(checked) == 1
    (in_process,) = export(replace(config, target="gpu"))
    assert in_process.ok and len(checked) == 2


def _rename_tensor(path: Path, old: str, new: str) -> None:
    """Rename a tensor in a safetensors header; same length, so every offset still holds."""
    assert len(old) == len(new)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(f'"{old}"'.encode(), f'"{new}"'.encode(), 1))


# --- artifacts -------------------------------------------------------------------------------------------------

def _resign(artifact: Path) -> None:
    """What an attacker who edits a file also does: rewrite the manifest's checksums to match."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    files = {p.relative_to(artifact).as_posix(): p for p in artifact.rglob("*")
             if p.is_file() and not p.is_symlink() and p.name not in ("manifest.json", "report.md")}
    manifest["files"] = {name: sha256_file(path) for name, path in files.items()}
    manifest["file_bytes"] = {name: path.stat().st_size for name, path in files.items()}
    write_json_atomic(artifact / "manifest.json", manifest)


@FUZZ
@given(data=st.data())
def test_a_damaged_artifact_is_refused_cleanly_or_verified(tiny_artifact, tiny_model, workspace, data):
    artifact = _fresh_copy(tiny_artifact, workspace, "artifact-under-test")
    files = [f for f in _files(artifact) if f != "report.md"]
    what = data.draw(damage(artifact, files, workspace / HONEYPOT))
    resigned = "manifest.json" not in what and data.draw(st.booleans())
    if resigned:
        _resign(artifact)
    with watched(workspace / HONEYPOT):
        rows = clean_outcome(lambda: verify_path(artifact, model=str(tiny_model), limit=20))
    if rows is not None and not resigned and what.split()[0] in ("bytes", "rename", "symlink"):
        (row,) = rows
        changed = what.split()[1] != "manifest.json"
        assert not (changed and row["ok"]), f"{what}: a changed file passed the checksums"


@pytest.mark.parametrize("field_path, value", [
    (("file",), f"../../{HONEYPOT}/{SECRET}"),
    (("file",), "/etc/passwd"),
    (("tokenizer", "file"), f"../../{HONEYPOT}/{SECRET}"),
    (("files",), {f"../../{HONEYPOT}/{SECRET}": "0" * 64}),
    (("embedding_dim",), "384"),
    (("gate",), {"min_cosine": "0"}),
])
def test_kept_aside_manifest_cases_are_one_line_exit_2(tiny_artifact, workspace, field_path, value):
    artifact = _fresh_copy(tiny_artifact, workspace / "nested", "kept-aside-artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    target = manifest
    for key in field_path[:-1]:
        target = target[key]
    target[field_path[-1]] = value
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with watched(workspace / HONEYPOT):
        result = CliRunner().invoke(main, ["verify", "--quick", str(artifact)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "manifest.json" in result.stderr, result.stderr


def test_a_symlink_inside_an_artifact_is_refused(tiny_artifact, workspace):
    artifact = _fresh_copy(tiny_artifact, workspace, "linked-artifact")
    (artifact / "tokenizer_config.json").unlink()
    (artifact / "tokenizer_config.json").symlink_to(workspace / HONEYPOT / SECRET)
    with watched(workspace / HONEYPOT):
        result = CliRunner().invoke(main, ["verify", "--quick", str(artifact)])
    assert result.exit_code == 2 and "symlink" in result.stderr, result.output


# --- release archives ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_archive(tiny_artifact, workspace) -> Path:
    return write_archive(tiny_artifact, workspace / "release" / "tiny-x86.tar.gz")


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


@st.composite
def hostile_archive(draw, archive: Path, out: Path) -> str:
    members = _members(archive)
    kind = draw(st.sampled_from(["bytes", "symlink", "hardlink", "device", "fifo", "escape", "absolute",
                                 "duplicate", "oversized", "unlisted", "renamed"]))
    if kind == "bytes":
        out.write_bytes(draw(byte_damage(archive.read_bytes())))
        return kind
    files = [i for i, (m, _) in enumerate(members) if m.isfile()]
    index = draw(st.sampled_from(files))
    member, payload = members[index]
    root = members[0][0].name
    extra = tarfile.TarInfo(f"{root}/extra.bin")
    extra_payload = b"x" * 10
    if kind in ("symlink", "hardlink"):
        extra.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        extra.linkname = f"../../{HONEYPOT}/{SECRET}" if kind == "symlink" else "/etc/passwd"
        extra_payload = None
    elif kind in ("device", "fifo"):
        extra.type = tarfile.CHRTYPE if kind == "device" else tarfile.FIFOTYPE
        extra_payload = None
    elif kind == "escape":
        extra.name = f"{root}/../../{HONEYPOT}/planted.json"
    elif kind == "absolute":
        extra.name = str(out.parent / "planted.json")
    elif kind == "duplicate":
        extra, extra_payload = copy.copy(member), b"{}"
    elif kind == "oversized":
        payload = payload + b"\0" * (8 << 20)  # past every cap
    elif kind == "renamed":
        member.name = member.name + ".bak"
    member.size = len(payload)
    members[index] = (member, payload)
    if extra_payload is not None:
        extra.size = len(extra_payload)
    with tarfile.open(out, "w:gz") as tar:
        for m, p in members:
            tar.addfile(m, io.BytesIO(p) if p is not None else None)
        if kind not in ("oversized", "renamed"):
            tar.addfile(extra, io.BytesIO(extra_payload) if extra_payload is not None else None)
    return kind


@FUZZ
@given(data=st.data())
def test_a_damaged_release_archive_is_refused_cleanly_or_verified(tiny_archive, tiny_model, workspace, data):
    scratch = workspace / "archives"
    scratch.mkdir(exist_ok=True)
    evil = scratch / "evil.tar.gz"
    kind = data.draw(hostile_archive(tiny_archive, evil))
    before = _snapshot(workspace / HONEYPOT)
    with watched(workspace / HONEYPOT):
        rows = clean_outcome(lambda: verify_path(evil, model=str(tiny_model), limit=20))
    assert _snapshot(workspace / HONEYPOT) == before, kind
    assert not (scratch / "planted.json").exists(), kind
    if kind != "bytes":
        assert rows is None or not rows[0]["ok"], f"{kind}: a hostile archive passed"


# --- corpora and build configs ---------------------------------------------------------------------------------

@FUZZ
@given(raw=st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_corpus_bytes_read_cleanly(tmp_path, raw):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(raw)
    sentences = clean_outcome(lambda: read_corpus(corpus))
    assert sentences is None or all(s and s == s.strip() for s in sentences)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
                       | st.sampled_from(HOSTILE_VALUES[:12]),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                     max_size=3), max_leaves=8)
BUILD_KEYS = ["model", "target", "dims", "max_drop", "fit_corpus", "quantization", "isa", "out", "verify"]


@FUZZ
@given(build=st.dictionaries(st.sampled_from(BUILD_KEYS), JSONISH, max_size=4), wrap=st.booleans())
def test_any_build_config_is_refused_cleanly_or_checked(tmp_path, workspace, build, wrap):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"build": build} if wrap else build))
    with watched(workspace / HONEYPOT):
        config = clean_outcome(lambda: BuildConfig.from_file(config_file))
        if config is not None:
            clean_outcome(lambda: check_build(config))


@pytest.mark.parametrize("special", ["/dev/zero", "directory"])
def test_a_corpus_that_is_not_a_file_is_refused(tmp_path, special):
    path = tmp_path if special == "directory" else Path(special)
    result = CliRunner().invoke(main, ["export", "--dims", "8", "--fit-corpus", str(path), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a regular file" in result.stderr, result.output


def test_manifest_round_trip_still_reads(tiny_artifact):
    assert read_manifest(tiny_artifact).file_bytes["model.onnx"] == (tiny_artifact / "model.onnx").stat().st_size
