"""Layouts other tools read: a built artifact arranged so a library people already use loads it with its own
API (sentence-transformers' ONNX backend, fastembed, transformers.js).

A layout is a small object registered by name: the artifact formats it takes and how it writes its folder. The
folder holds what the library reads, the artifact's test vectors, and layout.json (which artifact, which layout,
the lines that load it). It sits beside the artifacts (``<model>/layouts/<layout>/<artifact>``), never inside
one: a manifest lists every file of its artifact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from converters.onnx.outputs import as_one_token_sequence, rename_output
from converters.web import WASM_FILE, WEB_OUTPUT, WEBGPU_FILE
from core.errors import ArtifactError, ConfigError, gist
from core.manifest import Artifact, Manifest, check_files, read_artifact
from core.schema import encode
from pipelines.staging import staging_dir, swap_into_place
from targets import get_targets

LAYOUT_RECORD = "layout.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
ST_OUTPUT = "last_hidden_state"  # what optimum's ORTModelForFeatureExtraction returns to sentence-transformers


@dataclass(frozen=True)
class Layout:
    name: str
    library: str
    formats: tuple[str, ...]  # artifact formats it takes
    # (artifact, folder to write, where that folder will be) -> the lines that load it from there.
    write: Callable[[Artifact, Path, Path], str]


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    if layout.name in LAYOUTS:
        raise ConfigError(f"layout {layout.name!r} is already registered; pick another name")
    LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ConfigError(f"unknown layout {name!r}; choose one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def layouts_for_target(names: Sequence[str], target: str) -> list[Layout]:
    """The named layouts, each checked to take some artifact the target (or 'all') makes: refused before a build."""
    layouts = [get_layout(name) for name in names]
    formats = {plan.format for t in get_targets(target) for plan in t.plans}
    for layout in layouts:
        if not formats & set(layout.formats):
            raise ConfigError(f"--layout {layout.name} takes {' or '.join(layout.formats)} artifacts; target "
                              f"{target!r} makes none: pick a target that does (x86, gpu; web for transformers.js)")
    return layouts


def _copy_tokenizer(artifact_dir: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (artifact_dir / name).is_file():
            shutil.copyfile(artifact_dir / name, out / name)


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _load(path: Path) -> onnx.ModelProto:
    """The artifact's ONNX graph, weights inside: ours never keep external data (their files stay under protobuf's
    2 GB), and a graph that points at some would make onnx read files the manifest does not vouch for."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others on a damaged file
        raise ArtifactError(f"{path} is not a readable ONNX model ({gist(exc, last=True)}); export it again") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ArtifactError(f"{path} keeps its weights in external data files; a layout takes a self-contained "
                            "model: export the artifact again")
    return model


def _json(path: Path, data: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sentence_transformers_file(manifest: Manifest) -> str:
    """sentence-transformers' own names: model_qint8_<CPU class>.onnx (its presets avx2, avx512, avx512_vnni;
    ours adds amx), model_O4.onnx for fp16 with fusions, model.onnx for fp32."""
    if manifest.precision == "int8":
        return f"onnx/model_qint8_{manifest.isa.class_}.onnx"
    return "onnx/model_O4.onnx" if manifest.precision == "fp16" else "onnx/model.onnx"


def write_sentence_transformers(artifact: Artifact, out: Path, final: Path) -> str:
    manifest = artifact.manifest
    file_name = sentence_transformers_file(manifest)
    model = _load(artifact.model_path)
    _save(as_one_token_sequence(model, ST_OUTPUT), out / file_name)
    _copy_tokenizer(artifact.folder, out)
    dim = manifest.embedding_dim
    # The graph already pools (and normalises, as the source model does); the one-token sequence passes whole.
    _json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ])
    _json(out / "sentence_bert_config.json",
          {"max_seq_length": manifest.max_seq_length, "do_lower_case": False})
    _json(out / "1_Pooling" / "config.json", {"word_embedding_dimension": dim, "pooling_mode_cls_token": True,
                                              "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                                              "pooling_mode_mean_sqrt_len_tokens": False})
    _json(out / "config_sentence_transformers.json", {
        "prompts": manifest.prompts, "default_prompt_name": manifest.default_prompt_name,
        "similarity_fn_name": "cosine"})
    return ("from sentence_transformers import SentenceTransformer\n"
            f'model = SentenceTransformer("{final}", backend="onnx", model_kwargs={{"file_name": "{file_name}"}})\n'
            'embeddings = model.encode(["A man is playing a guitar."])')


def write_fastembed(artifact: Artifact, out: Path, final: Path) -> str:
    manifest = artifact.manifest
    shutil.copyfile(artifact.model_path, out / "model.onnx")
    _copy_tokenizer(artifact.folder, out)
    name = f"local/{manifest.model.name}-{manifest.target}"
    # The graph pools and normalises inside: no pooling, no normalisation on fastembed's side.
    return ("from fastembed import TextEmbedding\n"
            "from fastembed.common.model_description import ModelSource, PoolingType\n"
            f'TextEmbedding.add_custom_model(model="{name}", pooling=PoolingType.DISABLED, normalization=False,\n'
            f'    sources=ModelSource(hf="{name}"), dim={manifest.embedding_dim}, model_file="model.onnx")\n'
            f'model = TextEmbedding("{name}", specific_model_path="{final}")\n'
            'embeddings = list(model.embed(["A man is playing a guitar."]))')


# transformers.js picks the file by dtype: q8 -> model_quantized, fp16 -> model_fp16, fp32 -> model.
TRANSFORMERS_JS_FILE = {"int8": WASM_FILE, "fp16": WEBGPU_FILE, "fp32": "onnx/model.onnx"}
TRANSFORMERS_JS_DTYPE = {"int8": "q8", "fp16": "fp16", "fp32": "fp32"}


def write_transformers_js(artifact: Artifact, out: Path, final: Path) -> str:
    manifest = artifact.manifest
    if manifest.format == "onnx_web":  # already its layout: both files, output named as it reads it
        for name in (WASM_FILE, WEBGPU_FILE):
            if (artifact.folder / name).is_file():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(artifact.folder / name, out / name)
    else:
        model = _load(artifact.model_path)
        _save(rename_output(model, WEB_OUTPUT), out / TRANSFORMERS_JS_FILE[manifest.precision])
    _copy_tokenizer(artifact.folder, out)
    dtype = TRANSFORMERS_JS_DTYPE[manifest.precision]
    return ('import { pipeline, env } from "@huggingface/transformers";\n'
            f'env.localModelPath = "{final.parent}/"; env.allowRemoteModels = false;\n'
            f'const extractor = await pipeline("feature-extraction", "{final.name}", {{ dtype: "{dtype}" }});\n'
            "// pooled and normalised inside the model: the default pooling 'none' returns the embedding\n"
            'const embedding = await extractor("A man is playing a guitar.");')


register_layout(Layout("sentence-transformers", "sentence-transformers (backend=\"onnx\")", ("onnx",),
                       write_sentence_transformers))
register_layout(Layout("fastembed", "fastembed (TextEmbedding.add_custom_model)", ("onnx",), write_fastembed))
register_layout(Layout("transformers.js", "transformers.js (pipeline('feature-extraction'))", ("onnx", "onnx_web"),
                       write_transformers_js))


def write_layout(layout: Layout, artifact_dir: Path, out: Path, location: Path | None = None) -> Path:
    """The artifact (checked against its manifest first) in ``layout`` at ``out``, written atomically; its usage
    lines load it from ``location`` (default: ``out``; a release archive names the folder it unpacks to)."""
    artifact = read_artifact(artifact_dir)
    check_files(artifact)
    manifest = artifact.manifest
    if manifest.format not in layout.formats:
        raise ConfigError(f"the {layout.name} layout takes {' or '.join(layout.formats)} artifacts; "
                          f"{artifact_dir} is {manifest.format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        usage = layout.write(artifact, tmp, location or out)
        shutil.copyfile(artifact_dir / "test_vectors.json", tmp / "test_vectors.json")
        # The model file's sha256 as the manifest lists it (check_files verified it above).
        _json(tmp / LAYOUT_RECORD, {
            "layout": layout.name, "library": layout.library,
            "artifact": {"target": manifest.target, "artifact": manifest.artifact, "file": manifest.file,
                         "sha256": manifest.files[manifest.file], "gate": encode(manifest.gate),
                         "parity": encode(manifest.parity)},
            "usage": usage,
        })
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def layout_folder(artifact: Artifact, layout: Layout) -> Path:
    """<model>/layouts/<layout>/<target>[-<plan folder>] for an artifact at <model>/<target>[/<plan folder>]."""
    folder, target = artifact.folder, artifact.manifest.target
    target_dir = next((p for p in (folder, *folder.parents) if p.name == target), folder)
    name = "-".join(folder.relative_to(target_dir.parent).parts)
    return target_dir.parent / "layouts" / layout.name / name

