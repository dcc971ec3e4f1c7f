"""Core ML: torch.export -> coremltools ML Program (fp16) with enumerated (batch, sequence) shapes.

Enumerated shapes rather than an open range: the Neural Engine only runs shapes Core ML can
specialise for at compile time. Core ML before iOS 18 / macOS 15 allows a single enumerated-shape
input, and this graph has two or three token inputs, so flexible shapes need iOS 18; one fixed
shape works from iOS 16.

Core ML predicts only on macOS. On Linux this module still converts, inspects the saved program,
and emulates fp16 two ways: the EmbeddingGraph in float16 PyTorch (``emulate``), and the saved
program's own ops run by coremltools' reference implementations (``load_program_executor``).
Both are emulations: neither is the Core ML runtime, the GPU or the Neural Engine.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.base import CALIBRATION_LENGTH, Calibration, Conversion, bucket_feeds, fixed_shapes
from converters.coreml import (
    FP16_FALLBACKS,
    MAX_ENUMERATED_SHAPES,
    MODEL_FILE,
    MULTI_INPUT_ENUMERATION_TARGET,
    CoreMLOptions,
    enumerated_shape,
)
from converters.coreml.runner import ProgramExecutor, summarize_program
from core.data import EDGE_TEXTS
from core.errors import ConfigError, require
from core.graph import EmbeddingGraph, example_inputs
from core.manifest import GraphSpec
from core.metrics import row_cosines


def _target(ct: Any, name: str) -> Any:
    try:
        return getattr(ct.target, name)
    except AttributeError:
        known = ", ".join(t.name for t in ct.target)
        raise ConfigError(f"Core ML deployment target {name!r} is unknown (known: {known})") from None


def check_options(options: CoreMLOptions, spec: GraphSpec) -> None:
    """Raise ConfigError before any export work if the options cannot produce a valid model."""
    ct = require("coremltools", "apple")
    count = len(fixed_shapes("Core ML", options.batch_sizes, options.sequence_buckets, spec.max_seq_length))
    if count > MAX_ENUMERATED_SHAPES:
        raise ConfigError(f"{count} (batch, sequence) shapes; Core ML allows at most {MAX_ENUMERATED_SHAPES}")
    if options.precision not in ("fp16", "fp32"):
        raise ConfigError(f"Core ML precision {options.precision!r} is not supported (fp16, fp32)")
    target = _target(ct, options.minimum_deployment_target)
    if count > 1 and len(spec.input_names) > 1 and target < ct.target.iOS18:
        raise ConfigError(
            f"{len(spec.input_names)} inputs with enumerated shapes need minimum_deployment_target "
            f"{MULTI_INPUT_ENUMERATION_TARGET} or later (Core ML before it allows one such input); "
            f"use {MULTI_INPUT_ENUMERATION_TARGET}, or a single batch size and sequence bucket"
        )


def _export(graph: EmbeddingGraph, spec: GraphSpec, pairs: list[tuple[int, int]]) -> torch.export.ExportedProgram:
    """torch.export with symbolic dims only where several sizes are enumerated (a single size stays static)."""
    batches, sequences = sorted({b for b, _ in pairs}), sorted({s for _, s in pairs})
    dims: dict[int, torch.export.Dim] = {}
    if len(batches) > 1:
        dims[0] = torch.export.Dim("batch", min=batches[0], max=batches[-1])
    if len(sequences) > 1:
        dims[1] = torch.export.Dim("sequence", min=sequences[0], max=sequences[-1])
    dynamic = {name: dims for name in spec.input_names} if dims else None
    with torch.no_grad():
        exported = torch.export.export(graph, example_inputs(spec, batches[-1], sequences[-1]), dynamic_shapes=dynamic)
    # coremltools converts only the ATEN/EDGE dialect, so decompose to core ATen first.
    return exported.run_decompositions({})


def _compute_precision(ct: Any, precision: str, fp32_ops: tuple[str, ...]) -> Any:
    if precision == "fp32":
        return ct.precision.FLOAT32
    keep = frozenset(fp32_ops)
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in keep)


def _rungs(options: CoreMLOptions) -> list[tuple[str, tuple[str, ...]]]:
    """(precision, fp32 op types) to try in order: the options as given, then the fallbacks if measured."""
    if options.precision != "fp16" or options.accuracy is None:
        return [(options.precision, options.fp32_ops)]
    rungs = [("fp16", options.fp32_ops)]
    rungs += [("fp16", tuple(dict.fromkeys(options.fp32_ops + extra))) for extra in FP16_FALLBACKS]
    return [*rungs, ("fp32", ())]


def _program_cosines(package: Path, graph: EmbeddingGraph, spec: GraphSpec, feeds: list) -> np.ndarray:
    """The saved program, op by op, against the fp32 graph on the same padded inputs."""
    executor = ProgramExecutor(package)
    got, expected = [], []
    with torch.no_grad():
        for _, feed in feeds:
            got.append(executor.run(feed))
            expected.append(graph(*(torch.from_numpy(feed[name]) for name in spec.input_names)).numpy())
    return np.nan_to_num(row_cosines(np.concatenate(got), np.concatenate(expected)), nan=-1.0)


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: CoreMLOptions,
    calibration: Calibration | None = None,  # shared signature; fp16 needs none
) -> Conversion:
    check_options(options, spec)
    ct = require("coremltools", "apple")
    pairs = fixed_shapes("Core ML", options.batch_sizes, options.sequence_buckets, spec.max_seq_length)
    started = time.perf_counter()
    exported = _export(graph, spec, pairs)

    def input_shape() -> Any:  # a fresh object per input
        return (
            ct.EnumeratedShapes(shapes=[list(p) for p in pairs], default=list(pairs[0])) if len(pairs) > 1 else pairs[0]
        )

    feeds: list = []
    if options.accuracy is not None and options.precision == "fp16":
        if calibration is None:
            raise ConfigError("checking the fp16 Core ML program needs calibration sentences; none were given")
        texts = calibration.texts(options.accuracy.sentences) + list(EDGE_TEXTS[: options.accuracy.sentences])
        feeds = bucket_feeds(calibration, texts, [enumerated_shape(b, s) for b, s in pairs],
                             min(CALIBRATION_LENGTH, max(s for _, s in pairs)))
    checks = []
    for precision, fp32_ops in _rungs(options):
        with warnings.catch_warnings():
            # clamp(min=eps) lowers to clip(beta=float32 max), which becomes +inf in fp16 (harmless);
            # real weight overflow is caught by inspect_spec's non-finite weight check instead.
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            mlmodel = ct.convert(
                exported,
                # Core ML has no int64 I/O; int32 holds any vocabulary id.
                inputs=[ct.TensorType(name=name, shape=input_shape(), dtype=np.int32) for name in spec.input_names],
                outputs=[ct.TensorType(name=spec.output_name, dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=_compute_precision(ct, precision, fp32_ops),
                minimum_deployment_target=_target(ct, options.minimum_deployment_target),
            )
        mlmodel.short_description = f"Sentence embedding ({spec.embedding_dim} dims, {spec.pooling} pooling)"
        mlmodel.user_defined_metadata.update(
            {"embedding_dim": str(spec.embedding_dim), "normalized": str(spec.normalized).lower()}
        )
        shutil.rmtree(out_dir / MODEL_FILE, ignore_errors=True)
        mlmodel.save(str(out_dir / MODEL_FILE))
        _make_reproducible(out_dir / MODEL_FILE)
        if not feeds:
            break
        cos = _program_cosines(out_dir / MODEL_FILE, graph, spec, feeds)
        checks.append({"precision": precision, "fp32_ops": list(fp32_ops), "mean_cosine": round(float(cos.mean()), 6),
                       "min_cosine": round(float(cos.min()), 6)})
        if cos.mean() >= options.accuracy.mean_cosine and cos.min() >= options.accuracy.min_cosine:
            break
    seconds = time.perf_counter() - started
    summary = summarize_program(out_dir / MODEL_FILE)
    return Conversion(
        model_file=MODEL_FILE,
        precision=precision,
        runtime="coreml",
        shapes=[enumerated_shape(b, s) for b, s in pairs],
        input_dtype="int32",
        max_sequence=max(s for _, s in pairs),
        details={
            "exporter": "torch.export + run_decompositions",
            "converter": f"coremltools {ct.__version__}",
            "model_type": summary["model_type"],
            "minimum_deployment_target": options.minimum_deployment_target,
            "fp32_ops": list(fp32_ops),
            # The saved program op by op on calibration sentences, for each precision rung tried.
            "program_checks": checks,
            "conversion_seconds": round(seconds, 1),
            "package_bytes": summary["package_bytes"],
            "op_counts": summary["op_counts"],
            "op_precisions": summary["op_precisions"],
            "weight_dtypes": summary["weight_dtypes"],
        },
    )


def _make_reproducible(package: Path) -> None:
    """Same model, same bytes: coremltools writes random item UUIDs, today's date and proto maps in hash order."""
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    items = manifest["itemInfoEntries"]
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"])) for old, entry in items.items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in items.items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True), encoding="utf-8")
    spec_path = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date", None)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
