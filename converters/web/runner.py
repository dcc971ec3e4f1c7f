"""Runs a web artifact in headless Chromium with onnxruntime-web, and measures it there.

``structural_checks`` adds what only the browser can say: whether the page was cross-origin isolated, batch-1
latency inside the page against native ONNX Runtime on the same file and CPU, the gzip download, and WebGPU:
the fp16 variant goes through the test vectors on the browser's WebGPU adapter where it offers one that runs
fp16, and the facts say why not otherwise.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import Shape, StructuralReport
from converters.onnx.runner import OrtRunner
from converters.web import WASM_FILE, WEBGPU_FILE, WebOptions
from converters.web.browser import ORT_DIST, PAGE_DIR, StaticServer, browser, open_page, ort_web_version
from core.data import load_stsb
from core.errors import ArtifactError, gist
from core.manifest import Artifact
from core.model_files import read_tokenizer
from core.safe_io import read_json
from core.tokenizer_guard import encode_rows

LATENCY_SENTENCES = 100  # STS-B dev sentences spread over the length range, as bench's latency set
LATENCY_REPEATS = 3
DOWNLOADED = ("tokenizer.json", "tokenizer_config.json", "config.json")  # what transformers.js fetches beside the model


class BrowserRunner:
    shapes: list[Shape] | None = None

    def __init__(self, artifact_dir: Path, model_file: str, threads: int, backend: str = "wasm") -> None:
        self.model_file = model_file
        self.backend = backend
        self.server = StaticServer({"/ort/": ORT_DIST, "/model/": Path(artifact_dir), "/": PAGE_DIR})
        self.page = open_page(self.server)
        try:
            self.info = self._call("([url, threads, backend]) => harness.load(url, threads, backend)",
                                   [f"/model/{model_file}", threads, backend])
        except ArtifactError:
            self.close()
            raise
        self.description = (f"onnxruntime-web {ort_web_version()} {backend} in headless Chromium {browser().version}"
                            f" ({self.info['threads']} threads)")

    def _call(self, script: str, argument: Any) -> Any:
        """The page's answer; what onnxruntime-web throws (a damaged model, a failed run) as one ArtifactError."""
        try:
            return self.page.evaluate(script, argument)
        except Exception as exc:  # playwright's Error carries the page's exception text
            raise ArtifactError(f"{self.model_file} failed in onnxruntime-web ({self.backend}): "
                                f"{gist(exc)}") from None

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        out = self._call("batch => harness.run(batch)", {name: a.tolist() for name, a in inputs.items()})
        return np.asarray(out["data"], dtype=np.float32).reshape(out["dims"])

    def latency_ms(self, batches: list[dict[str, np.ndarray]], repeats: int = LATENCY_REPEATS) -> list[float]:
        """Each batch's run time inside the page, ``repeats`` passes (pass-major), after one warm-up pass."""
        return self.timings(batches, repeats)["ms"]

    def timings(self, batches: list[dict[str, np.ndarray]], repeats: int = LATENCY_REPEATS) -> dict[str, list[float]]:
        """{"first": the warm-up pass (V8 still optimising the WASM), "ms": the ``repeats`` timed passes}."""
        payload = [{name: a.tolist() for name, a in batch.items()} for batch in batches]
        return self._call("([b, r]) => harness.time(b, r)", [payload, repeats])

    def webgpu_support(self) -> dict:
        """{"available", "adapter", "shader_f16", "reason"}: whether this browser can run the fp16 variant."""
        return self._call("() => harness.webgpu()", None)

    def close(self) -> None:
        self.page.context.close()
        self.server.close()


def load_runner(artifact: Artifact, threads: int | None) -> BrowserRunner:
    check_truncation(artifact)
    return BrowserRunner(artifact.folder, artifact.manifest.file,
                         threads or artifact.manifest.options_as(WebOptions).threads)


def latency_batches(artifact: Artifact, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Batch-1 inputs of the latency sentences through the artifact's own tokenizer."""
    tokenizer = read_tokenizer(artifact.tokenizer_path, ArtifactError, "the artifact is damaged: export it again")
    tokenizer.no_padding()
    sentences = load_stsb("dev").unique_sentences()
    chosen = sentences[:: max(1, len(sentences) // LATENCY_SENTENCES)][:LATENCY_SENTENCES]
    rows = encode_rows(tokenizer, chosen, ArtifactError, f"{artifact.folder}: its tokenizer failed on the texts")
    return [{name: np.asarray([row[name]], dtype=np.int64) for name in input_names} for row in rows]


def native_latency_ms(model: Path, batches: list[dict[str, np.ndarray]], threads: int) -> list[float]:
    native = OrtRunner(model, threads, ["CPUExecutionProvider"])
    for batch in batches[:5]:
        native.run(batch)
    times = []
    for _ in range(LATENCY_REPEATS):
        for batch in batches:
            started = time.perf_counter()
            native.run(batch)
            times.append((time.perf_counter() - started) * 1000)
    return times


def gzip_bytes(paths: list[Path]) -> int:
    return sum(len(gzip.compress(path.read_bytes(), compresslevel=6)) for path in paths if path.is_file())


def check_truncation(artifact: Artifact) -> None:
    """transformers.js truncates at tokenizer_config.json's model_max_length: another value than the manifest's
    limit is a damaged artifact (a page would feed the model inputs longer than it takes)."""
    path = artifact.folder / "tokenizer_config.json"
    if not path.is_file():
        return
    max_length = artifact.manifest.tokenizer.max_length
    limit = read_json(path, ArtifactError, "tokenizer config").get("model_max_length")
    if limit != max_length or isinstance(limit, bool):
        raise ArtifactError(f"{path}: model_max_length is {str(limit)[:24]}, not the manifest's {max_length}: "
                            "transformers.js would feed longer inputs than the model takes; export the artifact again")


def structural_checks(artifact: Artifact) -> StructuralReport:
    folder = artifact.folder
    runner = load_runner(artifact, None)
    try:
        batches = latency_batches(artifact, [spec.name for spec in artifact.manifest.inputs])
        timings = runner.timings(batches)
        wasm_ms = float(np.median(timings["ms"]))
        native_ms = float(np.median(native_latency_ms(folder / WASM_FILE, batches, runner.info["threads"])))
        webgpu = runner.webgpu_support()
    finally:
        runner.close()
    extras = [folder / name for name in DOWNLOADED]
    facts: dict[str, Any] = {
        "browser": f"Chromium {browser().version} (headless)",
        "onnxruntime_web": ort_web_version(),
        "cross_origin_isolated": bool(runner.info["isolated"]),
        "wasm_threads": int(runner.info["threads"]),
        "wasm_b1_p50_ms": round(wasm_ms, 3),  # after a warm-up pass
        "wasm_b1_first_pass_p50_ms": round(float(np.median(timings["first"])), 3),
        "native_b1_p50_ms": round(native_ms, 3),
        "wasm_vs_native": round(wasm_ms / native_ms, 2),
        "latency_sentences": len(batches),
        "download_gzip_bytes": gzip_bytes([folder / WASM_FILE, *extras]),
    }
    program_runners = {}
    if (folder / WEBGPU_FILE).is_file():
        facts["webgpu_fp16_download_gzip_bytes"] = gzip_bytes([folder / WEBGPU_FILE, *extras])
        if webgpu["available"]:
            facts["webgpu"] = f"checked on {webgpu['adapter']}"
            program_runners["webgpu_fp16"] = BrowserRunner(folder, WEBGPU_FILE, 1, backend="webgpu")
        else:
            facts["webgpu"] = f"fp16 variant not checked here: {webgpu['reason']}"
    return StructuralReport(facts=facts, program_runners=program_runners)
