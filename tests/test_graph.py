"""The embedding graph reproduces sentence-transformers, and its parts behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.graph import Pool, build_graph, projection_layer
from core.metrics import row_cosines
from core.pca import fit_pca
from pipelines.verify import TEST_SENTENCES


def _tokenize(st_model, sentences, **kwargs):
    return st_model.tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("additive_mask", [False, True])
def test_graph_matches_sentence_transformers(st_model, dev_sentences, additive_mask):
    sentences = list(TEST_SENTENCES) + dev_sentences[:52]
    expected = st_model.encode(sentences, batch_size=64)
    tokens = _tokenize(st_model, sentences)
    graph = build_graph(st_model, None, additive_mask=additive_mask)
    with torch.no_grad():
        got = graph(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"]).numpy()
    assert got.shape == (len(sentences), 384)
    assert row_cosines(got, expected).min() > 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len_tokens"])
def test_pooling_ignores_padding(mode):
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    padded_garbage = hidden.clone()
    padded_garbage[:, 3:] = 1000.0
    pool = Pool(mode)
    torch.testing.assert_close(pool(hidden, mask), pool(padded_garbage, mask))
    torch.testing.assert_close(pool(hidden, mask), pool(hidden[:, :3], mask[:, :3]))


def test_unknown_pooling_mode_is_a_clear_error():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="pooling mode 'attention' is not supported"):
        Pool("attention")


def test_pca_is_a_centred_linear_layer_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32)) + 3.0
    first, second = fit_pca(x, 8), fit_pca(x[::-1].copy(), 8)
    np.testing.assert_allclose(first.components, second.components, atol=1e-10)
    linear = projection_layer(first)
    with torch.no_grad():
        folded = torch.nn.functional.normalize(linear(torch.from_numpy(x).float()), dim=-1).numpy()
    np.testing.assert_allclose(folded, first.apply(x), atol=1e-4)
    # Centred: the projected corpus has zero mean.
    assert np.abs(((x - first.mean) @ first.components.T).mean(axis=0)).max() < 1e-8
    assert 0 < first.explained_variance_ratio <= 1
