"""Shared fixtures: the real bundled model, loaded once per test session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

# Tests that share a costly session build (a whole export) run on one pytest-xdist worker, so it is built once;
# any other test runs with its module (module fixtures). The groups that build exports are handed out first, so
# that both workers finish together. pytest-xdist's own `loadgroup` cannot do this: under pytest 9 the group it
# appends to a node id is lost, so the controller groups node ids itself (SharedBuildScheduling).
GROUPS_BY_MODULE = {
    "tests/test_executorch.py": "minilm-mobile",  # mobile_export
    "tests/test_tflite.py": "minilm-mobile",
    "tests/test_targets.py": "minilm-mobile",
    "tests/test_mediapipe.py": "minilm-mobile",
    "tests/test_arm64.py": "tiny-bert-max",  # tiny_exports("bert-max")
    **{f"tests/test_{name}.py": "minilm-x86" for name in  # x86_artifact
       ("bench", "compression", "embed", "gate", "layers", "layouts", "reproducible", "robustness", "x86")},
}
GROUPS_BY_TEST = {"tests/test_gate.py::test_verify_reaches_the_verdict_export_recorded": "tiny-bert"}
FAMILY_PARAM = re.compile(r"^tests/test_families\.py::\w+\[([\w.-]+)\]$")  # `exported`: tiny_exports(family)
COSTLY_BUILDS = {"mobile_export": "minilm-mobile", "x86_artifact": "minilm-x86", "tiny_exports": "tiny-",
                 "exported": "tiny-"}


def worker_group(nodeid: str) -> str:
    if family := FAMILY_PARAM.match(nodeid):
        return f"tiny-{family[1]}"
    module, _, test = nodeid.partition("::")
    return GROUPS_BY_TEST.get(f"{module}::{test.split('[')[0]}") or GROUPS_BY_MODULE.get(module, module)


class SharedBuildScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return worker_group(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> SharedBuildScheduling:
    return SharedBuildScheduling(config, log)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Checks that every test of a costly build is in that build's group (a new test module that uses one must be
    added above), then orders the groups that build first."""
    for item in items:
        for fixture, group in COSTLY_BUILDS.items():
            if fixture in item.fixturenames and not worker_group(item.nodeid).startswith(group):
                raise pytest.UsageError(f"{item.nodeid} uses the session build {fixture}: add it to a group "
                                        "in tests/conftest.py so that it is built once")
    costly = {worker_group(item.nodeid) for item in items if set(COSTLY_BUILDS) & set(item.fixturenames)}
    items.sort(key=lambda item: worker_group(item.nodeid) not in costly)  # stable: each group keeps its order


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
def tiny_x86(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny BERT model and its x86 artifact: for what holds for any model (staging, signals, rebuilds, weight
    ranges), built in seconds."""
    from core.config import BuildConfig
    from pipelines.export import export

    (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="x86",
                                   out=str(tmp_path_factory.mktemp("tiny-dist"))))
    assert result.ok, result.error
    return tiny_models["bert"], Path(result.folder)


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
def object_store():
    """An S3-compatible server on 127.0.0.1 (moto's) for this session: ``(bucket URI maker, pyarrow filesystem)``.
    ``uri("corpus/in")`` is the place as `embed` takes it, endpoint included."""
    import logging

    import pyarrow.fs as fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in credentials}
    os.environ.update(credentials)  # child processes (the CLI, Ray workers) inherit them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    admin = fs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                            allow_bucket_creation=True)
    admin.create_dir("bucket")
    yield (lambda key: f"s3://bucket/{key}?{options}"), admin
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
