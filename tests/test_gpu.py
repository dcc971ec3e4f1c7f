"""gpu target: fused fp16 ONNX, checked on the CPU provider where no GPU is present."""

from __future__ import annotations

import pytest

from core.config import BuildConfig
from pipelines.export import export


@pytest.fixture(scope="module")
def gpu_artifact(tmp_path_factory):
    (result,) = export(BuildConfig(target="gpu", out=str(tmp_path_factory.mktemp("dist"))))
    assert result.ok, result.error
    return result.manifest.to_json()  # the JSON an app reads


def test_fusions_applied(gpu_artifact):
    fusion = gpu_artifact["conversion"]["fusion"]
    assert fusion["fused"] == {
        "EmbedLayerNormalization": 1,
        "Attention": 6,
        "BiasGelu": 6,
        "SkipLayerNormalization": 12,
    }
    assert fusion["type"] == "bert" and fusion["complete"] and fusion["note"] == "fully fused"


def test_fp16_parity_and_size(gpu_artifact):
    parity = gpu_artifact["parity"]
    assert parity["mean_cosine"] >= 0.999
    assert parity["spearman_drop"] <= 0.1
    fp32 = gpu_artifact["conversion"]["fp32_bytes"]
    assert 0.45 * fp32 <= gpu_artifact["size_bytes"] <= 0.55 * fp32
    assert gpu_artifact["inputs"][0]["dtype"] == "int64" and gpu_artifact["output"]["dtype"] == "float32"
