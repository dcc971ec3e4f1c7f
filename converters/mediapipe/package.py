"""The .tflite file MediaPipe's TextEmbedder opens: one subgraph, three int32 inputs (ids, mask, segment ids),
every buffer inside the flatbuffer, TFLite Model Metadata naming the inputs' roles and the BERT tokenizer, and
the vocabulary as a zip appended to the flatbuffer (how MediaPipe packs associated files).

Written here with the schemas' own object API rather than mediapipe's MetadataWriter, whose import fails on a
module missing from the 1.2.2 wheel (``_pywrap_metadata_version``, used only to compute the minimum parser
version, which is fixed for what is written here) and whose populator drops buffers that litert-torch stores
after the flatbuffer ("buffer N specified an out of range offset").
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import flatbuffers
import numpy as np

from core.errors import ArtifactError, require

VOCAB_FILE = "vocab.txt"
MAX_VOCAB_BYTES = 16 << 20  # 250k-token vocabularies are a few MB
# Input roles by the graph's input names; MediaPipe tells them apart by these metadata names.
INPUT_ROLES = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "segment_ids"}
METADATA_NAME = "TFLITE_METADATA"
# BertTokenizerOptions and input process units arrived in metadata parser version 1.1.0; nothing newer is used.
MIN_PARSER_VERSION = "1.1.0"


def _schema():
    return require("ai_edge_litert.schema_py_generated", "mobile")


def _metadata_schema():
    return require("mediapipe.tasks.metadata.metadata_schema_py_generated", "mobile")


def _role(tensor_name: str) -> str:
    """A signature's input tensors are named '<signature>_<input>'."""
    for graph_name, role in INPUT_ROLES.items():
        if tensor_name.endswith(graph_name):
            return role
    raise ArtifactError(f"the TFLite input {tensor_name!r} is none of {', '.join(INPUT_ROLES)}")


def _tensor_metadata(name: str, description: str):
    md = _metadata_schema()
    tensor = md.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = md.ContentT()
    tensor.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    tensor.content.contentProperties = md.FeaturePropertiesT()
    tensor.stats = md.StatsT()
    return tensor


def metadata_buffer(roles: Sequence[str], output_count: int, description: str) -> bytes:
    """ModelMetadata: the inputs' roles in the model's input order, the BERT tokenizer with its vocabulary."""
    md = _metadata_schema()
    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_tensor_metadata(role, role) for role in roles]
    subgraph.outputTensorMetadata = [_tensor_metadata("embedding", description) for _ in range(output_count)]
    vocab = md.AssociatedFileT()
    vocab.name, vocab.type = VOCAB_FILE, md.AssociatedFileType.VOCABULARY
    vocab.description = "WordPiece vocabulary: line i is token id i"
    tokenizer = md.ProcessUnitT()
    tokenizer.optionsType = md.ProcessUnitOptions.BertTokenizerOptions
    tokenizer.options = md.BertTokenizerOptionsT()
    tokenizer.options.vocabFile = [vocab]
    subgraph.inputProcessUnits = [tokenizer]
    model = md.ModelMetadataT()
    model.name, model.description = "sentence embedding", description
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"M001")
    return bytes(builder.Output())


def _inline_buffers(model, raw: bytes) -> None:
    """Move buffers stored after the flatbuffer (offset/size) into it."""
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            if buffer.offset + buffer.size > len(raw):
                raise ArtifactError("a TFLite buffer points past the end of the file; the conversion is damaged")
            buffer.data = np.frombuffer(raw, np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.offset = buffer.size = 0


def _add_segment_input(model) -> None:
    """MediaPipe's BERT input takes ids, mask and segment ids; a family without token types (DistilBERT, MPNet)
    gets a segment-ids input that no op reads."""
    schema, subgraph = _schema(), model.subgraphs[0]
    names = [subgraph.tensors[i].name.decode() for i in subgraph.inputs]
    if any(name.endswith("token_type_ids") for name in names):
        return
    template = subgraph.tensors[subgraph.inputs[0]]
    tensor = schema.TensorT()
    tensor.name = template.name.decode().removesuffix("input_ids").encode() + b"token_type_ids"
    tensor.shape, tensor.type = np.array(template.shape), schema.TensorType.INT32
    empty = schema.BufferT()
    model.buffers.append(empty)
    tensor.buffer = len(model.buffers) - 1
    subgraph.tensors.append(tensor)
    subgraph.inputs = np.append(subgraph.inputs, len(subgraph.tensors) - 1).astype(np.int32)
    for signature in model.signatureDefs or []:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = b"token_type_ids", len(subgraph.tensors) - 1
        signature.inputs.append(entry)


def package(tflite: bytes, vocab_txt: bytes, description: str) -> bytes:
    """A single-signature TFLite model as MediaPipe's TextEmbedder loads it."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    if len(model.subgraphs) != 1:
        raise ArtifactError(f"MediaPipe takes one subgraph; the TFLite model has {len(model.subgraphs)}")
    _inline_buffers(model, tflite)
    _add_segment_input(model)
    subgraph = model.subgraphs[0]
    for index in subgraph.inputs:
        if subgraph.tensors[index].type != schema.TensorType.INT32:
            raise ArtifactError(f"MediaPipe feeds int32 ids; input {subgraph.tensors[index].name!r} is not int32")
    roles = [_role(subgraph.tensors[i].name.decode()) for i in subgraph.inputs]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata_buffer(roles, len(subgraph.outputs), description), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(tflite) + (1 << 20))
    builder.Finish(model.Pack(builder), b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    # A new archive written after the flatbuffer ("a" would first search the flatbuffer's tail for one).
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo(VOCAB_FILE, date_time=(1980, 1, 1, 0, 0, 0)), vocab_txt)
    return out.getvalue()


def packed_vocabulary(model_file: bytes) -> bytes:
    """The vocab.txt packed in a MediaPipe model: stored (as written here), at most MAX_VOCAB_BYTES."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_file)) as archive:
            info = archive.getinfo(VOCAB_FILE)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_VOCAB_BYTES:
                raise ArtifactError(f"the {VOCAB_FILE} packed in the MediaPipe model is compressed or over "
                                    f"{MAX_VOCAB_BYTES >> 20} MB; this toolchain stores it uncompressed")
            return archive.read(info)
    except (zipfile.BadZipFile, KeyError, RuntimeError, NotImplementedError, ValueError, OSError, EOFError):
        raise ArtifactError(f"the MediaPipe model packs no readable {VOCAB_FILE}; it cannot tokenize") from None


def echo_model(length: int) -> bytes:
    """A model whose two outputs are its ids and its mask as floats: packed with a model's vocabulary, MediaPipe's
    TextEmbedder returns the very ids and mask it would feed that model (no pooling, no normalisation asked)."""
    schema = _schema()
    model = schema.ModelT()
    model.version, model.buffers = 3, [schema.BufferT()]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CAST
    model.operatorCodes = [code]
    subgraph = schema.SubGraphT()
    subgraph.tensors = []
    for name, kind in (("input_ids", "INT32"), ("attention_mask", "INT32"), ("token_type_ids", "INT32"),
                       ("ids_out", "FLOAT32"), ("mask_out", "FLOAT32")):
        tensor = schema.TensorT()
        tensor.name, tensor.shape = f"echo_{name}".encode(), np.array([1, length], np.int32)
        tensor.type, tensor.buffer = getattr(schema.TensorType, kind), 0
        subgraph.tensors.append(tensor)
    subgraph.inputs, subgraph.outputs = np.array([0, 1, 2], np.int32), np.array([3, 4], np.int32)
    subgraph.operators = []
    for source, target in ((0, 3), (1, 4)):
        operator = schema.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = 0, np.array([source]), np.array([target])
        subgraph.operators.append(operator)
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())
