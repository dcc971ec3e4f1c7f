"""The peers users would pick today on an x86 server, measured beside our artifacts in one
`cli.py bench --vs-peers` run, each in its own fresh process with the same threads:

- sentence-transformers' ``export_dynamic_quantized_onnx_model`` with the preset that matches this CPU
  ("avx512_vnni" on VNNI and AMX CPUs, "avx512" or "avx2" below), loaded with ``backend="onnx"``;
- its OpenVINO backend as exported (``backend="openvino"``: fp32 weights; OpenVINO computes in bf16 by
  itself on CPUs with AVX512-BF16, such as AMX Xeons);
- its ``export_static_quantized_openvino_model`` (NNCF static int8), calibrated on STS-B train sentences
  from a local file (the helper's default, glue/sst2, would be a download).

They need optimum-onnx and optimum-intel, which pin transformers < 4.58, so they live in their own virtual
environment (.venv-peer), created on first use; none is a dependency of the toolchain.

Roofline: achieved int8 GOP/s = useful FLOPs of the workload (no padding) / median wall time;
peak = cores x clock x int8 ops per cycle per core of this CPU's class (core.cpu).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.cpu import cpu_flags, cpu_isa
from core.data import load_stsb
from core.manifest import GraphSpec

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peer"
PEER_REQUIREMENTS = (
    "torch==2.13.0",  # the same local CPU wheel as the toolchain: no CUDA download
    "optimum-onnx[onnxruntime]==0.1.0",
    "optimum==2.1.0",
    "optimum-intel[openvino]==1.27.0",
    "openvino==2026.4.1",
    "nncf==3.4.0",
    "datasets",  # the static OpenVINO helper reads its calibration sentences through it
    "sentence-transformers==5.7.0",
    "transformers==4.57.6",
    "onnxruntime==1.31.1",
    "numpy==2.4.6",
)
# sentence-transformers' ONNX quantization presets, by this CPU's class.
ONNX_PRESET = {"amx": "avx512_vnni", "avx512_vnni": "avx512_vnni", "avx512": "avx512", "avx2": "avx2"}


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peer_venv(log=print) -> Path:
    """Create .venv-peer on first use (a few minutes); reuse it afterwards."""
    python = peer_python()
    stamp = PEER_VENV / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(PEER_REQUIREMENTS):
        return python
    log(f"installing the peer environment into {PEER_VENV} (once; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_REQUIREMENTS[0]], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS[1:]], check=True)
    stamp.write_text("\n".join(PEER_REQUIREMENTS))
    return python


def _copy(model_path: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix="peer-"))
    shutil.copytree(model_path, work / "model")
    return work / "model"


def _onnx_int8(model_path: str, threads: int):
    """Runs inside .venv-peer."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    model_dir = _copy(model_path)
    preset = ONNX_PRESET.get(cpu_isa(), "avx2")
    fp32 = SentenceTransformer(str(model_dir), backend="onnx", device="cpu")
    fp32.save(str(model_dir))  # writes onnx/model.onnx beside the configs
    export_dynamic_quantized_onnx_model(fp32, preset, str(model_dir))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    file_name = f"onnx/model_qint8_{preset}.onnx"
    model = SentenceTransformer(
        str(model_dir), backend="onnx", device="cpu",
        model_kwargs={"file_name": file_name, "session_options": options, "provider": "CPUExecutionProvider"},
    )
    label = f'peer: sentence-transformers export_dynamic_quantized_onnx_model("{preset}"), ONNX Runtime'
    return model, label, (model_dir / file_name).stat().st_size


def _ov_config(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def _openvino(model_path: str, threads: int):
    """Runs inside .venv-peer: the OpenVINO backend as sentence-transformers exports it."""
    from sentence_transformers import SentenceTransformer

    model_dir = _copy(model_path)
    exported = SentenceTransformer(str(model_dir), backend="openvino", device="cpu")
    exported.save(str(model_dir))  # writes openvino/openvino_model.xml
    model = SentenceTransformer(str(model_dir), backend="openvino", device="cpu",
                                model_kwargs={"ov_config": _ov_config(threads)})
    size = sum(p.stat().st_size for p in (model_dir / "openvino").glob("openvino_model.*"))
    precision = "bf16" if "avx512_bf16" in cpu_flags() else "fp32"
    return model, f'peer: sentence-transformers backend="openvino" (weights fp32, computes {precision})', size


def _openvino_int8(model_path: str, threads: int):
    """Runs inside .venv-peer: NNCF static int8 through sentence-transformers, calibrated on STS-B train."""
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_static_quantized_openvino_model

    model_dir = _copy(model_path)
    calibration = model_dir.parent / "calibration"
    calibration.mkdir()
    with (calibration / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence"])
        writer.writerows([s] for s in load_stsb("train").unique_sentences()[:300])
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    exported = SentenceTransformer(str(model_dir), backend="openvino", device="cpu")
    exported.save(str(model_dir))
    export_static_quantized_openvino_model(exported, OVQuantizationConfig(), str(model_dir),
                                           dataset_name=str(calibration), dataset_config_name="default",
                                           dataset_split="train", column_name="sentence")
    file_name = "openvino/openvino_model_qint8_quantized.xml"
    model = SentenceTransformer(str(model_dir), backend="openvino", device="cpu",
                                model_kwargs={"file_name": file_name, "ov_config": _ov_config(threads)})
    size = sum(p.stat().st_size for p in (model_dir / "openvino").glob("openvino_model_qint8_quantized.*"))
    return model, "peer: sentence-transformers export_static_quantized_openvino_model (NNCF int8)", size


# name -> builder(model_path, threads) -> (model with .encode, row label, size in bytes); run in .venv-peer.
PEERS: dict[str, Callable] = {"st-onnx-int8": _onnx_int8, "st-openvino": _openvino, "st-openvino-int8": _openvino_int8}
# What each peer asks the CPU to compute in (core.cpu.compute_precision says what it gets).
PEER_PRECISION = {"st-onnx-int8": "int8", "st-openvino": "bf16", "st-openvino-int8": "int8"}


def build_peer(name: str, model_path: str, threads: int):
    return PEERS[name](model_path, threads)


def flops_per_sentence(spec: GraphSpec, tokens: int) -> float:
    """Matrix FLOPs of a BERT encoder forward pass for one sentence of ``tokens`` tokens (2 FLOPs per MAC)."""
    hidden, inter, layers = spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers
    projections = tokens * (4 * hidden * hidden + 2 * hidden * inter)  # Q, K, V, output; FFN up and down
    attention = 2 * tokens * tokens * hidden  # QK^T and attention x V
    return 2.0 * layers * (projections + attention)
