"""What every artifact of one export shares (the loaded model, its graph spec, the fp32 reference, the PCA,
the calibration) and what each artifact folder holds beside its model file: the tokenizer files and the manifest."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from converters.base import Calibration, Conversion
from core.config import BuildConfig
from core.cpu import cpu_isa, isa_class
from core.data import load_stsb, read_corpus
from core.errors import ConfigError
from core.graph import graph_spec, model_config
from core.manifest import (
    SCHEMA,
    GraphSpec,
    InputSpec,
    IsaRecord,
    Manifest,
    ModelRecord,
    OutputSpec,
    PcaRecord,
    TokenizerRecord,
    checksums,
    file_sizes,
    library_versions,
    path_size,
)
from core.model_source import ModelSource, load_sentence_transformer
from core.pca import Projection, fit_pca
from core.reference import Reference
from core.safe_io import read_json
from core.schema import encode
from core.vectors import VectorCodec
from pipelines.dims import DimsSweep, sweep
from targets.base import ArtifactPlan, Target

PCA_FILE = "pca.safetensors"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CONFIG_FILE = "config.json"


@dataclass
class Session:
    """What every artifact of one export shares: the source model, its graph spec and the reference."""

    config: BuildConfig
    source: ModelSource
    st_model: object
    spec: GraphSpec
    reference: Reference
    calibration: Calibration  # one per export: converters share what they measure about the model
    vector_codec: VectorCodec  # int8 / binary storage ranges of the artifact's output, on the fit corpus
    dims_sweep: DimsSweep  # PCA sizes x stored precisions on STS-B dev; with --dims auto, what it chose

    @property
    def projection(self) -> Projection | None:
        return self.reference.projection

    @property
    def model_dir(self) -> Path:
        return Path(self.config.out) / (self.source.name + (f"-pca{self.spec.pca_dims}" if self.projection else ""))


def fit_sentences(fit_corpus: str | None) -> list[str]:
    return read_corpus(Path(fit_corpus)) if fit_corpus else load_stsb("train").unique_sentences()


def fit_projection(fit: np.ndarray, dims: int) -> Projection:
    """PCA to ``dims`` on the source model's embeddings of the fit corpus."""
    count, source_dim = fit.shape
    if not 1 <= dims <= source_dim:
        raise ConfigError(f"--dims must be between 1 and the model's dimension {source_dim}, got {dims}")
    if count < dims:
        raise ConfigError(f"PCA to {dims} dims needs at least {dims} corpus sentences, the corpus has {count}")
    return fit_pca(fit, dims)


def open_session(config: BuildConfig, source: ModelSource) -> Session:
    st_model = load_sentence_transformer(
        source, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code
    )
    reference = Reference(st_model, source)
    fit = reference.source_embeddings(fit_sentences(config.fit_corpus))
    # The sweep costs seconds once the embeddings are in: every manifest shows the dims / precision trade-off.
    dims_sweep = sweep(fit, reference.source_embeddings(load_stsb("dev").unique_sentences()), config.max_drop)
    if config.dims == "auto" and dims_sweep.chosen < fit.shape[1]:
        reference.projection = fit_pca(fit, dims_sweep.chosen)
    elif isinstance(config.dims, int):
        reference.projection = fit_projection(fit, config.dims)
    spec = graph_spec(st_model, reference.projection)
    codec = VectorCodec.fit(reference.project(fit), config.fit_corpus or "STS-B train")
    return Session(config, source, st_model, spec, reference, calibration(st_model, spec), codec, dims_sweep)


def write_tokenizer(session: Session, out_dir: Path, max_length: int) -> TokenizerRecord:
    """tokenizer.json truncating on the right at max_length tokens: the source model's own limit, unless the
    artifact takes fewer (converters.base.SEQUENCE_LIMIT), which the manifest then says; the source's other
    tokenizer files, and the config.json that libraries loading the folder read."""
    tokenizer = Tokenizer.from_str(session.st_model.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    for name in TOKENIZER_FILES:
        if (session.source.path / name).is_file():
            shutil.copyfile(session.source.path / name, out_dir / name)
    config_file = out_dir / "tokenizer_config.json"
    if config_file.is_file():  # libraries that tokenize from it (transformers.js, fastembed) truncate as we do
        tokenizer_config = read_json(config_file, ConfigError, "tokenizer_config.json")
        tokenizer_config["model_max_length"] = max_length
        config_file.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hf = session.st_model.tokenizer
    pad_token_id = int(hf.pad_token_id if hf.pad_token_id is not None else 0)
    config = model_config(session.spec, pad_token_id)  # for libraries that load the folder (layouts, transformers.js)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source_limit = session.spec.max_seq_length
    same = "as the source model" if max_length == source_limit else f"the source model truncates at {source_limit}"
    return TokenizerRecord(file="tokenizer.json", pad_token_id=pad_token_id, padding_side="right",
                           truncation=f"right side, to {max_length} tokens including special tokens ({same})",
                           max_length=max_length)


def calibration(st_model, spec: GraphSpec) -> Calibration:
    """STS-B train sentences (held in: the gate measures on dev) in the source model's own tokenization."""

    def tokenize(sentences: Sequence[str], max_length: int, pad_to_max_length: bool) -> dict[str, np.ndarray]:
        encoded = st_model.tokenizer(
            list(sentences), padding="max_length" if pad_to_max_length else True, truncation=True,
            max_length=max_length, return_tensors="np",
        )
        return {name: encoded[name].astype(np.int64) for name in spec.input_names}

    backend = getattr(st_model.tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer has none
    return Calibration(load_stsb("train").unique_sentences(), tokenize,
                       tokenizer_json=backend.to_str() if backend is not None else "")


def build_manifest(session: Session, target: Target, plan: ArtifactPlan, conversion: Conversion,
                   tokenizer: TokenizerRecord, artifact_dir: Path) -> Manifest:
    spec = session.spec
    sequence_dim = "sequence" if conversion.shapes is None else "bucket"
    return Manifest(
        schema=SCHEMA,
        target=target.name,
        artifact=plan.description,
        format=plan.format,
        file=conversion.model_file,
        runtime=conversion.runtime,
        size_bytes=sum(path_size(artifact_dir / f) for f in (conversion.model_file, *conversion.weight_files)),
        precision=conversion.precision,
        # The CPU class the artifact is built for; runtime, verify and bench check the CPU they run on.
        isa=None if conversion.isa is None else IsaRecord(conversion.isa, isa_class(conversion.isa).description,
                                                          cpu_isa()),
        inputs=tuple(InputSpec(n, conversion.input_dtype, ("batch", sequence_dim)) for n in spec.input_names),
        output=OutputSpec(conversion.output_name or spec.output_name, "float32", ("batch", spec.embedding_dim)),
        shapes=None if conversion.shapes is None else tuple(conversion.shapes),
        embedding_dim=spec.embedding_dim,
        max_seq_length=tokenizer.max_length,
        normalized=spec.normalized,
        pooling=spec.pooling,
        # Prepended to the text before tokenizing, as sentence-transformers does; the default one always.
        prompts={name: text for name, text in (session.st_model.prompts or {}).items() if text},
        default_prompt_name=session.st_model.default_prompt_name,
        pca=None if session.projection is None else PcaRecord(
            dims=spec.pca_dims, source_dim=spec.source_dim,
            explained_variance_ratio=round(session.projection.explained_variance_ratio, 6),
            fit_corpus=session.config.fit_corpus or "STS-B train", file=PCA_FILE),
        vectors=session.vector_codec.record(),
        dims_sweep=session.dims_sweep.record(),
        tokenizer=tokenizer,
        model=ModelRecord(session.source.name, session.source.spec,
                          session.reference.model_sha256,  # every file of the model directory (see ModelSource)
                          session.source.layout.distillation),
        graph=spec,
        conversion=conversion.details,
        options=encode(plan.options),
        gate=plan.gate,
        build=session.config,
        versions=library_versions(),
        created_unix=int(os.environ.get("SOURCE_DATE_EPOCH", time.time())),
        files=checksums(artifact_dir),
        file_bytes=file_sizes(artifact_dir),
    )
