"""OpenVINO runtime on CPU. Needs openvino and numpy only (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from converters.base import Shape
from converters.openvino import COMPILED_MODELS, TUNABLE_PROPERTIES, OpenVinoFacts, is_tunable
from core.cpu import cpu_flags
from core.errors import ArtifactError, require
from core.manifest import Artifact, Manifest


class OpenVinoRunner:
    """Dynamic batch and sequence (the format's sequence_multiple keeps the number of distinct shapes small).

    One batch runs on a latency-compiled model (one stream, every thread). Several batches run on a second
    model compiled for throughput: OpenVINO's streams (one thread each here) take a batch each, in parallel.
    Measured on a 2-core AMX Xeon (all-MiniLM-L6-v2, batches of 32 STS-B dev sentences, tokenization
    included): 1581 sentences/s one batch at a time, 1874 with 2 streams, about 2000-2200 with snippets off.

    OpenVINO 2026.4 dies with SIGFPE compiling some models for one-thread streams in bf16 (a tiny Qwen3 with
    grouped-query attention does, at any stream count): a crash no Python code can catch, so the throughput
    model is first compiled in a child process, and where that child dies, batches run one at a time.

    ``properties`` adds CPU plugin properties per compiled model ("latency", "throughput"): the ones export
    measured fastest (converters.openvino.tuning)."""

    shapes: list[Shape] | None = None

    def __init__(self, model_path: Path, threads: int | None, precision: str,
                 properties: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._ov = require("openvino", "x86")
        self._model_path = str(model_path)
        # bf16 only where the CPU has it; elsewhere OpenVINO computes in fp32.
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" and "avx512_bf16" in cpu_flags()
                        else "f32"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self.properties = {model: dict((properties or {}).get(model, {})) for model in COMPILED_MODELS}
        self._core = self._ov.Core()
        self._compiled = self._core.compile_model(
            self._model_path, "CPU",
            {**self._config, **self.properties["latency"], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        self._request = self._compiled.create_infer_request()
        self._queue = None  # the throughput model's requests, compiled on the first call with several batches
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self.description = (f"openvino {self._ov.get_version().split('-')[0]} CPU "
                            f"({self._config['INFERENCE_PRECISION_HINT']})")

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        result = self._request.infer({name: inputs[name] for name in self.input_names})
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32)

    def run_batches(self, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        if self._queue is None:
            config = {**self._config, **self.properties["throughput"], "PERFORMANCE_HINT": "THROUGHPUT"}
            if not compiles_safely(self._model_path, json.dumps(config, sort_keys=True)):
                return [self.run(inputs) for inputs in batches]
            compiled = self._core.compile_model(self._model_path, "CPU", config)
            requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = self._ov.AsyncInferQueue(compiled, requests)
        outputs: list[np.ndarray | None] = [None] * len(batches)

        def done(request, index: int) -> None:
            outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        self._queue.set_callback(done)
        for index, inputs in enumerate(batches):
            self._queue.start_async({name: inputs[name] for name in self.input_names}, index)
        self._queue.wait_all()
        return outputs


@lru_cache(maxsize=32)
def compiles_safely(model_path: str, config_json: str) -> bool:
    """Whether OpenVINO compiles the model with this config in a child process without dying."""
    probe = ("import json, sys, openvino as ov; "
             "ov.Core().compile_model(sys.argv[1], 'CPU', json.loads(sys.argv[2]))")
    try:
        child = subprocess.run([sys.executable, "-c", probe, model_path, config_json], capture_output=True,
                               timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return False
    return child.returncode == 0


def compile_properties(manifest: Manifest) -> dict[str, dict[str, str]]:
    """The per-model properties the manifest records (none in one built before tuning); ArtifactError on any
    property or value that is not tunable, since compile_model would take anything it is given."""
    choice = manifest.conversion_as(OpenVinoFacts).compile
    if choice is None:
        return {model: {} for model in COMPILED_MODELS}
    properties = choice.properties()
    for model, given in properties.items():
        if not all(is_tunable(key, value) for key, value in given.items()):
            raise ArtifactError(f"manifest conversion.compile.{model} asks OpenVINO for {given!r}; only known values "
                                f"of {', '.join(sorted(TUNABLE_PROPERTIES))} may be set: rebuild the artifact")
    return properties


def load_runner(artifact: Artifact, threads: int | None) -> OpenVinoRunner:
    return OpenVinoRunner(artifact.model_path, threads, artifact.manifest.precision,
                          compile_properties(artifact.manifest))
