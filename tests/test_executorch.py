"""The ExecuTorch artifact of the bundled model (the session's mobile export, through the real pipeline), run in
ExecuTorch's own runtime (XNNPACK), and the converter's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import converters.executorch.convert as executorch_convert
import converters.executorch.runner as executorch_runner
from converters.executorch import EMBEDDING_KERNEL, MODEL_FILE, ExecuTorchOptions
from core.errors import ArtifactError, ConfigError
from core.metrics import row_cosines
from pipelines.runtime import ArtifactEncoder

SENTENCES = 512  # parity of the int8 tables on ~500 STS-B dev sentences
BATCH = 32


@pytest.fixture(scope="module")
def folder(mobile_export) -> Path:
    """The ExecuTorch artifact the mobile target writes (ExecuTorchOptions of targets/mobile.py), built once per
    session and shared with test_targets and test_mediapipe."""
    return Path(mobile_export["mobile/executorch"].folder)


@pytest.fixture(scope="module")
def manifest(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runner(folder):
    return ArtifactEncoder(folder, threads=2).runner


def _encode(st_model, spec, sentences: list[str], padding: bool | str = True, length: int = 0) -> dict[str, np.ndarray]:
    encoded = st_model.tokenizer(
        sentences, padding=padding, truncation=True, max_length=length or spec.max_seq_length, return_tensors="np"
    )
    return {name: encoded[name].astype(np.int64) for name in spec.input_names}


def test_conversion_records_dynamic_bounds(folder, manifest, spec):
    conversion = manifest["conversion"]
    assert manifest["file"] == MODEL_FILE and (folder / MODEL_FILE).is_file()
    assert manifest["precision"] == "int8"
    assert manifest["shapes"] is None  # any shape within the bounds
    assert {entry["dtype"] for entry in manifest["inputs"]} == {"int64"}
    # The bounds the target asked for (its batch bound, the model's own sequence limit).
    assert (conversion["max_batch"], conversion["max_sequence"]) == (manifest["options"]["max_batch"],
                                                                     spec.max_seq_length)
    assert conversion["delegated_subgraphs"] > 0
    assert conversion["embedding"] == "int8"
    # The app's runtime must link the quantized kernels for the int8 word-embedding lookup.
    assert conversion["required_kernels"] == [EMBEDDING_KERNEL]
    assert conversion["portable_op_counts"]["quantized_decomposed.embedding_byte.dtype"] == 1


def test_linear_and_embedding_weights_are_int8(folder, graph):
    fp32_bytes = 4 * sum(p.numel() for p in graph.parameters())
    # Linear layers and the word-embedding table (together ~99% of the parameters) at 1 byte each: ~0.26.
    # With an fp32 table the file would be ~0.64 of the fp32 graph.
    assert (folder / MODEL_FILE).stat().st_size <= 0.3 * fp32_bytes


def test_int8_embeddings_match_fp32_graph(runner, graph, st_model, spec, dev_sentences):
    sentences = dev_sentences[:SENTENCES]
    outputs, references = [], []
    for start in range(0, len(sentences), BATCH):
        inputs = _encode(st_model, spec, sentences[start : start + BATCH])  # per-batch padding
        outputs.append(runner.run(inputs, None))
        with torch.no_grad():
            references.append(graph(*(torch.from_numpy(inputs[name]) for name in spec.input_names)).numpy())
    cos = row_cosines(np.concatenate(outputs), np.concatenate(references))
    assert cos.mean() >= 0.998, cos.mean()
    assert cos.min() >= 0.99, cos.min()


def test_padding_and_batch_size_keep_the_embedding(runner, st_model, spec, dev_sentences):
    sentences = dev_sentences[:8]
    at32 = runner.run(_encode(st_model, spec, sentences, "max_length", 32), None)
    at64 = runner.run(_encode(st_model, spec, sentences, "max_length", 64), None)
    alone = np.concatenate([runner.run(_encode(st_model, spec, [s]), None) for s in sentences[:2]])
    assert row_cosines(at32, at64).min() > 0.999
    assert row_cosines(alone, at32[:2]).min() > 0.999


def test_upper_bounds_run(manifest, runner, st_model, spec, dev_sentences):
    sentences = dev_sentences[:4]
    copies = manifest["conversion"]["max_batch"] // len(sentences)
    at32 = runner.run(_encode(st_model, spec, sentences, "max_length", 32), None)
    full = _encode(st_model, spec, sentences * copies, "max_length", spec.max_seq_length)  # both bounds
    assert next(iter(full.values())).shape == (manifest["conversion"]["max_batch"], spec.max_seq_length)
    assert row_cosines(runner.run(full, None), np.tile(at32, (copies, 1))).min() > 0.999


def test_quantized_kernels_registration_is_idempotent():
    assert executorch_runner.register_quantized_kernels()
    assert executorch_runner.register_quantized_kernels()


def test_runner_refuses_inputs_beyond_the_bounds(manifest, runner, spec):
    too_long = {name: np.ones((1, spec.max_seq_length + 1), dtype=np.int64) for name in spec.input_names}
    too_many = {name: np.ones((manifest["conversion"]["max_batch"] + 1, 8), dtype=np.int64)
                for name in spec.input_names}
    for inputs in (too_long, too_many):
        with pytest.raises(ArtifactError, match="bounds"):
            runner.run(inputs, None)


def test_bounds_beyond_the_model_are_refused(graph, spec, tmp_path):
    with pytest.raises(ConfigError, match="max_sequence"):
        executorch_convert.convert(graph, spec, tmp_path, ExecuTorchOptions(max_sequence=512))


def test_unknown_embedding_option_is_refused(graph, spec, tmp_path):
    with pytest.raises(ConfigError, match="embedding"):
        executorch_convert.convert(graph, spec, tmp_path, ExecuTorchOptions(embedding="int4"))
