"""ExecuTorch's own runtime (XNNPACK delegate built in) for a .pte artifact, plus the quantized kernels
that int8 word embeddings need."""

from __future__ import annotations

import ctypes
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from converters.base import Shape
from converters.executorch import EMBEDDING_KERNEL, METHOD, QUANTIZED_KERNELS_LIBRARY
from core.errors import ArtifactError, require
from core.manifest import Artifact

_loaded_libraries: list[ctypes.CDLL] = []  # kept alive: their static initialisers registered the kernels


class ExecuTorchRunner:
    """The program's ``forward`` in ExecuTorch's Python runtime (XNNPACK delegate built in)."""

    shapes: list[Shape] | None = None

    def __init__(self, model_path: Path, input_names: list[str], threads: int | None) -> None:
        runtime_module = require("executorch.runtime", "mobile")
        if threads:
            # Process-wide: ExecuTorch's Python bindings expose only a global thread pool.
            require("executorch.extension.pybindings.portable_lib", "mobile")._unsafe_reset_threadpool(threads)
        self._program = runtime_module.Runtime.get().load_program(model_path)  # the method needs it alive
        try:
            self._method = self._program.load_method(METHOD)
        except RuntimeError as exc:
            raise ArtifactError(
                f"ExecuTorch could not load {model_path.name}: {exc} (a missing kernel is logged above; "
                f"int8 word embeddings need {EMBEDDING_KERNEL} from {QUANTIZED_KERNELS_LIBRARY})"
            ) from exc
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


def register_quantized_kernels() -> bool:
    """Register ExecuTorch's quantized kernels (``embedding_byte`` ...) in the Python runtime; idempotent.

    The wheel ships them as a shared library beside ``libexecutorch.so`` but links only the portable and
    optimized kernels into the pybindings; loading the library runs its static registration into the
    same kernel registry. False where the wheel has no such library (the program then fails to load).
    """
    portable = require("executorch.extension.pybindings.portable_lib", "mobile")
    if EMBEDDING_KERNEL in portable._get_operator_names():
        return True
    package = require("executorch", "mobile")
    libraries = sorted(
        path for folder in package.__path__ for path in Path(folder, "lib").glob(f"{QUANTIZED_KERNELS_LIBRARY}.*")
    )
    if not libraries:
        return False
    _loaded_libraries.append(ctypes.CDLL(str(libraries[0]), mode=ctypes.RTLD_GLOBAL))
    return EMBEDDING_KERNEL in portable._get_operator_names()


def load_runner(artifact: Artifact, threads: int | None) -> ExecuTorchRunner:
    register_quantized_kernels()  # int8 word embeddings run on embedding_byte from the quantized kernels
    names = [spec.name for spec in artifact.manifest.inputs]
    return ExecuTorchRunner(artifact.model_path, names, threads)
