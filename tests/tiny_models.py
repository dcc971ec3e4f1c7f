"""Tiny random-weight sentence-transformers models of every family, built from config objects (no download).

Each has its family's own tokenizer type (WordPiece, byte-level BPE, Unigram), trained in a second on
STS-B train sentences, and its family's specials, inputs and positions. Weights are scaled up from the
stock init (std 0.02, where every sentence embeds at cosine 0.85-1.0 to every other) so that unrelated
sentences sit near cosine 0.4-0.75: a parity test can then tell a broken mask or shifted positions apart.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertTokenizerFast,
    ModernBertConfig,
    MPNetConfig,
    MPNetTokenizerFast,
    PreTrainedTokenizerFast,
    Qwen2TokenizerFast,
    Qwen3Config,
    RobertaConfig,
    RobertaTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
)

from core.data import load_stsb

VOCAB = 2000
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 2, 4, 128
WORD_EMBEDDING_STD = 0.5


@dataclass(frozen=True)
class TinySpec:
    family: str
    pooling: str = "mean"
    max_seq_length: int = 128
    dense: bool = False  # a Dense layer with tanh after pooling, as bge-style heads have
    normalize: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    weight_std: float = 0.1  # matrices other than the word embeddings (std 0.5)


# The families of the issue, each as a sentence-transformers user would bring it.
FAMILIES: dict[str, TinySpec] = {
    "bert": TinySpec("bert", pooling="cls", dense=True, normalize=False, max_seq_length=512, weight_std=0.2,
                     prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="query"),
    "bert-max": TinySpec("bert", pooling="max", weight_std=0.2),
    "distilbert": TinySpec("distilbert"),
    "mpnet": TinySpec("mpnet", max_seq_length=384),
    "roberta": TinySpec("roberta"),
    "xlm-roberta": TinySpec("xlm-roberta", pooling="mean_sqrt_len_tokens"),
    "modernbert": TinySpec("modernbert"),
    "qwen3": TinySpec("qwen3", pooling="lasttoken", weight_std=0.12,
                      prompts={"query": "Instruct: Given a sentence, retrieve similar sentences\nQuery: "}),
}


def _corpus() -> Iterator[str]:
    yield from load_stsb("train").unique_sentences()


def _wordpiece(specials: list[str], lowercase: bool = True) -> Tokenizer:
    """A WordPiece vocabulary built here rather than by WordPieceTrainer, whose picks among equally frequent
    merges and whose ids follow hash order, different in every process: every character of the corpus as a word
    start and as a continuation, then whole words by frequency (ties by spelling)."""
    unk = specials[1] if specials[1] != "<s>" else "<unk>"
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for sentence in _corpus():
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)))
    characters = sorted({character for word in counts for character in word})
    words = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if len(word) > 1]
    vocab = specials + characters + ["##" + c for c in characters]
    vocab += words[: VOCAB - len(vocab)]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token=unk))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _byte_bpe(specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def _unigram(specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(_corpus(), trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                                     unk_token="<unk>"))
    return tokenizer


def _template(tokenizer: Tokenizer, first: str, last: str) -> None:
    ids = [(first, tokenizer.token_to_id(first)), (last, tokenizer.token_to_id(last))]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", pair=f"{first} $A {last} $B:1 {last}:1", special_tokens=ids)


def _tokenizer(family: str, max_length: int):
    kwargs = {"model_max_length": max_length}
    if family in ("bert", "distilbert"):
        tok = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        _template(tok, "[CLS]", "[SEP]")
        cls = BertTokenizerFast if family == "bert" else DistilBertTokenizerFast
        return cls(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                   sep_token="[SEP]", mask_token="[MASK]", **kwargs)
    if family == "mpnet":
        tok = _wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        _template(tok, "<s>", "</s>")
        return MPNetTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                  cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **kwargs)
    if family in ("roberta", "xlm-roberta"):
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = _byte_bpe(specials) if family == "roberta" else _unigram(specials)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
        cls = RobertaTokenizerFast if family == "roberta" else XLMRobertaTokenizerFast
        return cls(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **kwargs)
    if family == "modernbert":
        tok = _byte_bpe(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
        _template(tok, "[CLS]", "[SEP]")
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                       pad_token="[PAD]", mask_token="[MASK]",
                                       model_input_names=["input_ids", "attention_mask"], **kwargs)
    if family == "qwen3":
        tok = _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        eos = ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))
        # Qwen3-Embedding appends the end-of-text token; its last position is what lasttoken pooling reads.
        tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A $B <|endoftext|>",
                                                           special_tokens=[eos])
        return Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token=None, bos_token=None, **kwargs)
    raise ValueError(f"no tiny model for family {family!r}")


def _config(family: str, tokenizer, max_positions: int):
    common = {"vocab_size": len(tokenizer), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE,
              "pad_token_id": tokenizer.pad_token_id}
    if family == "bert":
        return BertConfig(max_position_embeddings=max_positions, **common)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=len(tokenizer), dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                hidden_dim=INTERMEDIATE, max_position_embeddings=max_positions,
                                pad_token_id=tokenizer.pad_token_id)
    if family == "mpnet":
        return MPNetConfig(max_position_embeddings=max_positions + 2, **common)
    if family == "roberta":
        return RobertaConfig(max_position_embeddings=max_positions + 2, type_vocab_size=1, **common)
    if family == "xlm-roberta":
        return XLMRobertaConfig(max_position_embeddings=max_positions + 2, type_vocab_size=1, **common)
    if family == "modernbert":
        # Two layers: one global, one sliding-window with a 16-token window, so the window matters.
        return ModernBertConfig(max_position_embeddings=max_positions, global_attn_every_n_layers=2,
                                local_attention=16, cls_token_id=tokenizer.cls_token_id,
                                sep_token_id=tokenizer.sep_token_id, **common)
    return Qwen3Config(max_position_embeddings=max_positions, num_key_value_heads=2, head_dim=HIDDEN // HEADS,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **common)


def _scale(model: torch.nn.Module, weight_std: float) -> None:
    """Word embeddings std 0.5, other matrices ``weight_std``: sentences spread out (cosine 0.4-0.75 apart)."""
    generator = torch.Generator().manual_seed(0)
    word_embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter is word_embeddings:
                parameter.normal_(0.0, WORD_EMBEDDING_STD, generator=generator)
            elif parameter.dim() == 2:
                parameter.normal_(0.0, weight_std, generator=generator)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.02, generator=generator)


def build_tiny_model(spec: TinySpec, out: Path) -> Path:
    """Write a sentence-transformers directory for ``spec`` into ``out`` and return it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    hf_dir = out.parent / f".{out.name}-hf"
    tokenizer = _tokenizer(spec.family, spec.max_seq_length)
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(spec.family, tokenizer, spec.max_seq_length), attn_implementation="eager")
    _scale(model, spec.weight_std)
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=spec.max_seq_length)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=spec.pooling)]
    if spec.dense:
        torch.manual_seed(1)
        modules.append(Dense(HIDDEN, HIDDEN, activation_function=torch.nn.Tanh()))
    if spec.normalize:
        modules.append(Normalize())
    st_model = SentenceTransformer(modules=modules, device="cpu", prompts=spec.prompts or None,
                                   default_prompt_name=spec.default_prompt_name)
    st_model.save(str(out))
    _drop_absolute_paths(out)
    return out


def _drop_absolute_paths(out: Path) -> None:
    """The saved config must not point back at the scratch folder the weights came from."""
    config = out / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        data.pop("_name_or_path", None)
        config.write_text(json.dumps(data, indent=2))
