"""ExecuTorch artifact: one .pte lowered to the XNNPACK backend, with bounded dynamic batch and sequence.

Unlike litert-torch, torch.export + ExecuTorch keep symbolic dims, so one program runs any
(batch <= max_batch, sequence <= max_sequence) input; ``shapes`` is None and the bounds are in
``details``. The runtime plans activation memory for the upper bounds (``planned_memory_bytes``:
about 500 MB at 64 x 256, 63 MB at 8 x 256), so a phone app may want a smaller ``max_batch``.

int8 is PT2E with XNNPACKQuantizer: dynamic activations, symmetric per-channel int8 weights, which
covers the linear layers only. The word-embedding table (about half of the parameters) stays fp32:
XNNPACK does not run embedding lookups, and the portable ``quantized_decomposed::embedding_byte``
kernel is not registered in the Python runtime of the executorch wheel, so an int8 table could not
be run in the real runtime here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from converters import Conversion, Shape
from pipelines.errors import ArtifactError, ConfigError, require
from pipelines.graph import EmbeddingGraph, GraphSpec, example_inputs

MODEL_FILE = "model.pte"
RUNTIME = "executorch"
METHOD = "forward"
ADDITIVE_MASK = True  # with transformers' own mask, lowering fails ("tensors used as indices must be long...")
# Sample shape for tracing: inside the bounds and not 0/1, so torch.export keeps both dims symbolic.
SAMPLE_BATCH, SAMPLE_SEQUENCE = 2, 16


@dataclass(frozen=True)
class ExecuTorchOptions:
    quantization: Literal["int8", "fp32"] = "int8"
    max_batch: int = 64
    max_sequence: int | None = None  # None: the model's max_seq_length


def _quantize(
    program: torch.export.ExportedProgram, sample: tuple[torch.Tensor, ...], dims: tuple
) -> torch.export.ExportedProgram:
    quantizer_module = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "mobile")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "mobile")
    config = quantizer_module.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    prepared = pt2e.prepare_pt2e(program.module(), quantizer_module.XNNPACKQuantizer().set_global(config))
    prepared(*sample)  # dynamic activation scales need no calibration; one pass initialises the observers
    return torch.export.export(pt2e.convert_pt2e(prepared), sample, dynamic_shapes=dims)


def _op_counts(edge_program: torch.export.ExportedProgram) -> dict[str, int]:
    """Ops left outside XNNPACK (run by portable kernels), plus the number of delegated subgraphs."""
    counts: Counter[str] = Counter()
    for node in edge_program.graph.nodes:
        if node.op == "call_function" and node.target.__name__ != "getitem":
            counts[node.target.__name__] += 1
    return dict(sorted(counts.items()))


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: ExecuTorchOptions,
    calibration: list[dict[str, np.ndarray]] | None = None,  # shared signature; dynamic int8 needs none
) -> Conversion:
    max_sequence = options.max_sequence or spec.max_seq_length
    if options.quantization not in ("int8", "fp32"):
        raise ConfigError(f"ExecuTorch quantization {options.quantization!r} is unknown (known: int8, fp32)")
    if options.max_batch < SAMPLE_BATCH or not SAMPLE_SEQUENCE <= max_sequence <= spec.max_seq_length:
        raise ConfigError(
            f"ExecuTorch bounds need max_batch >= {SAMPLE_BATCH} and {SAMPLE_SEQUENCE} <= max_sequence <= "
            f"{spec.max_seq_length} (the model's max_seq_length); got {options.max_batch}, {max_sequence}"
        )
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "mobile")
    exir = require("executorch.exir", "mobile")

    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    sequence = torch.export.Dim("sequence", min=1, max=max_sequence)
    sample = example_inputs(spec, SAMPLE_BATCH, SAMPLE_SEQUENCE)
    dims = tuple({0: batch, 1: sequence} for _ in sample)
    program = torch.export.export(graph, sample, dynamic_shapes=dims)
    if options.quantization == "int8":
        program = _quantize(program, sample, dims)
    edge = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()])
    op_counts = _op_counts(edge.exported_program())
    manager = edge.to_executorch()
    (out_dir / MODEL_FILE).write_bytes(manager.buffer)
    # The runtime allocates activations for the upper bounds up front: this grows linearly with max_batch.
    planned = sum(manager.executorch_program.execution_plan[0].non_const_buffer_sizes)
    quantization = (
        "PT2E XNNPACKQuantizer: int8 dynamic activations, per-channel symmetric int8 weights (linear layers); "
        "embeddings and layer norms fp32"
    )
    return Conversion(
        model_file=MODEL_FILE,
        precision=options.quantization,
        runtime=RUNTIME,
        shapes=None,
        input_dtype="int64",
        details={
            "backend": "XnnpackBackend",
            "quantization": quantization if options.quantization == "int8" else None,
            "max_batch": options.max_batch,
            "max_sequence": max_sequence,
            "planned_memory_bytes": planned,
            "delegated_subgraphs": op_counts.pop("executorch_call_delegate", 0),
            "portable_op_counts": op_counts,
        },
    )


class ExecuTorchRunner:
    """The program's ``forward`` in ExecuTorch's Python runtime (XNNPACK delegate built in)."""

    shapes: list[Shape] | None = None

    def __init__(self, model_path: Path, input_names: list[str], threads: int | None) -> None:
        runtime_module = require("executorch.runtime", "mobile")
        if threads:
            # Process-wide: ExecuTorch's Python bindings expose only a global thread pool.
            require("executorch.extension.pybindings.portable_lib", "mobile")._unsafe_reset_threadpool(threads)
        self._program = runtime_module.Runtime.get().load_program(model_path)  # the method needs it alive
        self._method = self._program.load_method(METHOD)
        self._input_names = input_names
        self._bounds = tuple(self._method.metadata.input_tensor_meta(0).sizes())  # the planned upper bounds
        self.description = f"executorch {metadata.version('executorch')} (XNNPACK delegate)"

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.int64)) for name in self._input_names]
        batch, sequence = tensors[0].shape
        if batch > self._bounds[0] or sequence > self._bounds[1]:
            raise ArtifactError(
                f"input {batch}x{sequence} exceeds this program's bounds {self._bounds[0]}x{self._bounds[1]}; "
                "split the batch or truncate the tokens"
            )
        return self._method.execute(tensors)[0].numpy()


def load_runner(artifact_dir: Path, manifest: dict, threads: int | None) -> ExecuTorchRunner:
    names = [spec["name"] for spec in manifest["inputs"]]
    return ExecuTorchRunner(Path(artifact_dir) / manifest["file"], names, threads)
