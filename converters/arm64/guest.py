"""The program the emulated ARM64 Python runs (``qemu-aarch64 -cpu MODEL ROOT/usr/bin/python3 guest.py FORMAT
MODEL``), and the framing the host speaks to it and to the ExecuTorch runner. It needs numpy and the format's
runtime only (the guest has no project code, no tokenizers, no torch).

Framing, both ways: uint32 count, then that many .npy arrays; a reply of uint32 0xFFFFFFFF, uint32 length and a
UTF-8 message is an error. A request's first array is a UTF-8 JSON header (as uint8): the signature and input
names for ``tflite``, the texts for ``mediapipe``. A count of 0 ends the process.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import sys
import types
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy

ERROR = 0xFFFFFFFF


class GuestError(Exception):
    """The guest (or the ExecuTorch runner) answered a request with an error message."""


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            raise EOFError("the emulated process closed its output")
        data += chunk
    return data


def read_arrays(stream: BinaryIO) -> list[np.ndarray] | None:
    """One framed message; None at a request count of 0."""
    (count,) = struct.unpack("<I", _read_exact(stream, 4))
    if count == ERROR:
        (length,) = struct.unpack("<I", _read_exact(stream, 4))
        raise GuestError(_read_exact(stream, length).decode("utf-8", "replace"))
    arrays = []
    for _ in range(count):
        version = npy.read_magic(stream)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
        data = _read_exact(stream, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C"))
    return arrays or None


def write_arrays(stream: BinaryIO, arrays: list[np.ndarray]) -> None:
    buffer = io.BytesIO()  # numpy writes a real file with tofile(), which a pipe cannot take
    buffer.write(struct.pack("<I", len(arrays)))
    for array in arrays:
        npy.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    stream.write(buffer.getvalue())
    stream.flush()


def write_error(stream: BinaryIO, message: str) -> None:
    data = message.encode("utf-8")
    stream.write(struct.pack("<II", ERROR, len(data)) + data)
    stream.flush()


def header(payload: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(payload).encode("utf-8"), dtype=np.uint8)


def _tflite(model: str):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=1)
    runners = {}

    def run(request: dict, arrays: list[np.ndarray]) -> list[np.ndarray]:
        name = request["signature"]
        if name not in runners:
            runners[name] = interpreter.get_signature_runner(name)
        dtypes = {k: v["dtype"] for k, v in runners[name].get_input_details().items()}
        feed = {k: a.astype(dtypes[k]) for k, a in zip(request["inputs"], arrays, strict=True) if k in dtypes}
        (output,) = runners[name](**feed).values()
        return [np.asarray(output, dtype=np.float32)]

    return run


def _mediapipe(model: str):
    # mediapipe's package __init__ imports its vision and audio tasks (OpenCV, matplotlib), which the guest does
    # not carry: the text task's packages are entered as bare namespaces instead.
    base = importlib.util.find_spec("mediapipe").submodule_search_locations[0]
    for name in ("mediapipe", "mediapipe.tasks", "mediapipe.tasks.python", "mediapipe.tasks.python.text"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(base, *name.split(".")[1:])]
        sys.modules[name] = package
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.text import text_embedder

    options = text_embedder.TextEmbedderOptions(base_options=BaseOptions(model_asset_path=model),
                                                l2_normalize=False, quantize=False)
    embedder = text_embedder.TextEmbedder.create_from_options(options)

    def run(request: dict, arrays: list[np.ndarray]) -> list[np.ndarray]:
        rows = [np.asarray(embedder.embed(text).embeddings[0].embedding, dtype=np.float32)
                for text in request["texts"]]
        return [np.stack(rows)]

    return run


def serve(fmt: str, model: str) -> None:
    # The replies get their own descriptor; whatever a runtime prints to stdout goes to stderr instead.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    run = {"tflite": _tflite, "mediapipe": _mediapipe}[fmt](model)
    stdin = sys.stdin.buffer
    while True:
        arrays = read_arrays(stdin)
        if arrays is None:
            return
        try:
            write_arrays(stdout, run(json.loads(arrays[0].tobytes().decode("utf-8")), arrays[1:]))
        except Exception as exc:  # one request failed: say so and serve the next
            write_error(stdout, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
