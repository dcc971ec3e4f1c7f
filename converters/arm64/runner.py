"""Runners for the emulated ARM64 environment: the same Runner / TextRunner protocols as the x86 runners, so the
runtime wrapper (padding, buckets, prompts, normalisation) and the parity code are the ones every other check
uses. One long-lived process per artifact and CPU model serves every batch (converters.arm64.guest's framing)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

import numpy as np

from converters.arm64 import ARM64_FORMATS, CPU_MODELS
from converters.arm64.guest import GuestError, header, read_arrays, write_arrays
from converters.base import Runner, Shape
from converters.mediapipe.runner import Normalize, text_input
from core.errors import ArtifactError, ConfigError, MissingDependencyError, ToolchainError
from core.manifest import Artifact
from core.reference import cache_dir

HERE = Path(__file__).resolve().parent
SETUP_FILES = ("setup.sh", "pte_runner.cpp")
RUNTIME_PACKAGES = {"LITERT_VERSION": "ai-edge-litert", "MEDIAPIPE_VERSION": "mediapipe",
                    "EXECUTORCH_VERSION": "executorch"}
READY = ".ready"


class Arm64SetupError(ToolchainError):
    """The emulated ARM64 environment could not be set up (a package registry unreachable, a download failed)."""


@dataclass(frozen=True)
class Arm64Environment:
    folder: Path

    @property
    def qemu(self) -> Path:
        return self.folder / "bin" / "qemu-aarch64"

    @property
    def root(self) -> Path:
        return self.folder / "root"

    def command(self, cpu: str, *args: str) -> list[str]:
        if cpu not in CPU_MODELS:
            raise ConfigError(f"unknown ARM CPU model {cpu!r}; choose from {', '.join(CPU_MODELS)}")
        return [str(self.qemu), "-cpu", cpu, "-L", str(self.root), *args]

    def qemu_version(self) -> str:
        return subprocess.run([str(self.qemu), "--version"], capture_output=True, text=True).stdout.split("\n")[0]


def _versions() -> dict[str, str]:
    """The aarch64 runtimes are the versions installed here for x86."""
    try:
        return {variable: metadata.version(package) for variable, package in RUNTIME_PACKAGES.items()}
    except metadata.PackageNotFoundError as exc:
        raise MissingDependencyError(str(exc.name), "mobile") from None


def environment_key() -> str:
    digest = hashlib.sha256(repr(sorted(_versions().items())).encode())
    for name in SETUP_FILES:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:12]


def ensure_environment(log: Callable[[str], None]) -> Arm64Environment:
    """The cached environment, set up on first use (about a minute and 300 MB; Debian's mirrors and PyPI)."""
    folder = cache_dir() / f"arm64-{environment_key()}"
    with (cache_dir() / ".arm64.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits for the first's set-up, then uses it
        if not (folder / READY).is_file():
            _set_up(folder, log)
    return Arm64Environment(folder)


def _set_up(folder: Path, log: Callable[[str], None]) -> None:
    log(f"setting up the emulated ARM64 environment in {folder} (once; Debian packages and PyPI)")
    staging = Path(tempfile.mkdtemp(prefix=".arm64-", dir=cache_dir()))
    try:
        process = subprocess.Popen(["bash", str(HERE / "setup.sh"), str(staging)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **_versions(), "PYTHON": sys.executable})
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip())
            if line.startswith("arm64 set-up:"):
                log(line.strip())
        if process.wait() != 0:
            raise Arm64SetupError(f"the ARM64 environment set-up failed ({lines[-1] if lines else 'no output'}); "
                                    "it needs Debian's package mirror and PyPI: check the network, then re-run")
        (staging / READY).write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class EmulatedProcess:
    """One program under qemu-aarch64 that answers framed requests until closed."""

    def __init__(self, command: list[str], log_file: IO[bytes]) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        self._log = log_file.name
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                         env=env)

    def request(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        try:
            write_arrays(self._process.stdin, arrays)
            reply = read_arrays(self._process.stdout)
        except (BrokenPipeError, EOFError):
            try:
                code = self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise ArtifactError(f"the emulated ARM64 runtime exited (code {code}); {self._log} says why") from None
        except GuestError as exc:
            raise ArtifactError(f"the emulated ARM64 runtime failed: {exc}") from None
        return reply or []

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                write_arrays(self._process.stdin, [])
                self._process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._process.kill()


class Arm64TFLiteRunner:
    """The TFLite artifact's signatures in the aarch64 ai-edge-litert (XNNPACK)."""

    def __init__(self, process: EmulatedProcess, shapes: list[Shape], cpu: str) -> None:
        self.shapes: list[Shape] | None = shapes
        self.description = f"ai-edge-litert {metadata.version('ai-edge-litert')} on emulated ARM64 {cpu}"
        self._process = process

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        if shape is None:
            raise ArtifactError("TFLite runs only its fixed shapes")
        names = list(inputs)
        request = [header({"signature": shape.name, "inputs": names}), *(inputs[n] for n in names)]
        (output,) = self._process.request(request)
        return output


class Arm64ExecuTorchRunner:
    """The .pte in the executorch aarch64 runtime libraries (XNNPACK), through converters/arm64/pte_runner.cpp."""

    shapes: list[Shape] | None = None

    def __init__(self, process: EmulatedProcess, input_names: list[str], cpu: str) -> None:
        self.description = f"executorch {metadata.version('executorch')} runtime on emulated ARM64 {cpu}"
        self._process, self._input_names = process, input_names

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None = None) -> np.ndarray:
        output, *_ = self._process.request([np.ascontiguousarray(inputs[n], dtype=np.int64)
                                            for n in self._input_names])
        return output


class Arm64MediaPipeRunner:
    """MediaPipe's aarch64 TextEmbedder (a TextRunner: strings in)."""

    def __init__(self, process: EmulatedProcess, shapes: list[Shape], normalize: Normalize, cpu: str) -> None:
        self.shapes: list[Shape] | None = shapes
        self.description = f"mediapipe {metadata.version('mediapipe')} TextEmbedder on emulated ARM64 {cpu}"
        self._process = process
        self._normalize = normalize

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        fed = [self._normalize(text) if normalize else text for text in texts]
        (output,) = self._process.request([header({"texts": fed})])
        return output

    def run(self, inputs: dict[str, np.ndarray], shape: Shape | None) -> np.ndarray:
        raise ArtifactError("the MediaPipe artifact takes strings (TextEmbedder tokenizes inside); use embed_texts")


def load_arm64_runner(environment: Arm64Environment, artifact: Artifact, cpu: str,
                      log_file: IO[bytes]) -> tuple[Runner, EmulatedProcess]:
    """The artifact's runner on the emulated CPU model, and its process (close it when done)."""
    manifest = artifact.manifest
    fmt, model = manifest.format, str(artifact.model_path)
    if fmt not in ARM64_FORMATS:
        raise ConfigError(f"{fmt} artifacts do not run on ARM64 phones; --arch arm64 checks "
                          f"{', '.join(ARM64_FORMATS)}")
    if fmt == "executorch":
        process = EmulatedProcess(environment.command(cpu, str(environment.folder / "pte" / "pte_runner"), model),
                                  log_file)
        return Arm64ExecuTorchRunner(process, [s.name for s in manifest.inputs], cpu), process
    python = str(environment.root / "usr" / "bin" / "python3")
    process = EmulatedProcess(environment.command(cpu, python, str(HERE / "guest.py"), fmt, model), log_file)
    if fmt == "mediapipe":
        shape, normalize = text_input(manifest)
        return Arm64MediaPipeRunner(process, [shape], normalize, cpu), process
    return Arm64TFLiteRunner(process, list(manifest.shapes or ()), cpu), process
