"""One package per artifact format: options and registration in its ``__init__``, ``convert`` (needs torch)
and ``runner`` (the format's own runtime). See converters.registry for the module contract."""

from converters import coreml, executorch, mediapipe, onnx, openvino, tflite, web  # noqa: F401  (each registers its format)
from converters.base import Calibration, Conversion, Runner, Shape, StructuralReport
from converters.registry import FORMATS, ArtifactFormat, get_format, register_format

__all__ = [
    "FORMATS",
    "ArtifactFormat",
    "Calibration",
    "Conversion",
    "Runner",
    "Shape",
    "StructuralReport",
    "get_format",
    "register_format",
]
