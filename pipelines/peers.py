"""The peer users would pick today, measured beside our artifact in one `cli.py bench --vs-peers` run.

Peer: sentence-transformers' ``export_dynamic_quantized_onnx_model(model, "avx512_vnni")`` loaded with
``backend="onnx"``. It needs optimum-onnx, which pins transformers < 4.58, so it lives in its own
virtual environment (.venv-peer), created on first use; it is not a dependency of the toolchain.

Roofline: achieved int8 GOP/s = useful FLOPs of the workload (no padding) / median wall time;
peak = cores x clock x int8 ops per cycle per core (assumptions are written into the result).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peer"
PEER_REQUIREMENTS = (
    "torch==2.13.0",  # the same local CPU wheel as the toolchain: no CUDA download
    "optimum-onnx[onnxruntime]==0.1.0",
    "optimum==2.1.0",
    "sentence-transformers==5.7.0",
    "transformers==4.57.6",
    "onnxruntime==1.31.1",
    "numpy==2.4.6",
)
PEER_LABEL = 'peer: sentence-transformers export_dynamic_quantized_onnx_model("avx512_vnni"), backend="onnx"'


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


def build_peer(model_path: str, threads: int):
    """Runs inside .venv-peer: export the peer's int8 ONNX model from a copy of the model dir and load it."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    work = Path(tempfile.mkdtemp(prefix="peer-"))
    shutil.copytree(model_path, work / "model")
    fp32 = SentenceTransformer(str(work / "model"), backend="onnx", device="cpu")
    fp32.save(str(work / "model"))  # writes onnx/model.onnx beside the configs
    export_dynamic_quantized_onnx_model(fp32, "avx512_vnni", str(work / "model"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    file_name = "onnx/model_qint8_avx512_vnni.onnx"
    model = SentenceTransformer(
        str(work / "model"), backend="onnx", device="cpu",
        model_kwargs={"file_name": file_name, "session_options": options, "provider": "CPUExecutionProvider"},
    )
    return model, (work / "model" / file_name).stat().st_size


def flops_per_sentence(config: dict, tokens: int) -> float:
    """Matrix FLOPs of a BERT encoder forward pass for one sentence of ``tokens`` tokens (2 FLOPs per MAC)."""
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    projections = tokens * (4 * hidden * hidden + 2 * hidden * inter)  # Q, K, V, output; FFN up and down
    attention = 2 * tokens * tokens * hidden  # QK^T and attention x V
    return 2.0 * layers * (projections + attention)
