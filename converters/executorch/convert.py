"""ExecuTorch artifact: one .pte lowered to the XNNPACK backend, with bounded dynamic batch and sequence.

Unlike litert-torch, torch.export + ExecuTorch keep symbolic dims, so one program runs any
(batch <= max_batch, sequence <= max_sequence) input; ``shapes`` is None and the bounds are in
``details``. The runtime plans activation memory for the upper bounds (``planned_memory_bytes``:
about 500 MB at 64 x 256, 63 MB at 8 x 256), so a phone app may want a smaller ``max_batch``.

int8 is PT2E with XNNPACKQuantizer: dynamic activations, symmetric per-channel int8 weights, which
covers the linear layers only. The word-embedding table (about half of the parameters) is a separate
option: XNNPACK does not run embedding lookups, so ``embedding="int8"`` stores the table as int8 rows
with one fp32 scale per row (symmetric) and looks it up with ``quantized_decomposed::embedding_byte``
(the op ExecuTorch's llama export emits for ``--embedding-quantize 8,0``), a kernel of ExecuTorch's
quantized kernel library (``quantized_ops_lib``, CMake ``EXECUTORCH_BUILD_KERNELS_QUANTIZED=ON``).
The wheel's Python runtime does not link that library, so ``load_runner`` registers it by loading
``libexecutorch_kernels_quantized.so`` from the wheel; an app's runtime must link it too, which
``details["required_kernels"]`` records for the manifest. ``embedding="fp32"`` needs no extra kernels
(a 2.5x larger file).
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter
from pathlib import Path

import torch

from converters.base import SEQUENCE_LIMIT, Calibration, Conversion
from converters.executorch import MODEL_FILE, RUNTIME, ExecuTorchOptions
from core.errors import ArtifactError, ConfigError, require
from core.graph import EmbeddingGraph, example_inputs
from core.manifest import GraphSpec

# Sample shape for tracing: inside the bounds and not 0/1, so torch.export keeps both dims symbolic.
SAMPLE_BATCH, SAMPLE_SEQUENCE = 2, 16
# Kernels outside the portable/optimized aten set and the XNNPACK delegate; an app's runtime must link them.
EXTRA_KERNEL_NAMESPACES = ("quantized_decomposed::",)


def _quantize(module: torch.fx.GraphModule, sample: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    quantizer_module = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "mobile")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "mobile")
    config = quantizer_module.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)

    class LinearOnlyQuantizer(quantizer_module.XNNPACKQuantizer):
        """A dynamic config annotates linear layers only, so the stock rewrite of scalar operands into float
        tensors serves nothing here, and it breaks integer position arithmetic (RoBERTa's cumsum positions,
        MPNet's relative buckets) by turning it float."""

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return model

    prepared = pt2e.prepare_pt2e(module, LinearOnlyQuantizer().set_global(config))
    prepared(*sample)  # dynamic activation scales need no calibration; one pass initialises the observers
    return pt2e.convert_pt2e(prepared)


def _quantize_word_embeddings(module: torch.fx.GraphModule, table: torch.Tensor) -> torch.fx.GraphModule:
    """Replace the lookup in the fp32 word-embedding table by ``embedding_byte`` on int8 rows.

    Symmetric per row (zero point 0, scale = max |row| / 127): a row's error is at most half a step of
    its own range, so rare tokens with small vectors keep their precision.
    """
    require("executorch.exir.passes._quant_patterns_and_replacements", "mobile")  # defines quantized_decomposed ops
    table = table.detach().float()
    lookups = [
        node
        for node in module.graph.nodes
        if node.op == "call_function"
        and node.target is torch.ops.aten.embedding.default
        and node.args[0].op == "get_attr"
        and _same_tensor(attrgetter(node.args[0].target)(module), table)
    ]
    if len(lookups) != 1:
        raise ArtifactError(f"expected one word-embedding lookup in the exported graph, found {len(lookups)}")
    (lookup,) = lookups
    scales = (table.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    rows = torch.round(table / scales[:, None]).clamp(-128, 127).to(torch.int8)
    module.register_buffer("word_embeddings_int8", rows)
    module.register_buffer("word_embeddings_scales", scales)
    with module.graph.inserting_before(lookup):
        quantized = module.graph.call_function(
            torch.ops.quantized_decomposed.embedding_byte.dtype,
            (
                module.graph.get_attr("word_embeddings_int8"),
                module.graph.get_attr("word_embeddings_scales"),
                None,  # zero points: symmetric
                -128,
                127,
                lookup.args[1],
            ),
            {"dtype": torch.float32},
        )
    quantized.meta = dict(lookup.meta)
    lookup.replace_all_uses_with(quantized)
    module.graph.erase_node(lookup)
    module.graph.eliminate_dead_code()  # the fp32 table's get_attr; torch.export then leaves the table out
    module.recompile()
    return module


SPLITS = (torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default, torch.ops.aten.chunk.default)


def _splits_as_slices(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Each piece of a split (ModernBERT's GLU ``chunk(2)``) as a slice of its input. Same values; but
    ExecuTorch's edge verifier turns the batch size of a ``split_with_sizes_copy`` into a constant (the trace
    sample's), which pins the program's batch bound to it."""
    graph = module.graph
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in SPLITS]:
        source, dim = node.args[0], node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        size = source.meta["val"].shape[dim]
        if not isinstance(size, int):  # a symbolic dim would need symbolic slice bounds: leave it
            continue
        arg = node.args[1]
        if node.target is torch.ops.aten.chunk.default:
            step = -(-size // arg)
            sizes = [min(step, size - i) for i in range(0, size, step)]
        elif isinstance(arg, int):
            sizes = [min(arg, size - i) for i in range(0, size, arg)]
        else:
            sizes = list(arg)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for user in list(node.users):
            index = user.args[1]
            with graph.inserting_before(user):
                piece = graph.call_function(torch.ops.aten.slice.Tensor,
                                            (source, dim, starts[index], starts[index] + sizes[index]))
            piece.meta = dict(user.meta)
            user.replace_all_uses_with(piece)
            graph.erase_node(user)
        graph.erase_node(node)
    graph.lint()
    module.recompile()
    return module


def _same_tensor(candidate: object, table: torch.Tensor) -> bool:
    return isinstance(candidate, torch.Tensor) and candidate.shape == table.shape and torch.equal(candidate, table)


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
    calibration: Calibration | None = None,  # shared signature; dynamic int8 needs none
) -> Conversion:
    max_sequence = options.max_sequence or min(spec.max_seq_length, SEQUENCE_LIMIT)
    if options.quantization not in ("int8", "fp32"):
        raise ConfigError(f"ExecuTorch quantization {options.quantization!r} is unknown (known: int8, fp32)")
    if options.embedding not in ("int8", "fp32"):
        raise ConfigError(f"ExecuTorch embedding {options.embedding!r} is unknown (known: int8, fp32)")
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
    module = _splits_as_slices(torch.export.export(graph, sample, dynamic_shapes=dims).module())
    if options.quantization == "int8":
        module = _quantize(module, sample)
    if options.embedding == "int8":
        module = _quantize_word_embeddings(module, graph.encoder.get_input_embeddings().weight)
    program = torch.export.export(module, sample, dynamic_shapes=dims)
    # Dynamically quantized linears first, then the rest (ExecuTorch's LLM recipe): one partitioner for both
    # finds dependency cycles where a quantized input feeds several linears (Qwen's q/k/v projections).
    partitioners = [xnnpack.XnnpackDynamicallyQuantizedPartitioner(), xnnpack.XnnpackPartitioner()]
    edge = exir.to_edge_transform_and_lower(program, partitioner=partitioners)
    op_counts = _op_counts(edge.exported_program())
    manager = edge.to_executorch()
    (out_dir / MODEL_FILE).write_bytes(manager.buffer)
    # The runtime allocates activations for the upper bounds up front: this grows linearly with max_batch.
    plan = manager.executorch_program.execution_plan[0]
    planned = sum(plan.non_const_buffer_sizes)
    operators = {f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators}
    required = sorted(op for op in operators if op.startswith(EXTRA_KERNEL_NAMESPACES))
    linear = (
        "PT2E XNNPACKQuantizer: int8 dynamic activations, per-channel symmetric int8 weights (linear layers)"
        if options.quantization == "int8"
        else "linear layers fp32"
    )
    table = (
        "word embeddings int8 per row (symmetric, fp32 scales; quantized_decomposed::embedding_byte)"
        if options.embedding == "int8"
        else "word embeddings fp32"
    )
    quantization = f"{linear}; {table}; position/token-type embeddings and layer norms fp32"
    return Conversion(
        model_file=MODEL_FILE,
        precision=options.quantization,
        runtime=RUNTIME,
        shapes=None,
        input_dtype="int64",
        max_sequence=max_sequence,
        details={
            "backend": "XnnpackBackend",
            "quantization": quantization if "int8" in (options.quantization, options.embedding) else None,
            "embedding": options.embedding,
            # Beyond the portable kernels and the XNNPACK delegate: the app's ExecuTorch runtime must link
            # these (quantized_ops_lib, CMake EXECUTORCH_BUILD_KERNELS_QUANTIZED=ON) or the method fails to load.
            "required_kernels": required,
            "max_batch": options.max_batch,
            "max_sequence": max_sequence,
            "planned_memory_bytes": planned,
            "delegated_subgraphs": op_counts.pop("executorch_call_delegate", 0),
            "portable_op_counts": op_counts,
        },
    )
