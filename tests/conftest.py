"""Shared fixtures: the real bundled model, loaded once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


@pytest.fixture(scope="session")
def source():
    from pipelines.model_source import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def st_model(source):
    from pipelines.model_source import load_sentence_transformer

    return load_sentence_transformer(source)


@pytest.fixture(scope="session")
def spec(st_model):
    from pipelines.graph import graph_spec

    return graph_spec(st_model, None)


@pytest.fixture(scope="session")
def dev_sentences() -> list[str]:
    from pipelines.data import load_stsb

    return load_stsb("dev").unique_sentences()


@pytest.fixture(scope="session")
def x86_artifact(tmp_path_factory):
    """The x86 artifact of the bundled model, built once through the real export pipeline."""
    from pipelines.config import BuildConfig
    from pipelines.export import export

    out = tmp_path_factory.mktemp("dist")
    (result,) = export(BuildConfig(target="x86", out=str(out)))
    assert result.ok, result.error
    return result


@pytest.fixture(scope="session")
def graph(st_model):
    """The embedding graph with the in-graph float mask (what the TFLite, ExecuTorch and Core ML paths convert)."""
    from pipelines.graph import build_graph

    return build_graph(st_model, None, additive_mask=True)
