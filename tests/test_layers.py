"""The layers hold: imports point one way, running an artifact needs no build stack, registries are strict,
and a new target is a registration away."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import targets
from converters import ArtifactFormat, register_format
from converters.onnx import OnnxOptions
from core.config import BuildConfig
from core.errors import ConfigError
from pipelines.export import export
from pipelines.gatekeeper import verify_path
from targets import ArtifactPlan, Gate, Target, register

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "converters", "targets", "pipelines")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True)


def test_lint_imports_passes():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "core" / "errors.py").open("a") as handle:
        handle.write("\nfrom pipelines import export  # noqa: E402  (the foundation reaching up to a stage)\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "pipelines > targets > converters > core BROKEN" in result.stdout
    assert "core.errors -> pipelines.export" in result.stdout


def _project_imports(path: Path) -> tuple[set[str], set[str]]:
    """Our packages a file imports: anywhere, and inside function bodies."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    anywhere = {name for node in ast.walk(tree) for name in _names(node)}
    nested = {name for function in functions for node in ast.walk(function) for name in _names(node)}
    return anywhere & set(PACKAGES), nested & set(PACKAGES)


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def test_no_project_import_hides_in_a_function_body():
    """Imports between our packages sit at module top, where import-linter and a reader see them."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(nested)} inside a function"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (nested := _project_imports(path)[1])
    ]
    assert not offenders, offenders


def test_cli_stands_on_the_stages_and_the_foundation_only():
    # cli.py imports its stage inside each command so `--help` and `targets` start without torch.
    anywhere, _ = _project_imports(ROOT / "cli.py")
    assert anywhere == {"pipelines", "core"}


def test_running_onnx_needs_no_torch(x86_artifact, run_without_build_stack):
    run_without_build_stack(x86_artifact.folder, 384)


def test_registries_refuse_a_taken_name():
    with pytest.raises(ConfigError, match="'x86' is already registered"):
        register(targets.TARGETS["x86"])
    with pytest.raises(ConfigError, match="'onnx' is already registered"):
        register_format(ArtifactFormat("onnx", OnnxOptions, "converters.onnx.convert", "converters.onnx.runner", False))


def test_a_plan_whose_options_do_not_fit_its_format_is_refused(monkeypatch):
    monkeypatch.setattr(targets.base, "TARGETS", dict(targets.TARGETS))
    plan = ArtifactPlan("", "tflite", OnnxOptions(), Gate(0.99, 0.97, 0.5), "mismatched")
    with pytest.raises(ConfigError, match="needs TFLiteOptions, got OnnxOptions"):
        register(Target("mismatched", "wrong options", (plan,)))


def test_a_fifth_target_from_this_file_alone(tiny_models, monkeypatch, tmp_path):
    """An existing converter with other options: fp32 ONNX, unfused, with a near-exact gate."""
    monkeypatch.setattr(targets.base, "TARGETS", dict(targets.TARGETS))
    register(Target(
        name="x86-fp32",
        description="ONNX fp32, unfused: the exact reference for a server that has memory to spare",
        plans=(ArtifactPlan(
            folder="",
            format="onnx",
            options=OnnxOptions(precision="fp32", fuse=False),
            gate=Gate(min_mean_cosine=0.9999, min_cosine=0.999, max_spearman_drop=0.05),
            description="ONNX fp32",
        ),),
    ))
    (result,) = export(BuildConfig(model=str(tiny_models["bert"]), target="x86-fp32", out=str(tmp_path)))
    assert result.ok, result.error
    assert Path(result.folder) == tmp_path / "bert" / "x86-fp32"
    assert result.manifest.to_json()["precision"] == "fp32" and result.manifest.to_json()["verdict"] == "pass"
    (row,) = verify_path(Path(result.folder), limit=200)
    assert row["ok"], row["failures"]
    assert row["target"] == "x86-fp32" and row["parity"]["mean_cosine"] >= 0.9999
