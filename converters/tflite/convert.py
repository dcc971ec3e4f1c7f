"""TFLite (LiteRT) artifact: litert-torch converts the EmbeddingGraph, ai-edge-quantizer quantizes it.

Fixed shapes: litert-torch 0.10 cannot lower a symbolic sequence length (its int64->int32 pass and
the JAX lowering both fail on symbolic dims), so the model is traced once per (batch, sequence)
bucket. The largest default bucket equals the source model's max_seq_length, so truncation matches.

One file, one signature per bucket, rather than one file per bucket: litert-torch merges the
signatures into one flatbuffer and stores each constant once, so every bucket shares the weights.
With four buckets the int8 file is about 27 MB, whereas four single-bucket files would be about
22 MB each. An app picks the bucket by signature name (see ``details["signatures"]``).

Quantization runs as a separate step on the fp32 flatbuffer (this is exactly what litert-torch's
``full_dynamic_recipe`` does internally; the bytes are identical) so the fp32 size is measured in
the same conversion and recorded. "int8" is dynamic-range: int8 per-channel weights, activations
quantized on the fly. PT2E int8 is not offered: it converts, but the interpreter rejects its
EMBEDDING_LOOKUP (non-zero zero point).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from converters.base import (
    CALIBRATION_LENGTH,
    AccuracyTarget,
    Calibration,
    Conversion,
    Shape,
    bucket_feeds,
    fixed_shapes,
)
from converters.sensitivity import KeptLayerSearch
from converters.tflite import MODEL_FILE, RECIPES, RUNTIME, TFLiteOptions, signature_name
from converters.tflite.runner import TFLiteRunner
from core.data import EDGE_TEXTS
from core.errors import ConfigError, require
from core.graph import EmbeddingGraph, example_inputs
from core.manifest import GraphSpec
from core.metrics import row_cosines


class _NamedOutput(nn.Module):
    """litert-torch names signature outputs after the keys of a returned dict; otherwise they are 'output_0'."""

    def __init__(self, graph: EmbeddingGraph, output_name: str) -> None:
        super().__init__()
        self.embedding = graph  # not "graph": torch.export unlifting reserves that name
        self.output_name = output_name

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {self.output_name: self.embedding(input_ids, attention_mask, token_type_ids)}


def _validate(options: TFLiteOptions) -> None:
    if options.quantization not in RECIPES:
        raise ConfigError(f"TFLite quantization {options.quantization!r} is unknown (known: {', '.join(RECIPES)})")


def _op_counts(model: bytes, subgraph: int) -> dict[str, int]:
    """Builtin op histogram of one signature's subgraph (all buckets have the same ops)."""
    schema = require("ai_edge_litert.schema_py_generated", "mobile")
    parsed = schema.Model.GetRootAs(model, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    graph = parsed.Subgraphs(subgraph)
    counts: Counter[str] = Counter()
    for i in range(graph.OperatorsLength()):
        code = parsed.OperatorCodes(graph.Operators(i).OpcodeIndex())
        # Small op codes live in the deprecated int8 field; the larger of the two is the real one.
        counts[names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]] += 1
    return dict(sorted(counts.items()))


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: TFLiteOptions,
    calibration: Calibration | None = None,  # shared signature; dynamic-range int8 needs none
) -> Conversion:
    _validate(options)
    pairs = fixed_shapes("TFLite", options.batch_sizes, options.sequence_buckets, spec.max_seq_length)
    litert_torch = require("litert_torch", "mobile")
    shapes = [Shape(batch, seq, signature_name(batch, seq)) for batch, seq in pairs]
    module = _NamedOutput(graph, spec.output_name).eval()
    converter = litert_torch.Converter()
    for shape in shapes:
        sample = dict(zip(spec.input_names, example_inputs(spec, shape.batch, shape.sequence), strict=True))
        converter.signature(shape.name, module, sample_kwargs=sample)
    fp32_model = converter.convert().model_content()

    recipe_name = RECIPES[options.quantization]
    model, accuracy_aware = fp32_model, None
    if recipe_name is not None and options.accuracy is not None and options.quantization == "int8":
        if calibration is None:
            raise ConfigError("accuracy-aware TFLite int8 needs calibration sentences; none were given")
        model, accuracy_aware = _quantize_accuracy_aware(graph, spec, fp32_model, shapes, options.accuracy,
                                                         calibration, out_dir)
    elif recipe_name is not None:
        model = _quantize(fp32_model, _recipe(recipe_name))
    (out_dir / MODEL_FILE).write_bytes(model)

    # Read the I/O back from the written file, so the manifest states what the runtime will see.
    interpreter = require("ai_edge_litert.interpreter", "mobile").Interpreter(model_path=str(out_dir / MODEL_FILE))
    first = interpreter.get_signature_runner(shapes[0].name)
    input_dtype = np.dtype(first.get_input_details()[spec.input_names[0]]["dtype"]).name
    return Conversion(
        model_file=MODEL_FILE,
        precision=options.quantization,
        runtime=RUNTIME,
        shapes=shapes,
        input_dtype=input_dtype,
        max_sequence=max(s.sequence for s in shapes),
        details={
            "converter": "litert-torch",
            "quantization_recipe": f"ai_edge_quantizer.recipe.{recipe_name}" if recipe_name else None,
            "fp32_bytes": len(fp32_model),
            "size_ratio_to_fp32": round(len(model) / len(fp32_model), 4),
            "signatures": {f"{s.batch}x{s.sequence}": s.name for s in shapes},
            "op_counts_per_signature": _op_counts(model, 0),
            "accuracy_aware": accuracy_aware,
        },
    )


def _recipe(name: str) -> list[dict]:
    return getattr(require("ai_edge_quantizer.recipe", "mobile"), name)()


def _quantize(fp32_model: bytes, recipe: list[dict]) -> bytes:
    quantizer = require("ai_edge_quantizer.quantizer", "mobile")
    result = quantizer.Quantizer(fp32_model, recipe).quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def scope_pattern(root: nn.Module, path: str) -> str:
    """The regex of the op scope litert-torch gives the linear module at ``path`` below ``root``: one segment
    'Class_attribute' per module (a list's elements as 'Class_index'; the list itself adds none).

    An op's tensor name lists several scopes joined by ';;' (a key projection's also names the query's); its
    own is the first scope of a linear layer, so the pattern skips only scopes that are not one."""
    segments, module = [], root
    for part in path.split("."):
        module = module._modules[part]
        if not isinstance(module, CONTAINERS):
            segments.append(f"[^/;]*{re.escape(type(module).__name__)}_{re.escape(part)}")
    not_linear = r"(?:(?!\.Linear_)[^;])*;;"
    return f"^(?:{not_linear})*(?:[^;]*/)?" + "/".join(segments) + "(;|$)"


def _quantize_accuracy_aware(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    fp32_model: bytes,
    shapes: list[Shape],
    target: AccuracyTarget,
    calibration: Calibration,
    scratch: Path,
) -> tuple[bytes, dict]:
    """Dynamic-range int8, with the most sensitive linear layers weight-only int8 (fp32 compute) until LiteRT
    reaches ``target`` on calibration sentences and odd texts (converters.sensitivity)."""
    length = min(CALIBRATION_LENGTH, max(s.sequence for s in shapes))
    sentences = calibration.batches(target.sentences, 32, length)
    search = KeptLayerSearch(graph, spec.input_names, sentences, calibration.edge_texts(length), target,
                             activations="row", shared=calibration.shared)
    texts = calibration.texts(target.sentences) + list(EDGE_TEXTS)
    feeds = bucket_feeds(calibration, texts, shapes, length)
    dynamic, weight_only = _recipe(RECIPES["int8"]), _recipe(RECIPES["int8-weight-only"])[0]
    model = b""

    def measure(layers: list[str]) -> np.ndarray:
        nonlocal model
        kept = [{**weight_only, "regex": scope_pattern(graph, layer), "operation": "FULLY_CONNECTED"}
                for layer in layers]
        model = _quantize(fp32_model, dynamic + kept)
        path = scratch / ".accuracy-probe.tflite"
        path.write_bytes(model)
        try:
            runner = TFLiteRunner(path, shapes, None)
            got = np.concatenate([runner.run(feed, shape) for shape, feed in feeds])
        finally:
            path.unlink(missing_ok=True)
        return np.nan_to_num(row_cosines(got, search.reference), nan=-1.0)

    record = search.record(search.confirm(measure))  # leaves the last step's model in ``model``
    return model, {**record, "kept_as": "weight-only int8 (fp32 compute)"}
