"""MediaPipe: the TFLite model an app opens with MediaPipe's TextEmbedder, strings in and vectors out, the
tokenizer inside the task (Android, iOS and web, no tokenizer code in the app); see
converters.mediapipe.convert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from converters.base import AccuracyTarget
from converters.mediapipe.tokenizer import NORMALIZATION, refusal
from converters.registry import ArtifactFormat, register_format
from core.schema import OneOf

MODEL_FILE = "text_embedder.tflite"
RUNTIME = "mediapipe"


@dataclass(frozen=True)
class MediaPipeOptions:
    # Every text is padded to this many tokens (MediaPipe feeds one fixed length); None: the model's own limit
    # (at most converters.base.SEQUENCE_LIMIT), so long texts truncate exactly as the source model does.
    sequence_length: int | None = None
    quantization: Literal["int8", "int8-weight-only", "fp32"] = "int8"  # as the LiteRT artifact (tflite.RECIPES)
    accuracy: AccuracyTarget | None = None  # see TFLiteOptions.accuracy


@dataclass(frozen=True)
class MediaPipeFacts:
    """What the runner and the snippets read back from the manifest's conversion facts (convert.py writes it)."""

    # What the app runs on each text before TextEmbedder.embed (converters.mediapipe.tokenizer); None: nothing.
    app_normalization: Annotated[str, OneOf((NORMALIZATION,))] | None = None


MEDIAPIPE = register_format(
    ArtifactFormat(
        name="mediapipe",
        options_type=MediaPipeOptions,
        converter="converters.mediapipe.convert",
        runner="converters.mediapipe.runner",
        additive_mask=True,  # converted through litert-torch, as TFLite
        refusal=refusal,
    )
)
