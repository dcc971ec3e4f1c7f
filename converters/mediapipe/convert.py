"""MediaPipe TextEmbedder artifact: the LiteRT conversion (same int8 recipe and accuracy-aware search as the
``tflite`` format) at one fixed length, packaged as MediaPipe opens it (converters.mediapipe.package).

One length, not buckets: MediaPipe runs one subgraph and pads every text to its input length. It would take a
dynamic length (shape signature -1), but then it truncates nothing, and litert-torch cannot lower a symbolic
sequence length anyway. The default length is the model's own limit, so long texts truncate exactly as the
source model does; a shorter ``sequence_length`` runs faster on short texts and truncates earlier.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from converters.base import Calibration, Conversion, Shape, sequence_buckets
from converters.mediapipe import MODEL_FILE, RUNTIME, MediaPipeFacts, MediaPipeOptions
from converters.mediapipe.package import package
from converters.mediapipe.tokenizer import Unsupported, mediapipe_vocabulary
from converters.tflite import TFLiteOptions
from converters.tflite.convert import convert as convert_tflite
from core.errors import ConfigError
from core.graph import EmbeddingGraph
from core.manifest import GraphSpec
from core.schema import encode

SIGNATURE = "text"  # the manifest's one shape; MediaPipe itself names no signature


def convert(
    graph: EmbeddingGraph,
    spec: GraphSpec,
    out_dir: Path,
    options: MediaPipeOptions,
    calibration: Calibration | None = None,
) -> Conversion:
    if calibration is None or not calibration.tokenizer_json:
        raise ConfigError("the MediaPipe artifact packs the model's vocabulary; the export passed no tokenizer")
    try:
        vocabulary = mediapipe_vocabulary(json.loads(calibration.tokenizer_json))
    except Unsupported as exc:
        raise ConfigError(f"MediaPipe cannot take this model: {exc}") from None
    length = options.sequence_length or sequence_buckets(spec.max_seq_length)[-1]
    scratch = out_dir / ".litert"
    scratch.mkdir()
    tflite_options = TFLiteOptions(sequence_buckets=(length,), batch_sizes=(1,),
                                   quantization=options.quantization, accuracy=options.accuracy)
    litert = convert_tflite(graph, spec, scratch, tflite_options, calibration)
    single = (scratch / litert.model_file).read_bytes()
    shutil.rmtree(scratch)
    description = (f"{spec.family} sentence embedding, {spec.embedding_dim} dims"
                   + (", L2-normalised" if spec.normalized else ""))
    (out_dir / MODEL_FILE).write_bytes(package(single, vocabulary.vocab_txt(), description))
    return replace(
        litert,
        model_file=MODEL_FILE,
        runtime=RUNTIME,
        shapes=[Shape(1, length, SIGNATURE)],
        details={
            **litert.details,
            "packaging": "one int32 subgraph (ids, mask, segment ids), buffers inline, TFLite Model Metadata with "
                         "the BERT tokenizer, vocab.txt appended as a zip",
            "sequence_length": length,
            "vocabulary": {"tokens": len(vocabulary.tokens), "renamed_specials": vocabulary.renamed},
            **encode(MediaPipeFacts(app_normalization=vocabulary.normalization)),
        },
    )
