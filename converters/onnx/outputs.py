"""Reshaping an exported graph's output for the libraries that read it, without converting again."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def rename_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The graph's single output under ``name`` (transformers.js reads ``last_hidden_state``)."""
    (output,) = model.graph.output
    old = output.name
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    output.name = name
    return model


def as_one_token_sequence(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The (batch, dims) embedding as a (batch, 1, dims) sequence named ``name``: libraries that pool token
    embeddings themselves (sentence-transformers' ONNX backend) then take it whole with CLS pooling."""
    (output,) = model.graph.output
    pooled = output.name
    axes = f"{name}_axes"
    model.graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
    model.graph.node.append(helper.make_node("Unsqueeze", [pooled, axes], [name], name=f"{name}_unsqueeze"))
    dims = [d for d in output.type.tensor_type.shape.dim]
    elem_type = output.type.tensor_type.elem_type
    shape = [d.dim_param or d.dim_value for d in dims]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, elem_type, [shape[0], 1, shape[1]]))
    return model
