"""Core ML converter on the real bundled model. Each conversion runs once per module into a tmp dir.

Core ML prediction needs macOS; on Linux the checks are structural (the saved spec) and emulated
(fp16 PyTorch, and the saved program run by coremltools' reference ops).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import converters.coreml.convert as coreml_convert
import converters.coreml.runner as coreml_runner
from converters.base import Conversion, Shape
from converters.coreml import CoreMLOptions
from core.errors import ArtifactError, ConfigError
from core.graph import EmbeddingGraph
from core.manifest import Artifact, GraphSpec, InputSpec
from core.metrics import row_cosines
from tests.manifests import manifest_for

# coremltools 9 warns about its own op registry hundreds of times per conversion.
pytestmark = pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning")

BUCKETS = (32, 64, 128, 256)
Converted = tuple[Artifact, Conversion]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, graph, spec) -> Converted:
    out = tmp_path_factory.mktemp("coreml")
    conversion = coreml_convert.convert(graph, spec, out, CoreMLOptions(sequence_buckets=BUCKETS))
    return Artifact(out, manifest_for("coreml", conversion, spec)), conversion


@pytest.fixture(scope="module")
def converted_batched(tmp_path_factory, graph, spec) -> Converted:
    """Several batch sizes (a symbolic batch dim) and LayerNorm kept in fp32."""
    out = tmp_path_factory.mktemp("coreml_batched")
    options = CoreMLOptions(sequence_buckets=(16, 32), batch_sizes=(1, 4), fp32_ops=("layer_norm",))
    conversion = coreml_convert.convert(graph, spec, out, options)
    return Artifact(out, manifest_for("coreml", conversion, spec)), conversion


def _tokenize(st_model, sentences: list[str], spec: GraphSpec, length: int | None = None) -> dict[str, np.ndarray]:
    padding = "max_length" if length else True
    encoded = st_model.tokenizer(sentences, padding=padding, max_length=length, truncation=True, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in spec.input_names}


def _reference(graph: EmbeddingGraph, feeds: dict[str, np.ndarray], spec: GraphSpec) -> np.ndarray:
    with torch.no_grad():
        return graph(*(torch.from_numpy(feeds[name]) for name in spec.input_names)).numpy()



def _bucket(length: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in sorted(buckets) if b >= length)


def test_conversion_record(converted):
    _, conversion = converted
    assert conversion.model_file == "model.mlpackage"
    assert (conversion.runtime, conversion.precision, conversion.input_dtype) == ("coreml", "fp16", "int32")
    assert conversion.shapes == [Shape(1, s, f"1x{s}") for s in BUCKETS]
    assert conversion.details["model_type"] == "mlProgram"
    assert conversion.details["minimum_deployment_target"] == "iOS18"


def test_spec_inputs_outputs_and_enumerated_shapes(converted, spec):
    artifact, _ = converted
    summary = coreml_runner.inspect_spec(artifact)
    assert [i["name"] for i in summary["inputs"]] == list(spec.input_names)
    for feature in summary["inputs"]:
        assert feature["dtype"] == "int32"
        assert feature["shapes"] == [[1, s] for s in BUCKETS]  # enumerated, not a range
    (output,) = summary["outputs"]
    assert output["name"] == spec.output_name
    assert output["dtype"] == "float32"
    assert output["dims"] == [1, spec.embedding_dim] == [1, 384]


def test_is_fp16_ml_program(converted, spec):
    artifact, _ = converted
    summary = coreml_runner.inspect_spec(artifact)
    assert summary["model_type"] == "mlProgram"
    assert summary["op_precisions"]["float16"] > 0
    assert "float32" not in summary["op_precisions"]  # no op left in fp32 by default
    assert summary["ops_by_precision"]["float16"]["linear"] == 6 * spec.num_hidden_layers
    assert set(summary["weight_dtypes"]) <= {"float16", "int32"}


@pytest.mark.parametrize(
    "change",
    [
        {"embedding_dim": 128},
        {"inputs": tuple(InputSpec(name, "int32", ("batch", "bucket"))
                         for name in ("input_ids", "mask", "token_type_ids"))},
        {"shapes": (Shape(1, 512, "1x512"),)},
        {"file": "missing.mlpackage"},
    ],
    ids=["embedding_dim", "input_names", "shapes", "missing_file"],
)
def test_inspect_rejects_a_mismatched_manifest(converted, change):
    artifact, _ = converted
    with pytest.raises(ArtifactError):
        coreml_runner.inspect_spec(Artifact(artifact.folder, replace(artifact.manifest, **change)))


def test_emulated_fp16_parity(graph, st_model, spec, dev_sentences):
    feeds = _tokenize(st_model, dev_sentences[:64], spec)
    emulated = coreml_runner.emulate(coreml_runner.half_precision_copy(graph), feeds)
    cosines = row_cosines(emulated, _reference(graph, feeds, spec))
    assert cosines.mean() >= 0.99, f"emulated fp16 mean cosine {cosines.mean():.6f}"
    assert cosines.min() >= 0.98


def test_program_execution_parity(converted, graph, st_model, spec, dev_sentences):
    """The saved program itself, op by op (emulated on this machine, not a Core ML prediction)."""
    artifact, _ = converted
    executor = coreml_runner.load_program_executor(artifact)
    assert executor.label == "emulated"
    sentences = dev_sentences[:12]
    lengths = [len(ids) for ids in st_model.tokenizer(sentences)["input_ids"]]
    emulated = np.concatenate(
        [
            executor.run(_tokenize(st_model, [s], spec, _bucket(n, BUCKETS)))
            for s, n in zip(sentences, lengths, strict=True)
        ]
    )
    cosines = row_cosines(emulated, _reference(graph, _tokenize(st_model, sentences, spec), spec))
    assert cosines.mean() >= 0.99, f"emulated program mean cosine {cosines.mean():.6f}"


def test_program_execution_refuses_a_shape_core_ml_would(converted):
    artifact, _ = converted
    executor = coreml_runner.load_program_executor(artifact)
    feeds = {name: np.zeros((1, 40), dtype=np.int64) for name in executor.input_names}
    with pytest.raises(ArtifactError, match="not one of the enumerated shapes"):
        executor.run(feeds)


def test_batched_conversion_keeps_chosen_ops_in_fp32(converted_batched, graph, st_model, spec, dev_sentences):
    artifact, conversion = converted_batched
    assert [(s.batch, s.sequence) for s in conversion.shapes] == [(1, 16), (1, 32), (4, 16), (4, 32)]
    summary = coreml_runner.inspect_spec(artifact)
    assert summary["outputs"][0]["dims"] == [None, spec.embedding_dim]  # symbolic batch
    assert summary["ops_by_precision"]["float32"] == {"layer_norm": 2 * spec.num_hidden_layers + 1}
    assert summary["op_precisions"]["float16"] > 0
    feeds = _tokenize(st_model, dev_sentences[:4], spec, 32)
    emulated = coreml_runner.load_program_executor(artifact).run(feeds)
    assert row_cosines(emulated, _reference(graph, feeds, spec)).min() >= 0.99


@pytest.mark.parametrize(
    "options",
    [
        CoreMLOptions(minimum_deployment_target="iOS17"),  # several enumerated inputs need iOS 18
        CoreMLOptions(sequence_buckets=(128, 512)),  # past max_seq_length
        CoreMLOptions(minimum_deployment_target="iOS99"),
        CoreMLOptions(sequence_buckets=()),
    ],
    ids=["ios17_enumerated", "bucket_too_long", "unknown_target", "no_buckets"],
)
def test_invalid_options_fail_before_export(spec, options):
    with pytest.raises(ConfigError):
        coreml_convert.check_options(options, spec)


def test_single_fixed_shape_allows_ios16(spec):
    coreml_convert.check_options(CoreMLOptions(sequence_buckets=(128,), minimum_deployment_target="iOS16"), spec)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS fallback")
def test_load_runner_off_macos_is_a_labelled_emulation(converted):
    artifact, _ = converted
    assert not coreml_runner.native_prediction_available()
    runner = coreml_runner.load_runner(artifact, None)
    assert runner.emulated and "emulation" in runner.description


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
def test_core_ml_prediction_matches_fp32(converted, graph, st_model, spec, dev_sentences):
    artifact, _ = converted
    runner = coreml_runner.load_runner(artifact, None)
    assert [(s.batch, s.sequence) for s in runner.shapes] == [(1, s) for s in BUCKETS]
    sentences = dev_sentences[:32]
    shape = Shape(1, 64, "1x64")
    predicted = np.concatenate([runner.run(_tokenize(st_model, [s], spec, 64), shape) for s in sentences])
    cosines = row_cosines(predicted, _reference(graph, _tokenize(st_model, sentences, spec), spec))
    assert cosines.mean() >= 0.99, f"Core ML fp16 mean cosine {cosines.mean():.6f}"
