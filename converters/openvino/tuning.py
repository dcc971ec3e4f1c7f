"""Which CPU plugin properties each of the runner's compiled models runs fastest with, measured at export.

OpenVINO's defaults are tuned for its own benchmarks; on short sentences one of them (snippets' generated MHA
kernel) cost a sixth of batch throughput. So the export times every candidate in OpenVinoOptions on calibration
sentences, through the runner an app uses, and the manifest records the winners (per model and build CPU).
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

from converters.base import CALIBRATION_LENGTH, Calibration
from converters.openvino import COMPILED_MODELS, CandidateSpeed, CompileCandidate, CompileChoice, CompiledWith
from converters.openvino.runner import OpenVinoRunner
from core.cpu import cpu_isa, cpu_name

THROUGHPUT_SENTENCES = 256  # batches of 32, handed to the throughput model at once
LATENCY_SENTENCES = 24  # one at a time through the latency model
ROUNDS = 3  # timed rounds, alternating candidates, after one warm-up round that compiles the shapes


def choose_properties(model_path: Path, precision: str, candidates: tuple[CompileCandidate, ...],
                      calibration: Calibration | None) -> CompileChoice:
    """Per compiled model the fastest candidate and its properties, and what each candidate measured (batch-32
    sentences/s, batch-1 p50 ms) on this CPU. Without calibration sentences, or with one candidate, the first
    candidate unmeasured."""
    if calibration is None or len(candidates) == 1:
        first = CompiledWith(candidates[0].name, dict(candidates[0].properties))
        return CompileChoice(latency=first, throughput=first)
    batches = calibration.batches(THROUGHPUT_SENTENCES)
    singles = [calibration.tokenize([text], CALIBRATION_LENGTH, False) for text in calibration.texts(LATENCY_SENTENCES)]
    runners = {candidate.name: OpenVinoRunner(model_path, None, precision, dict.fromkeys(
        COMPILED_MODELS, dict(candidate.properties))) for candidate in candidates}
    batch_seconds: dict[str, list[float]] = {name: [] for name in runners}
    single_ms: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(ROUNDS + 1):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.run_batches(batches)
            elapsed = time.perf_counter() - started
            latencies = []
            for inputs in singles:
                started = time.perf_counter()
                runner.run(inputs)
                latencies.append((time.perf_counter() - started) * 1000)
            if round_index:
                batch_seconds[name].append(elapsed)
                single_ms[name].append(median(latencies))
    sentences = sum(len(batch["input_ids"]) for batch in batches)
    measured = {name: CandidateSpeed(round(sentences / median(batch_seconds[name])),
                                     round(median(single_ms[name]), 3)) for name in runners}
    properties = {candidate.name: dict(candidate.properties) for candidate in candidates}
    throughput = max(measured, key=lambda name: measured[name].batch_32_sentences_per_s)
    latency = min(measured, key=lambda name: measured[name].batch_1_p50_ms)
    return CompileChoice(latency=CompiledWith(latency, properties[latency]),
                         throughput=CompiledWith(throughput, properties[throughput]),
                         measured=measured, measured_on=f"{cpu_name()}, ISA class {cpu_isa()}, all cores")
