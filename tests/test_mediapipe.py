"""The MediaPipe artifact: strings through MediaPipe's own TextEmbedder (the C++ task a phone runs), its tokenizer
against the model's, the app-side normalisation, and the families it must refuse."""

from __future__ import annotations

import io
import json
import shutil
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers

from cli import main
from converters.mediapipe.package import echo_model, package, packed_vocabulary
from converters.mediapipe.runner import (
    ASCII_LOWER,
    MediaPipeTextEmbedder,
    load_runner,
    mediapipe_ids,
)
from converters.mediapipe.tokenizer import Unsupported, mediapipe_vocabulary, normalize_for_mediapipe, refusal
from core.data import TOKENIZER_TEXTS
from core.errors import ArtifactError, ModelSourceError
from core.manifest import Artifact, checksums, file_sizes, parse_manifest
from core.metrics import row_cosines
from core.model_source import resolve_model
from pipelines.gatekeeper import verify_path
from pipelines.runtime import ArtifactEncoder
from pipelines.verify import gate_failures
from pipelines.verify import structural_checks as checked_structure
from targets.base import target_gate


def _tokenizer_json(source) -> dict:
    return json.loads((source.path / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def minilm_vocab(source) -> bytes:
    return mediapipe_vocabulary(_tokenizer_json(source)).vocab_txt()


@pytest.fixture(scope="module")
def artifact(mobile_export) -> Path:
    """The bundled model's MediaPipe artifact, built and gated by the real export pipeline."""
    return Path(mobile_export["mobile/mediapipe"].folder)


def test_normalisation_equals_the_models_own_normaliser():
    """normalize_for_mediapipe is Hugging Face's uncased BERT normaliser, character for character, on the
    tokenizer test strings (what the Kotlin and Swift snippets mirror)."""
    bert = normalizers.BertNormalizer(lowercase=True)
    for text in TOKENIZER_TEXTS:
        assert normalize_for_mediapipe(text) == bert.normalize_str(text), repr(text)


# Characters assigned since Unicode 3.2 can differ: the tokenizers library's category tables are older than
# Python's (U+1CF00, a combining mark since Unicode 14, is kept there and dropped here), and a phone's own Unicode
# tables are of yet another version. Such characters are [UNK] to a BERT vocabulary either way.
SETTLED_CHARACTERS = st.characters(codec="utf-8").filter(lambda c: unicodedata.ucd_3_2_0.category(c) != "Cn")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=SETTLED_CHARACTERS, max_size=40))
@example("ΟΔΟΣ ΑΘΗΝΑΣ")  # a word-final capital sigma: lowercased alone it is σ, in a word str.lower() makes it ς
@example("\U0002B820 \u0130 a\u0085b x\u200dy \ufffd")  # outside HF's CJK blocks, İ, NEL, ZWJ, U+FFFD
def test_normalisation_equals_the_models_own_normaliser_on_any_text(text):
    assert normalize_for_mediapipe(text) == normalizers.BertNormalizer(lowercase=True).normalize_str(text)


def test_mediapipe_ids_equal_the_models_after_normalisation(st_model, minilm_vocab, dev_sentences):
    """MediaPipe's own tokenizer (read back through an echo model) against the model's: raw strings with accents or
    non-ASCII capitals differ; after the normalisation every id matches, STS-B dev sentences included."""
    texts = list(TOKENIZER_TEXTS) + dev_sentences[:200]
    expected = [row for row in st_model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    raw = mediapipe_ids(minilm_vocab, 256, texts)
    normalized = mediapipe_ids(minilm_vocab, 256, [normalize_for_mediapipe(t) for t in texts])
    assert normalized == expected
    differing = [t for t, got, want in zip(texts, raw, expected, strict=True) if got != want]
    assert "naïve résumé" in differing and "Москва" in differing and len(differing) >= 15


def test_vocabulary_renames_specials_where_the_model_names_them_otherwise(tiny_models):
    """MPNet frames a sentence with <s> ... </s>; MediaPipe looks up [CLS] and [SEP]: the packed vocabulary renames
    them in place, so the ids stay the model's."""
    mpnet = tiny_models["mpnet"]
    vocabulary = mediapipe_vocabulary(_tokenizer_json_at(mpnet))
    assert vocabulary.renamed == {"<s>": "[CLS]", "</s>": "[SEP]", "<unk>": "[UNK]"}
    assert vocabulary.tokens[0] == "[CLS]" and vocabulary.tokens[2] == "[SEP]"
    assert refusal(resolve_model(str(mpnet))) is None


def test_ordinary_entries_spelled_like_mediapipe_specials_are_renamed_out_of_the_way(tiny_models):
    """all-mpnet-base-v2 keeps BERT's [CLS] and [SEP] as ordinary entries beside its <s> and </s>: no text reaches
    them, so they take other unreachable names and <s>/</s> take MediaPipe's. As added tokens, a text would."""
    tokenizer = _tokenizer_json_at(tiny_models["mpnet"])
    vocab = tokenizer["model"]["vocab"]
    cls_id, sep_id = len(vocab), len(vocab) + 1
    ordinary = {**tokenizer, "model": {**tokenizer["model"], "vocab": {**vocab, "[CLS]": cls_id, "[SEP]": sep_id}}}
    vocabulary = mediapipe_vocabulary(ordinary)
    assert vocabulary.tokens[0] == "[CLS]" and vocabulary.tokens[2] == "[SEP]"
    assert vocabulary.tokens[cls_id] == f"[CLS]#{cls_id}" and vocabulary.tokens[sep_id] == f"[SEP]#{sep_id}"
    encoding = Tokenizer.from_str(json.dumps(ordinary)).encode("[CLS] and [SEP] as text")
    assert cls_id not in encoding.ids and sep_id not in encoding.ids
    added = {**ordinary, "added_tokens": [*tokenizer["added_tokens"], {
        "id": cls_id, "content": "[CLS]", "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True}]}
    assert cls_id in Tokenizer.from_str(json.dumps(added)).encode("[CLS] as text").ids
    with pytest.raises(Unsupported, match=r"\[CLS\].*a text can produce it"):
        mediapipe_vocabulary(added)


def _tokenizer_json_at(model_dir: Path) -> dict:
    return json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("family", "reason"), [("roberta", "byte-level BPE"), ("xlm-roberta", "Unigram"),
                                                ("modernbert", "byte-level BPE"), ("qwen3", "byte-level BPE")])
def test_tokenizers_mediapipe_cannot_reproduce_are_refused_in_one_line(tiny_models, family, reason):
    why = refusal(resolve_model(str(tiny_models[family])))
    assert why is not None and reason in why and "\n" not in why


def test_cased_and_clashing_vocabularies_are_refused(source):
    tokenizer = _tokenizer_json(source)
    cased = {**tokenizer, "normalizer": {**tokenizer["normalizer"], "lowercase": False}}
    with pytest.raises(Unsupported, match="cased"):
        mediapipe_vocabulary(cased)
    # The model frames sentences with [unused0], and its vocabulary holds [CLS] as an ordinary token: renaming
    # [unused0] to the [CLS] MediaPipe looks up would give one name two ids.
    single = [{"SpecialToken": {"id": "[unused0]", "type_id": 0}}, *tokenizer["post_processor"]["single"][1:]]
    clash = {**tokenizer, "post_processor": {**tokenizer["post_processor"], "single": single}}
    with pytest.raises(Unsupported, match=r"\[CLS\]"):
        mediapipe_vocabulary(clash)


def test_packaged_file_is_what_mediapipe_opens(minilm_vocab):
    """One subgraph, int32 ids/mask/segment inputs in metadata order, the vocabulary as an appended zip."""
    model = package(echo_model(16), minilm_vocab, "echo")
    embedder = MediaPipeTextEmbedder(model)
    try:
        ids, mask = embedder.outputs("hello world")
    finally:
        embedder.close()
    assert ids[:4].tolist() == [101, 7592, 2088, 102] and mask.tolist() == [1] * 4 + [0] * 12


def test_artifact_meets_the_mobile_gate_through_mediapipe(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
    parity, gate = manifest["parity"], manifest["gate"]
    assert manifest["verdict"] == "pass" and manifest["runtime"] == "mediapipe"
    assert parity["mean_cosine"] >= gate["min_mean_cosine"] and parity["min_cosine"] >= gate["min_cosine"]
    normalized, raw = parity["app_text"]["normalized"], parity["app_text"]["raw"]
    assert normalized["strings"]["min_cosine"] >= gate["min_cosine"]
    assert raw["strings"]["min_cosine"] < 0.5  # what the normalisation fixes: the app would ship wrong vectors
    agreement = manifest["structure"]["facts"]["mediapipe_tokenizer"]
    assert agreement["ids_equal_normalized"] == agreement["strings"] >= len(TOKENIZER_TEXTS) + 200
    assert manifest["shapes"][0]["sequence"] == 256  # the model's own limit: long texts truncate as the source
    report = (artifact / "report.md").read_text(encoding="utf-8")
    assert "Strings through the app's own tokenizer" in report and f"{raw['strings']['min_cosine']:.4f}" in report


def test_python_mirror_of_the_android_snippet(artifact, st_model):
    """What the model card's Kotlin does (createFromFile, embed(normalizeForModel(text))), in MediaPipe's Python API
    on the same C++ task, against the fp32 model."""
    card = (artifact / "MODEL_CARD.md").read_text(encoding="utf-8")
    for needle in ("TextEmbedder.createFromFile", "fun normalizeForModel", "func normalizeForModel"):
        assert needle in card
    embedder = MediaPipeTextEmbedder(artifact / "text_embedder.tflite")
    texts = ["naïve résumé", "Café déjà vu", "A man is playing a guitar."]
    try:
        got = np.stack([embedder.outputs(normalize_for_mediapipe(t))[0] for t in texts])
    finally:
        embedder.close()
    assert row_cosines(got, st_model.encode(texts)).min() >= 0.97


def test_verify_runs_the_artifact_through_mediapipe(artifact):
    (row,) = verify_path(artifact, limit=60)
    assert row["ok"], row["failures"]
    assert "mediapipe" in row["parity"]["runtime"] and row["parity"]["app_text"] is not None


class CountingEmbedder:
    """The runner's own TextEmbedder, counting the texts it embeds."""

    def __init__(self, embedder: MediaPipeTextEmbedder) -> None:
        self.embedder, self.texts = embedder, []

    def first_output(self, text: str) -> np.ndarray:
        self.texts.append(text)
        return self.embedder.first_output(text)

    def close(self) -> None:
        self.embedder.close()


def test_the_raw_pass_reuses_a_normalised_vector_only_where_mediapipe_gets_the_same_input(artifact, dev_sentences):
    """After the app-normalised pass, the gate's raw pass embeds only the texts whose normalisation changes more
    than MediaPipe's own ASCII lowercasing; every reused row equals what a fresh TextEmbedder gives the raw text,
    bit for bit, so the gate's raw figures are the same as without the reuse."""
    texts = list(TOKENIZER_TEXTS) + dev_sentences[:40]
    changed = [normalize_for_mediapipe(text) != text.translate(ASCII_LOWER) for text in texts]
    reusing, fresh = ArtifactEncoder(artifact).runner, ArtifactEncoder(artifact).runner
    try:
        reusing.embed_texts(texts)  # the normalised pass, which the gate runs first
        reusing._embedder = counting = CountingEmbedder(reusing._embedder)
        reused = reusing.embed_texts(texts, normalize=False)
        expected = fresh.embed_texts(texts, normalize=False)
    finally:
        reusing.close()
        fresh.close()
    assert np.array_equal(reused, expected)
    embedded = {text.translate(ASCII_LOWER) for text, again in zip(texts, changed, strict=True) if again}
    assert sorted(counting.texts) == sorted(embedded) and 10 <= len(embedded) < len(texts) - 30


def test_a_packed_vocabulary_that_tokenizes_otherwise_fails_the_gate(artifact, tmp_path):
    """Two tokens swapped in the packed vocab.txt (checksums rewritten): MediaPipe now feeds other ids than the
    model's tokenizer, and the structure check that the gate reads says so."""
    broken = tmp_path / "mediapipe"
    shutil.copytree(artifact, broken)
    model_file = broken / "text_embedder.tflite"
    vocab = packed_vocabulary(model_file.read_bytes()).decode("utf-8").split("\n")
    first, second = vocab.index("the"), vocab.index("man")
    vocab[first], vocab[second] = vocab[second], vocab[first]
    model_file.write_bytes(package(model_file.read_bytes(), "\n".join(vocab).encode("utf-8"), "tampered"))
    manifest = json.loads((broken / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"], manifest["file_bytes"] = checksums(broken), file_sizes(broken)
    typed = parse_manifest(manifest, "tampered manifest")
    structure = checked_structure(Artifact(broken, typed))
    failures = gate_failures(typed.parity, target_gate("mobile", "mediapipe"), structure)
    assert len(failures) == 1 and "other ids than the model's" in failures[0], failures


@pytest.mark.parametrize(("damage", "needle"), [
    ({"shapes": [{"batch": 1, "sequence": 10**12, "name": "text"}]}, r"shapes\[0\]\.sequence is \d+, outside"),
    ({"shapes": [{"batch": "one"}]}, r"shapes\[0\]\.batch must be an integer"),
    ({"shapes": [{"batch": 1, "sequence": 64, "name": "a"}, {"batch": 1, "sequence": 64, "name": "b"}]},
     "one shape of batch 1"),
    ({"conversion": ["not", "a", "record"]}, "conversion must be an object"),
    ({"conversion": {"app_normalization": ["x"]}}, "conversion: app_normalization must be a string"),
    ({"conversion": {"app_normalization": "nfkc-please"}}, "app_normalization is 'nfkc-please'; known: bert-uncased"),
])
def test_a_hostile_manifest_is_one_line(artifact, damage, needle):
    manifest = {**json.loads((artifact / "manifest.json").read_text(encoding="utf-8")), **damage}
    with pytest.raises(ArtifactError, match=needle):
        load_runner(Artifact(artifact, parse_manifest(manifest, "manifest.json")), None)


def test_a_packed_vocabulary_compressed_or_missing_is_one_line():
    model = echo_model(8)
    with pytest.raises(ArtifactError, match="no readable vocab.txt"):
        packed_vocabulary(model)
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("vocab.txt", "[PAD]\n" * 100_000)  # a small file that unpacks large
    with pytest.raises(ArtifactError, match="compressed"):
        packed_vocabulary(model + deflated.getvalue())


@pytest.mark.parametrize("damage", [{"normalizer": "BertNormalizer"}, {"pre_tokenizer": 7}, {"model": None},
                                    {"post_processor": {"type": "TemplateProcessing", "single": [
                                        {"SpecialToken": 1}, {"Sequence": 2}, {"SpecialToken": 3}]}}])
def test_a_hostile_tokenizer_json_is_refused_not_a_traceback(source, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(source.path, model)
    tokenizer = {**_tokenizer_json(source), **damage}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    try:  # the model check parses tokenizer.json first; what it lets through, the refusal reads
        why = refusal(resolve_model(str(model)))
    except ModelSourceError as exc:
        why = str(exc)
    assert why is not None and "\n" not in why


def test_embed_refuses_the_text_in_artifact_in_one_line(artifact, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A man is playing a guitar.\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["embed", str(artifact), "--input", str(corpus), "--output",
                                       str(tmp_path / "vectors")])
    assert result.exit_code == 2 and "embed a corpus with the tflite or x86 artifact" in result.stderr
    assert not (tmp_path / "vectors").exists()
