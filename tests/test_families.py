"""Every model family to every target: tiny random models built here (tests/tiny_models.py), exported through
the real pipeline and checked on each artifact's own runtime."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import core.families.base as family_registry
from cli import main
from converters.base import SEQUENCE_LIMIT
from core.config import BuildConfig
from core.families import FAMILIES as REGISTERED
from core.families.base import Decoder
from core.graph import build_graph
from core.metrics import row_cosines
from core.model_source import load_sentence_transformer, resolve_model
from pipelines.export import export
from pipelines.runtime import ArtifactEncoder
from tests.tiny_models import FAMILIES

ARTIFACTS = ("x86", "x86-openvino", "mobile/tflite", "mobile/executorch", "mobile/mediapipe", "apple", "gpu", "web")
# MediaPipe's tokenizer is BERT WordPiece: these families' tokenizers are refused for it (the reason in one line).
MEDIAPIPE_REFUSED = {"roberta": "byte-level BPE", "xlm-roberta": "Unigram", "modernbert": "byte-level BPE",
                     "qwen3": "byte-level BPE"}
# The registered family each tiny model's config.model_type resolves to.
REGISTERED_NAME = {"bert": "bert", "distilbert": "distilbert", "mpnet": "mpnet", "roberta": "roberta",
                   "xlm-roberta": "xlm-roberta", "modernbert": "modernbert", "qwen3": "qwen"}
# Where each family's own position ids start (RoBERTa and MPNet count from padding_idx + 1).
FIRST_POSITION = {"roberta": 2, "mpnet": 2, "modernbert": 0, "qwen3": 0}
ROTARY = {"modernbert", "qwen3"}  # relative by construction: a uniform shift changes nothing, a stretch does


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tiny_exports):
    return request.param, tiny_exports(request.param)


def test_every_target_passes_its_gate_on_its_own_runtime(exported):
    name, results = exported
    assert set(results) == set(ARTIFACTS)
    for artifact, result in results.items():
        if artifact == "mobile/mediapipe" and name in MEDIAPIPE_REFUSED:
            assert result.ok and MEDIAPIPE_REFUSED[name] in result.refused and "\n" not in result.refused
            assert not Path(result.folder).exists()
            continue
        assert result.ok and not result.refused, f"{name} {artifact}: {result.error}"
        parity = result.manifest.to_json()["parity"]
        assert parity["nonfinite_rows"] == 0 and parity["sentences"] > 2800
        assert parity["mean_cosine"] >= 0.99, (name, artifact, parity)
        assert parity["test_vectors_min_cosine"] >= result.manifest.gate.min_cosine, (name, artifact)
        assert result.manifest.to_json()["graph"]["family"] == REGISTERED_NAME[FAMILIES[name].family]


def test_sequence_limits_follow_the_model(exported):
    name, results = exported
    limit = min(FAMILIES[name].max_seq_length, SEQUENCE_LIMIT)
    for artifact in ("mobile/tflite", "apple", "mobile/mediapipe"):
        if results[artifact].refused:
            continue
        manifest = results[artifact].manifest.to_json()
        assert max(s["sequence"] for s in manifest["shapes"]) == limit == manifest["tokenizer"]["max_length"]
    assert results["mobile/executorch"].manifest.conversion["max_sequence"] == limit
    assert results["x86"].manifest.to_json()["max_seq_length"] == FAMILIES[name].max_seq_length


def test_fusion_follows_the_family(exported):
    name, results = exported
    family = REGISTERED[REGISTERED_NAME[FAMILIES[name].family]]
    fused = results["gpu"].manifest.conversion
    expected = family.expected_fusions(results["gpu"].manifest.to_json()["graph"]["num_hidden_layers"])
    assert fused["fusion"]["expected"] == expected
    if family.ort_fusion is None:
        assert fused["fusion"]["type"] is None and "unfused" in fused["fusion"]["note"]
    else:
        assert fused["fusion"]["complete"], fused["fusion"]


def test_prompts_are_recorded_and_applied(tiny_models, exported):
    name, results = exported
    spec = FAMILIES[name]
    manifest = results["x86"].manifest.to_json()
    assert manifest["prompts"] == {k: v for k, v in spec.prompts.items() if v}
    assert manifest["default_prompt_name"] == spec.default_prompt_name
    if spec.default_prompt_name:
        encoder = ArtifactEncoder(Path(results["x86"].folder))
        prompt = spec.prompts[spec.default_prompt_name]
        (with_default,) = encoder.tokenize(["A man plays a guitar."])
        (spelled_out,) = encoder.tokenize([prompt + "A man plays a guitar."], prompt_name="passage")
        assert with_default["input_ids"] != spelled_out["input_ids"]  # "passage: query: ..." differs
        st_model = load_sentence_transformer(resolve_model(str(tiny_models[name])))
        expected = st_model.encode(["A man plays a guitar."], prompt_name="passage")
        got = encoder.encode(["A man plays a guitar."], prompt_name="passage")
        assert row_cosines(got, expected)[0] >= 0.99


@pytest.mark.parametrize("name", ["roberta", "mpnet", "modernbert", "qwen3"])
def test_tiny_models_catch_a_broken_mask_or_shifted_positions(tiny_models, name, dev_sentences):
    """The parity check would notice an ignored attention mask or wrong positions: shifted by one for learned
    absolute positions, stretched for rotary ones. (A causal decoder with right padding never attends to the
    padding, so only its positions are at stake.)"""
    st_model = load_sentence_transformer(resolve_model(str(tiny_models[name])))
    sentences = sorted(dev_sentences[:64], key=len)[::4] + sorted(dev_sentences[:64], key=len)[-4:]
    expected = st_model.encode(sentences)
    tokens = st_model.tokenizer(sentences, padding=True, return_tensors="pt")
    graph = build_graph(st_model, None, additive_mask=True)
    with torch.no_grad():
        exact = graph(tokens["input_ids"], tokens["attention_mask"]).numpy()
        graph.additive_mask = False  # the encoder now sees no padding mask at all
        unmasked = graph.encoder(input_ids=tokens["input_ids"]).last_hidden_state
        ignored = graph.pool(unmasked, tokens["attention_mask"])
        steps = torch.arange(tokens["input_ids"].shape[1])[None]
        positions = FIRST_POSITION[name] + (2 * steps if name in ROTARY else steps + 1)
        moved = graph.encoder(input_ids=tokens["input_ids"], position_ids=positions).last_hidden_state
        moved = graph.pool(moved, tokens["attention_mask"])
    assert row_cosines(exact, expected).min() > 0.9999
    if not isinstance(REGISTERED[REGISTERED_NAME[name]], Decoder):  # a causal mask already hides the padding
        assert row_cosines(ignored.numpy(), expected).min() < 0.99
    assert row_cosines(moved.numpy(), expected).min() < 0.99
    unrelated = row_cosines(expected[:8], expected[8:16])
    assert 0.2 < np.median(unrelated) < 0.9  # sentences are spread out, not all alike


def test_a_refused_format_is_skipped_before_any_work(tiny_models, tmp_path, monkeypatch):
    family = family_registry.family_for("distilbert")
    # ExecuTorch and MediaPipe refused, LiteRT built: the quickest of the three builds is the one that runs
    refusing = replace(family, refused_formats={"executorch": "no ExecuTorch lowering for this family",
                                                "mediapipe": "no MediaPipe tokenizer for this family"})
    monkeypatch.setitem(family_registry._BY_MODEL_TYPE, "distilbert", refusing)
    results = export(BuildConfig(model=str(tiny_models["distilbert"]), target="mobile", out=str(tmp_path)))
    tflite, pte, mediapipe = results
    assert pte.refused == ("distilbert models cannot be exported to mobile ExecuTorch int8 (XNNPACK): "
                           "no ExecuTorch lowering for this family")
    assert mediapipe.refused.endswith(": no MediaPipe tokenizer for this family")
    assert not Path(pte.folder).exists() and not Path(mediapipe.folder).exists()
    assert tflite.ok and not tflite.refused


def test_a_target_whose_only_format_is_refused_fails_in_one_line(tiny_models, tmp_path, monkeypatch):
    family = family_registry.family_for("distilbert")
    refusing = replace(family, refused_formats={"coreml": "no Core ML lowering"})
    monkeypatch.setitem(family_registry._BY_MODEL_TYPE, "distilbert", refusing)
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_models["distilbert"]), "--target", "apple",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2
    why = "distilbert models cannot be exported to apple Core ML fp16: no Core ML lowering"
    assert result.stderr.strip() == f"error: {why}"
    assert not (tmp_path / "distilbert").exists()


def test_an_unknown_model_type_is_one_line(tiny_models, tmp_path):
    model = tmp_path / "funnel"
    shutil.copytree(tiny_models["bert"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "funnel"}))
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "model type 'funnel' is not a supported family" in result.stderr and "bert" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
