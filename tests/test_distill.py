"""`distill`: layer selection, a student trained on the teacher's embeddings, loading back and exporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from core.config import BuildConfig
from core.errors import ConfigError
from core.model_source import load_sentence_transformer, resolve_model
from pipelines.distill import DISTILL_RECORD, MatryoshkaLoss, layer_stack, layers_to_keep
from pipelines.export import export
from tests.tiny_models import FAMILIES, build_tiny_model


@pytest.mark.parametrize("total, layers, keep, expected", [
    (6, 3, None, [0, 2, 5]),  # evenly spaced, first and last kept
    (6, 2, None, [0, 5]),
    (6, 1, None, [5]),
    (12, 4, None, [0, 4, 7, 11]),
    (6, None, (4, 0, 2, 2), [0, 2, 4]),
    (6, 6, None, [0, 1, 2, 3, 4, 5]),
])
def test_layers_to_keep(total, layers, keep, expected):
    assert layers_to_keep(total, layers, keep) == expected


@pytest.mark.parametrize("layers, keep, needle", [(7, None, "between 1 and"), (None, (0, 6), "layers 0 to 5")])
def test_impossible_layer_choices_are_refused(layers, keep, needle):
    with pytest.raises(ConfigError, match=needle):
        layers_to_keep(6, layers, keep)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return build_tiny_model(FAMILIES["roberta"], tmp_path_factory.mktemp("teacher") / "tiny-roberta")


def test_a_distilled_student_loads_back_learns_and_exports(tiny_teacher, tmp_path, dev_sentences):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(dev_sentences[:256]) + "\n")
    out = tmp_path / "student"
    result = CliRunner().invoke(main, ["distill", "--teacher", str(tiny_teacher), "--keep", "1", "--corpus",
                                       str(corpus), "--epochs", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / DISTILL_RECORD).read_text())
    assert record["kept_layers"] == [1] and record["teacher_layers"] == 2
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]  # it learned the teacher's embeddings
    student = load_sentence_transformer(resolve_model(str(out)))
    assert len(layer_stack(student[0].auto_model)[2]) == 1
    (artifact,) = export(BuildConfig(model=str(out), target="x86", out=str(tmp_path / "dist")))
    assert artifact.ok, artifact.error
    # the report sets the student beside its teacher
    distillation = artifact.manifest.to_json()["model"]["distillation"]
    assert distillation["teacher"] == "tiny-roberta" and distillation["kept_layers"] == [1]


def test_distill_refuses_a_folder_in_use(tiny_teacher, tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["distill", "--teacher", str(tiny_teacher), "--layers", "1", "--out",
                                       str(tmp_path / "student")])
    assert result.exit_code == 2 and "not empty" in result.stderr, result.output


def test_matryoshka_loss_is_zero_when_the_leading_dims_hold_everything():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(256, 8)) @ rng.normal(size=(8, 32))  # rank 8 in 32 dims
    targets = (targets - targets.mean(axis=0)).astype(np.float32)  # centred: PCA's centring changes no cosine
    loss = MatryoshkaLoss(targets, (8, 16))
    exact = torch.from_numpy(targets)
    assert float(loss(exact, exact)) < 1e-8
    assert float(loss(exact + torch.randn_like(exact), exact)) > 1e-3
    with pytest.raises(ConfigError, match="--matryoshka"):
        MatryoshkaLoss(targets, (32,))


def test_matryoshka_training_keeps_every_layer(tiny_teacher, tmp_path, dev_sentences):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(dev_sentences[:128]) + "\n")
    out = tmp_path / "student"
    result = CliRunner().invoke(main, ["distill", "--teacher", str(tiny_teacher), "--matryoshka", "16,32",
                                       "--corpus", str(corpus), "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / DISTILL_RECORD).read_text())
    assert record["kept_layers"] == [0, 1] and record["config"]["matryoshka_dims"] == [16, 32]
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
