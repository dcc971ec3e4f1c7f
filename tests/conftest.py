"""Shared fixtures: the real bundled model, loaded once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

# Session fixtures that build a whole export: the tests sharing one run on one pytest-xdist worker (an
# ``xdist_group``), and those groups are handed out first so that both workers finish together.
COSTLY_BUILDS = ("mobile_export", "tiny_exports")


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, pin each worker to its own share of the cores. Every runtime sizes its threads to the
    cores it may use (core.cpu.usable_cores), so two workers never spin against each other's threads; the
    single-threaded steps (converters' graph passes, tokenizers, the emulator) then run two at a time."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker is None or len(cores) < count:
        return
    share = cores[int(worker.removeprefix("gw")) % count::count]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))  # for libraries that read it rather than the mask


_share_cores_between_workers()


def _worker_group(item: pytest.Item) -> str:
    """A family test's group is its tiny model's (its exports are built once); a test of the bundled model's
    mobile export joins that export's group; any other test stays with its module (module fixtures)."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if "exported" in params:
        return f"tiny-{params['exported']}"
    if "mobile_export" in item.fixturenames:
        return "minilm-mobile"
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(_worker_group(item)))
    costly = [item for item in items if any(name in item.fixturenames for name in COSTLY_BUILDS)]
    costly_groups = {mark.args[0] for item in costly for mark in item.iter_markers("xdist_group")}
    items.sort(key=lambda item: next(item.iter_markers("xdist_group")).args[0] not in costly_groups)  # stable


@pytest.fixture(scope="session")
def source():
    from core.model_source import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def st_model(source):
    from core.model_source import load_sentence_transformer

    return load_sentence_transformer(source)


@pytest.fixture(scope="session")
def spec(st_model):
    from core.graph import graph_spec

    return graph_spec(st_model, None)


@pytest.fixture(scope="session")
def dev_sentences() -> list[str]:
    from core.data import load_stsb

    return load_stsb("dev").unique_sentences()


@pytest.fixture(scope="session")
def x86_artifact(tmp_path_factory):
    """The x86 artifact of the bundled model, built once through the real export pipeline."""
    from core.config import BuildConfig
    from pipelines.export import export

    out = tmp_path_factory.mktemp("dist")
    (result,) = export(BuildConfig(target="x86", out=str(out)))
    assert result.ok, result.error
    return result


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random model of every family (tests/tiny_models.py), built once."""
    from tests.tiny_models import FAMILIES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {name: build_tiny_model(spec, root / name) for name, spec in FAMILIES.items()}


@pytest.fixture(scope="session")
def tiny_exports(tiny_models, tmp_path_factory):
    """``tiny_exports(name)``: that tiny model exported to every target through the real pipeline, once per
    session (the family tests and the ARM64 tests share it); artifact folder ("mobile/tflite", ...) ->
    ArtifactResult."""
    from core.config import BuildConfig
    from pipelines.export import export

    built: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in built:
            out = tmp_path_factory.mktemp(f"dist_{name}")
            results = export(BuildConfig(model=str(tiny_models[name]), target="all", out=str(out)))
            built[name] = {Path(r.folder).relative_to(out / name).as_posix(): r for r in results}
        return built[name]

    return get


@pytest.fixture(scope="session")
def mobile_export(tmp_path_factory) -> dict:
    """The mobile target of the bundled model (LiteRT, ExecuTorch, MediaPipe), built once through the real export
    pipeline; artifact folder ("mobile/tflite", ...) -> ArtifactResult."""
    from core.config import BuildConfig
    from pipelines.export import export

    out = tmp_path_factory.mktemp("dist-mobile")
    results = export(BuildConfig(target="mobile", out=str(out)))
    assert all(r.ok for r in results), [r.error for r in results]
    return {Path(r.folder).relative_to(out / "all-MiniLM-L6-v2").as_posix(): r for r in results}


@pytest.fixture(scope="session")
def graph(st_model):
    """The embedding graph with the in-graph float mask (what the TFLite, ExecuTorch and Core ML paths convert)."""
    from core.graph import build_graph

    return build_graph(st_model, None, additive_mask=True)


@pytest.fixture(scope="session")
def run_without_build_stack():
    """Embed two sentences with an artifact in a fresh process; fail if torch or a converter got imported."""

    def check(folder: str | Path, dim: int) -> None:
        script = (
            "import sys\n"
            "from pipelines.runtime import ArtifactEncoder\n"
            f"embeddings = ArtifactEncoder({str(folder)!r}, threads=1).encode(['A man plays a guitar.', ''])\n"
            f"assert embeddings.shape == (2, {dim}), embeddings.shape\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers',"
            " 'sentence_transformers') or (m.startswith('converters.') and m.endswith('.convert')))\n"
            "assert not heavy, heavy[:5]\n"
        )
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    return check
