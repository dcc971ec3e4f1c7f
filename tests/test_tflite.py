"""The TFLite artifact of the bundled model (the session's mobile export, through the real pipeline), run in the
real LiteRT interpreter, and the converter's refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ai_edge_litert.schema_py_generated as schema
import numpy as np
import pytest
import torch

import converters.tflite.convert as tflite_convert
from converters.base import Shape
from converters.tflite import MODEL_FILE, TFLiteOptions
from core.errors import ArtifactError, ConfigError
from core.metrics import row_cosines
from pipelines.runtime import ArtifactEncoder

SENTENCES = 64


@pytest.fixture(scope="module")
def folder(mobile_export) -> Path:
    """The LiteRT artifact the mobile target writes (TFLiteOptions of targets/mobile.py), built once per session and
    shared with test_targets and test_mediapipe."""
    return Path(mobile_export["mobile/tflite"].folder)


@pytest.fixture(scope="module")
def manifest(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runner(folder):
    return ArtifactEncoder(folder, threads=2).runner


def _padded(st_model, spec, sentences: list[str], sequence: int) -> dict[str, np.ndarray]:
    encoded = st_model.tokenizer(
        sentences, padding="max_length", max_length=sequence, truncation=True, return_tensors="np"
    )
    return {name: encoded[name].astype(np.int64) for name in spec.input_names}


def _run_one(runner, inputs: dict[str, np.ndarray], row: int, sequence: int) -> np.ndarray:
    shape = next(s for s in runner.shapes if s.sequence == sequence)
    return runner.run({name: array[row : row + 1] for name, array in inputs.items()}, shape)[0]


def test_conversion_records_buckets_and_io(folder, manifest, spec):
    conversion = manifest["conversion"]
    assert manifest["file"] == MODEL_FILE and (folder / MODEL_FILE).is_file()
    assert manifest["precision"] == "int8"
    assert [(s["batch"], s["sequence"]) for s in manifest["shapes"]] == [(1, 32), (1, 64), (1, 128), (1, 256)]
    assert max(s["sequence"] for s in manifest["shapes"]) == spec.max_seq_length  # truncation matches the source
    assert {entry["dtype"] for entry in manifest["inputs"]} == {"int32"}  # litert-torch downcasts; the runner casts
    assert set(conversion["signatures"].values()) == {s["name"] for s in manifest["shapes"]}
    assert conversion["op_counts_per_signature"]["FULLY_CONNECTED"] == 6 * spec.num_hidden_layers


def test_int8_file_is_under_30_percent_of_fp32(folder, manifest, graph):
    size = (folder / MODEL_FILE).stat().st_size
    assert size <= 0.30 * manifest["conversion"]["fp32_bytes"]  # the fp32 flatbuffer of this conversion
    assert size <= 0.30 * 4 * sum(p.numel() for p in graph.parameters())


def test_int8_embeddings_match_fp32_graph(runner, graph, st_model, spec, dev_sentences):
    sentences = dev_sentences[:SENTENCES]
    lengths = [len(ids) for ids in st_model.tokenizer(sentences, truncation=True, max_length=256)["input_ids"]]
    buckets = sorted(s.sequence for s in runner.shapes)
    outputs = []
    for i, length in enumerate(lengths):
        bucket = next(b for b in buckets if b >= length)  # the smallest bucket the sentence fits, as an app would pick
        outputs.append(_run_one(runner, _padded(st_model, spec, [sentences[i]], bucket), 0, bucket))
    reference_inputs = st_model.tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        reference = graph(*(reference_inputs[name] for name in spec.input_names)).numpy()
    cos = row_cosines(np.stack(outputs), reference)
    assert cos.mean() >= 0.99, cos.mean()
    assert cos.min() >= 0.97, cos.min()


def test_padding_to_a_larger_bucket_keeps_the_embedding(runner, st_model, spec, dev_sentences):
    sentences = dev_sentences[:8]
    at32, at64 = (_padded(st_model, spec, sentences, seq) for seq in (32, 64))
    for row in range(len(sentences)):
        a, b = _run_one(runner, at32, row, 32), _run_one(runner, at64, row, 64)
        assert row_cosines(a[None], b[None])[0] > 0.999


def test_runner_rejects_unpadded_or_unknown_shapes(runner, st_model, spec, dev_sentences):
    inputs = _padded(st_model, spec, dev_sentences[:1], 40)
    with pytest.raises(ArtifactError):
        runner.run(inputs, runner.shapes[0])
    with pytest.raises(ArtifactError):
        runner.run(inputs, None)
    with pytest.raises(ArtifactError):
        runner.run(inputs, Shape(1, 40, "b1_s40"))


def test_bucket_longer_than_the_model_is_refused(graph, spec, tmp_path):
    with pytest.raises(ConfigError, match="max_seq_length"):
        tflite_convert.convert(graph, spec, tmp_path, TFLiteOptions(sequence_buckets=(128, 512)))


def test_each_linear_layer_has_its_own_op_scope(folder, graph):
    """Accuracy-aware int8 overrides layers by scope pattern: each must name exactly one FULLY_CONNECTED."""
    model = schema.Model.GetRootAs((folder / MODEL_FILE).read_bytes(), 0)
    codes = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    subgraph = model.Subgraphs(0)
    scopes = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if codes[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())] == "FULLY_CONNECTED":
            scopes.append(subgraph.Tensors(op.Outputs(0)).Name().decode())
    layers = [name for name, module in graph.named_modules()
              if isinstance(module, torch.nn.Linear) and "pooler" not in name]  # BERT's pooler is not in the graph
    assert len(layers) == len(scopes) == 36
    for layer in layers:
        pattern = tflite_convert.scope_pattern(graph, layer)
        assert sum(bool(re.search(pattern, scope)) for scope in scopes) == 1, (layer, pattern)
