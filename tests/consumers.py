"""The libraries people load our layouts with, in their own venv (.venv-consumers, made on first use, about a
minute): sentence-transformers' ONNX backend needs optimum-onnx, which needs transformers < 4.58, and fastembed
needs huggingface-hub < 2; the toolchain itself is on transformers 5.

    python tests/consumers.py LAYOUT_FOLDER TEXTS_JSON   # inside that venv: embeds with the layout's usage lines
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSUMER_VENV = ROOT / ".venv-consumers"
REQUIREMENTS = (
    "torch==2.13.0",  # first, alone: the local CPU wheel, no CUDA download
    "sentence-transformers==5.7.0",
    "transformers==4.57.6",
    "optimum==2.1.0",
    "optimum-onnx[onnxruntime]==0.1.0",
    "onnxruntime==1.31.1",
    "fastembed==0.9.1",
    "numpy==2.4.6",
)


def consumer_python() -> Path:
    python = CONSUMER_VENV / "bin" / "python"
    stamp = CONSUMER_VENV / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(REQUIREMENTS):
        return python
    subprocess.run([sys.executable, "-m", "venv", str(CONSUMER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", REQUIREMENTS[0]], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS[1:]], check=True)
    stamp.write_text("\n".join(REQUIREMENTS))
    return python


def embed_with_usage(folder: Path, texts: list[str]) -> list[list[float]]:
    """Runs in the consumer venv: the layout's own usage lines (layout.json), then its model on ``texts`` one at a
    time (dynamic int8 scales activations per batch, padding included: batch 1 compares like with like)."""
    record = json.loads((folder / "layout.json").read_text(encoding="utf-8"))
    scope: dict = {}
    exec(record["usage"], scope)  # the lines a user would paste; they define `model`
    model = scope["model"]
    if record["layout"] == "sentence-transformers":
        return model.encode(texts, batch_size=1).tolist()
    return [vector.tolist() for vector in model.embed(texts, batch_size=1)]


if __name__ == "__main__":
    folder, texts_file = Path(sys.argv[1]), Path(sys.argv[2])
    print(json.dumps(embed_with_usage(folder, json.loads(texts_file.read_text(encoding="utf-8")))))
