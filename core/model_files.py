"""Checks of a model directory's files before anything heavy reads them.

A model directory may be damaged (a truncated download) or made to do harm (a module path that leaves
the folder, a config that asks for terabytes). Everything here reads with a size cap and raises one
ModelSourceError line naming the file; what passes is then handed to sentence-transformers.

- modules.json: a list of modules, each type one of the sentence-transformers modules this toolchain
  folds into its graph, named by full import path, each path inside the directory;
- every JSON file a module reads (configs, tokenizer files): a JSON object, size-capped;
- safetensors files: the header parsed by hand (size-capped), every tensor's bytes inside the file and
  the file exactly as long as the header says, so a truncated file is caught before loading;
- config.json: every size a positive integer below a sane bound, and the model it describes no larger
  than its weights hold, so an absurd config is refused before anything is allocated.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from tokenizers import Tokenizer

from core.errors import ModelSourceError, ToolchainError, gist
from core.manifest import Distillation
from core.safe_io import MAX_JSON_BYTES, contained, read_capped, read_json
from core.schema import decode
from core.tokenizer_guard import tokenizer_errors

# modules.json types, by full import path: the names sentence-transformers writes now and wrote before.
_MODULE_HOMES = {
    "Transformer": ("base.modules", "base.modules.transformer"),
    "Pooling": ("sentence_transformer.modules", "sentence_transformer.modules.pooling"),
    "Dense": ("base.modules", "base.modules.dense", "sentence_transformer.modules"),
    "Normalize": ("base.modules", "base.modules.normalize", "sentence_transformer.modules"),
}
MODULE_TYPES: dict[str, str] = {
    f"sentence_transformers.{home}.{kind}": kind
    for kind, homes in _MODULE_HOMES.items()
    for home in ("models", *homes)
}
DISTILL_RECORD = "distillation.json"  # written by `distill` beside the model it made
JSON_FILES = ("config.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# A real header takes about 150 bytes a tensor: a few hundred KB for the largest models. The caps bound what a
# hostile header costs before it is refused (16 MB of JSON parses in about 2 s; 1.5 million empty tensors took
# minutes to check and load), and sit far above any real model: sentence-embedding models have a few hundred
# tensors, and the shards of the largest language models a few thousand each.
MAX_SAFETENSORS_HEADER = 16 << 20
MAX_SAFETENSORS_TENSORS = 100_000
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# config.json sizes under the names the supported families use; far above any sentence-embedding model.
SIZE_LIMITS = {
    "hidden_size": 1 << 15, "dim": 1 << 15, "num_hidden_layers": 512, "n_layers": 512,
    "num_attention_heads": 1024, "n_heads": 1024, "num_key_value_heads": 1024,
    "intermediate_size": 1 << 18, "hidden_dim": 1 << 18, "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 21, "type_vocab_size": 1 << 10, "head_dim": 1 << 12,
}


def _dimension(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flag(value: object) -> bool:
    return isinstance(value, bool)


def _is(expected: object):
    return lambda value: value == expected


# Keys of each module's own config that decide what gets built or imported, with what they may hold. Dense's
# activation is imported and instantiated by name: only torch's activation (and identity) modules may be named.
ACTIVATION = re.compile(r"^torch\.nn\.modules\.(activation|linear)\.[A-Za-z0-9]+$")
SPECIAL_TOKEN = lambda v: v is None or isinstance(v, (str, dict))  # noqa: E731
MODULE_CONFIGS: dict[str, tuple[tuple[str, dict], ...]] = {
    "Transformer": (
        ("sentence_bert_config.json", {
            "max_seq_length": lambda v: v is None or _positive(v),
            "do_lower_case": _flag,
            "module_output_name": _is("token_embeddings"),
            "transformer_task": _is("feature-extraction"),
            "modality_config": _is({"text": {"method": "forward", "method_output_name": "last_hidden_state"}}),
        }),
        ("tokenizer_config.json", {
            "model_max_length": lambda v: _positive(v) or isinstance(v, float) and v >= 1,
            "padding_side": lambda v: v in ("right", "left"), "truncation_side": lambda v: v in ("right", "left"),
            "do_lower_case": _flag, "clean_up_tokenization_spaces": _flag,
            **{f"{name}_token": SPECIAL_TOKEN for name in ("pad", "unk", "cls", "sep", "mask", "bos", "eos")},
        }),
    ),
    "Pooling": (
        ("config.json", {
            "word_embedding_dimension": _dimension, "embedding_dimension": _dimension,
            "pooling_mode": lambda v: isinstance(v, str) and v.isidentifier(), "include_prompt": _flag,
            **{f"pooling_mode_{m}": _flag for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                                                     "weightedmean_tokens", "lasttoken")},
        }),
    ),
    "Dense": (
        ("config.json", {
            "in_features": _dimension, "out_features": _dimension, "bias": _flag,
            "activation_function": lambda v: isinstance(v, str) and bool(ACTIVATION.match(v)),
            "module_input_name": _is("sentence_embedding"), "module_output_name": _is("sentence_embedding"),
        }),
    ),
}


def check_module_config(folder: Path, kind: str) -> dict[str, dict]:
    """The module's own config files that exist, checked: file name -> its content."""
    configs = {}
    for name, rules in MODULE_CONFIGS.get(kind, ()):
        if not (folder / name).exists():
            continue
        config = configs[name] = read_json(folder / name, ModelSourceError, f"{kind} module config")
        for key, allowed in rules.items():
            if key in config and not allowed(config[key]):
                raise ModelSourceError(f"{folder / name}: {key} = {config[key]!r:.60} is not a value this toolchain "
                                       f"accepts for a {kind} module; re-download the model")
    return configs


def check_sequence_length(module_config_file: Path, module_config: dict, config: dict) -> None:
    """max_seq_length no longer than the positions the model has: a longer text would index past its position table
    (a crash minutes into an export, after the model loaded and embedded the fit corpus)."""
    length = module_config.get("max_seq_length")
    positions = config.get("max_position_embeddings")
    limit = positions or SIZE_LIMITS["max_position_embeddings"]  # a family without the key: the sane cap
    if isinstance(length, int) and length > limit:
        what = f"the model's {limit} positions (config.json max_position_embeddings)" if positions else \
            f"the {limit} tokens any supported model takes"
        raise ModelSourceError(f"{module_config_file}: max_seq_length {length} is more than {what}; set "
                               f"max_seq_length to {limit} or less")


def check_modules(path: Path) -> list[dict]:
    """modules.json, every entry checked; returns it."""
    modules_file = path / "modules.json"
    modules = read_json(modules_file, ModelSourceError, "module list", expect=list)
    if not modules:
        raise ModelSourceError(f"{modules_file} lists no modules")
    for entry in modules:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ModelSourceError(f"{modules_file}: every module needs a 'type' string, got {entry!r:.80}")
        if entry["type"] not in MODULE_TYPES:
            known = ", ".join(sorted(set(MODULE_TYPES.values())))
            raise ModelSourceError(
                f"{modules_file}: module type {entry['type']!r:.100} is not a sentence-transformers module this "
                f"toolchain folds into one graph (supported: {known}, by their sentence_transformers import path)"
            )
        contained(path, entry.get("path", ""), ModelSourceError, f"{modules_file} module {entry.get('name')!r:.40}")
    names = [entry.get("name") for entry in modules]
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ModelSourceError(f"{modules_file}: every module needs its own 'name' string, got {names!r:.80}")
    kinds = [MODULE_TYPES[entry["type"]] for entry in modules]
    if kinds[0] != "Transformer":
        raise ModelSourceError(f"{modules_file}: the first module must be a Transformer (it lists {kinds})")
    return modules


def link_root(path: Path) -> Path:
    """The folder a model directory's symlinks may point into: the directory itself, or for a hub download
    (``models--org--name/snapshots/REV``, whose files link to ``../../blobs``) the cached repository."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent
    return path


def check_links_stay_inside(path: Path) -> None:
    root = link_root(path).resolve()
    for entry in path.rglob("*"):
        if entry.is_symlink() and not entry.resolve().is_relative_to(root):
            raise ModelSourceError(f"{entry} is a symlink leading out of the model directory; copy the file in")


@dataclass(frozen=True)
class ModelLayout:
    """What the checks of a model directory read, so nothing reads it again: its modules and the Transformer's."""

    modules: tuple[dict, ...]  # modules.json, every entry checked
    transformer_dir: Path  # the first module's folder, inside the model directory
    model_type: str  # config.json's model_type there
    distillation: Distillation | None  # the record `distill` left (its manifests' model.distillation); None if none


def check_model_dir(path: Path, spec: str) -> list[dict]:
    """A sentence-transformers directory: modules.json present and checked, no symlink leading out; its modules."""
    if not (path / "modules.json").is_file():
        raise ModelSourceError(f"{spec!r} is not a sentence-transformers model directory (no modules.json in {path})")
    check_links_stay_inside(path)
    return check_modules(path)


def check_model_files(path: Path, spec: str) -> ModelLayout:
    """Every file of every module that sentence-transformers will read, before it reads them: the one check of a
    model directory (its result travels with the ModelSource)."""
    modules = check_model_dir(path, spec)
    config: dict = {}
    for entry in modules:
        folder = contained(path, entry.get("path", ""), ModelSourceError, f"{path / 'modules.json'}")
        for name in JSON_FILES:
            if (folder / name).exists():
                read_json(folder / name, ModelSourceError, "model file", cap=MAX_JSON_BYTES)
        module_configs = check_module_config(folder, MODULE_TYPES[entry["type"]])
        headers = [safetensors_header(p) for p in sorted(folder.glob("*.safetensors"))]
        if MODULE_TYPES[entry["type"]] == "Transformer":
            checked = check_transformer_config(folder / "config.json", headers)
            check_sequence_length(folder / "sentence_bert_config.json",
                                  module_configs.get("sentence_bert_config.json", {}), checked)
            config = config or checked  # the first module's: the one the graph is built from
            if (folder / "tokenizer.json").exists():
                check_tokenizer(folder / "tokenizer.json", checked)
    transformer_dir = contained(path, modules[0].get("path", ""), ModelSourceError, f"{path / 'modules.json'}")
    return ModelLayout(tuple(modules), transformer_dir, config["model_type"], read_distillation(path))


def read_distillation(model_dir: Path) -> Distillation | None:
    """What a model directory's distillation record says about where it came from, for its artifacts' manifests;
    None for a model that was not distilled here."""
    path = model_dir / DISTILL_RECORD
    if not path.is_file():
        return None
    record = read_json(path, ModelSourceError, "distillation record")
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    # The manifest's entry, checked by the same schema the manifest reader uses (core.manifest).
    entry = {**{f.name: record.get(f.name) for f in fields(Distillation) if f.name != "matryoshka_dims"},
             "matryoshka_dims": config.get("matryoshka_dims")}
    where = f"{path} is damaged (delete it if the model was not distilled, or distill again)"
    return decode(Distillation, entry, ModelSourceError, where)


def read_tokenizer(path: Path, error: type[ToolchainError], fix: str) -> Tokenizer:
    """tokenizer.json, size-capped and parsed; a malformed file is one ``error`` line that ends with ``fix``."""
    data = read_capped(path, MAX_JSON_BYTES, error, "tokenizer")
    with tokenizer_errors(error, f"{path} is not a valid tokenizer; {fix}"):
        return Tokenizer.from_str(data.decode("utf-8"))


def check_tokenizer(path: Path, config: dict) -> None:
    """tokenizer.json parses, and its ids fit the model's embedding table (a larger vocabulary belongs to another
    model, and its extra ids would index past the table)."""
    tokenizer = read_tokenizer(path, ModelSourceError, "re-download it")
    ids = tokenizer.get_vocab(with_added_tokens=True).values()
    rows = config.get("vocab_size")
    if ids and isinstance(rows, int) and max(ids) >= rows:
        raise ModelSourceError(f"{path} has token id {max(ids)} but the model's embedding table ends at id {rows - 1}: "
                               "the tokenizer belongs to another model")


def safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor: (dtype, shape)} from a safetensors file, which must be complete and consistent."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelSourceError(f"{path} is truncated (shorter than a safetensors header); re-download it")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ModelSourceError(f"{path} has a damaged header (it claims {length} bytes); re-download it")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_capped_objects(path))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelSourceError(f"{path} has a damaged header (not JSON); re-download it") from None
    if not isinstance(header, dict):
        raise ModelSourceError(f"{path} has a damaged header; re-download it")
    if len(header) - ("__metadata__" in header) > MAX_SAFETENSORS_TENSORS:
        raise _too_many_tensors(path)
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        spans.append(_tensor_span(path, name, entry))
        tensors[name] = (entry["dtype"], entry["shape"])
    spans.sort()
    data_bytes = size - 8 - length
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)) or (spans and spans[-1][1] != data_bytes):
        raise ModelSourceError(f"{path} is truncated or padded: its tensors do not fill the file as its header "
                               "says; re-download it")
    return tensors


def _too_many_tensors(path: Path) -> ModelSourceError:
    return ModelSourceError(f"{path} lists more than {MAX_SAFETENSORS_TENSORS} tensors, far more than any real model "
                            "has: it is damaged or not a model's weights; re-download it")


def _capped_objects(path: Path) -> Callable[[list[tuple[str, object]]], dict]:
    """A json.loads hook that stops a header of millions of tensors while it parses, so it costs no more than the
    first MAX_SAFETENSORS_TENSORS. It counts JSON objects: one a tensor, the metadata and the header itself (the
    exact count of tensors is checked after parsing; a header whose tensors are not objects is refused then)."""
    count = 0

    def build(pairs: list[tuple[str, object]]) -> dict:
        nonlocal count
        count += 1
        if count > MAX_SAFETENSORS_TENSORS + 2:
            raise _too_many_tensors(path)
        return dict(pairs)

    return build


def _tensor_span(path: Path, name: str, entry: object) -> tuple[int, int]:
    ok = isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_ITEMSIZE
    shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if isinstance(entry, dict) else (None, None)
    ok = ok and _ints(shape) and _ints(offsets) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]
    if not ok or math.prod(shape) * SAFETENSORS_ITEMSIZE[entry["dtype"]] != offsets[1] - offsets[0]:
        raise ModelSourceError(f"{path}: tensor {name!r:.80} has a damaged entry in the header; re-download it")
    return offsets[0], offsets[1]


def _ints(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def check_transformer_config(config_file: Path, headers: list[dict[str, tuple[str, list[int]]]]) -> dict:
    """Sizes in config.json sane, and the model they describe no larger than the weights: refuse before
    transformers allocates a model from them."""
    config = read_json(config_file, ModelSourceError, "transformer config")
    if not isinstance(config.get("model_type"), str):
        raise ModelSourceError(f"{config_file} has no model_type; it is not a transformers config")
    sizes = {}
    for key, limit in SIZE_LIMITS.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise ModelSourceError(f"{config_file}: {key} = {value!r:.40} is not a positive integer up to {limit}")
        sizes[key] = value
    hidden = sizes.get("hidden_size") or sizes.get("dim") or 0
    layers = sizes.get("num_hidden_layers") or sizes.get("n_layers") or 0
    inner = sizes.get("intermediate_size") or sizes.get("hidden_dim") or 0
    # A lower bound for any supported family: embeddings, query and output projections, two MLP matrices.
    described = sizes.get("vocab_size", 0) * hidden + layers * (2 * hidden * hidden + 2 * hidden * inner)
    held = sum(math.prod(shape) for header in headers for _, shape in header.values())
    if headers and described > 1.1 * held + 1_000_000:
        raise ModelSourceError(
            f"{config_file} describes a model of at least {described / 1e6:.0f} M parameters but its weights hold "
            f"{held / 1e6:.0f} M: the config and the weights do not belong together"
        )
    return config


def check_weights_match_config(folder: Path, trust_remote_code: bool = False) -> None:
    """Every parameter of the model config.json describes is in the safetensors files, with the same shape.

    The model is built on the meta device (shapes only, no memory). transformers itself would fill a missing
    tensor with random values and carry on, shipping a model that embeds noise, and report a shape mismatch
    in a table we do not show. The pooler is left out: the embedding graph does not use it."""
    import torch
    import transformers

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return
    stored = {name: shape for path in files for name, (_, shape) in safetensors_header(path).items()}
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for a config it cannot build
        raise ModelSourceError(f"{folder / 'config.json'} does not describe a model transformers can build "
                               f"({gist(exc)})") from None
    for name, parameter in model.named_parameters():
        if name.startswith("pooler."):
            continue
        match = name if name in stored else next((s for s in stored if s.endswith("." + name)), None)
        if match is None:
            raise ModelSourceError(f"{files[0]} lacks the tensor {name!r} that {folder / 'config.json'} describes: "
                                   "the weights are damaged or belong to another model")
        if list(parameter.shape) != stored[match]:
            raise ModelSourceError(f"{files[0]}: {match} is {stored[match]} but {folder / 'config.json'} makes it "
                                   f"{list(parameter.shape)}: the config and the weights do not belong together")
