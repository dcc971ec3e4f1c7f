"""`distill`: a smaller student from a teacher model, before export.

The student is the teacher with a subset of its transformer layers (evenly spaced by default), trained to
reproduce the teacher's sentence embeddings (MSE) on a sentence corpus: STS-B train by default. The teacher's
embeddings are computed once; the student then trains for a few epochs. The result is a normal
sentence-transformers directory that every target exports.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.data import load_stsb, read_corpus
from core.errors import ConfigError, ModelSourceError, OutputError
from core.manifest import write_json_atomic
from core.metrics import sts_spearman
from core.model_files import DISTILL_RECORD
from core.pca import fit_pca
from core.tokenizer_guard import tokenizer_errors


@dataclass(frozen=True)
class DistillConfig:
    teacher: str | None
    layers: int | None = None  # keep this many layers, evenly spaced
    keep: tuple[int, ...] | None = None  # or exactly these layer indices
    corpus: str | None = None  # None: STS-B train sentences
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4
    seed: int = 0
    matryoshka_dims: tuple[int, ...] | None = None  # also keep the teacher's similarities in these leading PCA dims


def layer_stack(auto_model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The ModuleList holding the transformer layers (encoder.layer, transformer.layer, layers ...): the one whose
    length is the config's layer count. Returns (its parent, its attribute name, the list)."""
    count = auto_model.config.num_hidden_layers if hasattr(auto_model.config, "num_hidden_layers") else \
        auto_model.config.n_layers
    for parent in auto_model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == count:
                return parent, name, child
    raise ConfigError(f"cannot find the {count} transformer layers of {type(auto_model).__name__} to distill")


def layers_to_keep(total: int, layers: int | None, keep: Sequence[int] | None) -> list[int]:
    """``keep`` as given (sorted, unique, in range), or ``layers`` indices evenly spaced from the first to the last."""
    if keep:
        chosen = sorted(set(keep))
        if chosen[0] < 0 or chosen[-1] >= total:
            raise ConfigError(f"--keep {','.join(map(str, keep))}: the teacher has layers 0 to {total - 1}")
        return chosen
    if layers is None or not 1 <= layers <= total:
        raise ConfigError(f"--layers must be between 1 and the teacher's {total} layers, got {layers}")
    return sorted({round(i * (total - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [total - 1]


def make_student(teacher, keep: list[int]):
    """A copy of the teacher with only the layers in ``keep``; its config says the new layer count."""
    student = copy.deepcopy(teacher)
    auto_model = student[0].auto_model
    parent, name, stack = layer_stack(auto_model)
    setattr(parent, name, torch.nn.ModuleList([stack[i] for i in keep]))
    for attribute in ("num_hidden_layers", "n_layers"):
        if hasattr(auto_model.config, attribute):
            setattr(auto_model.config, attribute, len(keep))
    return student


def _forward(model, sentences: Sequence[str]) -> torch.Tensor:
    features = model.tokenize(list(sentences))
    return model(features)["sentence_embedding"]


class MatryoshkaLoss:
    """Matryoshka-style: the student's output, in the teacher's PCA frame, cut to each of ``dims`` leading
    dimensions, should give the teacher's full cosine similarities within a batch. Export then fits PCA on the
    student, so a smaller ``--dims`` loses less than PCA of the teacher alone."""

    def __init__(self, targets: np.ndarray, dims: Sequence[int]) -> None:
        if not all(0 < d < targets.shape[1] for d in dims):
            raise ConfigError(f"--matryoshka sizes must be between 1 and {targets.shape[1] - 1}, got {list(dims)}")
        frame = fit_pca(targets, max(dims))
        self.components = torch.from_numpy(frame.components).float()
        self.mean = torch.from_numpy(frame.mean).float()
        self.dims = sorted(dims)

    def __call__(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(targets, dim=1)
        similarities = unit @ unit.T
        projected = (embeddings - self.mean) @ self.components.T
        losses = []
        for dims in self.dims:
            cut = torch.nn.functional.normalize(projected[:, :dims], dim=1)
            losses.append(((cut @ cut.T - similarities) ** 2).mean())
        return torch.stack(losses).sum()


def train_student(student, sentences: list[str], targets: np.ndarray, config: DistillConfig,
                  progress: Callable[[int, float], None] | None = None) -> list[float]:
    """MSE to the teacher's embeddings (plus the Matryoshka term if asked); returns the mean loss of each epoch.
    ``progress`` gets (batches, loss)."""
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate)
    steps = config.epochs * math.ceil(len(sentences) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / steps))
    target = torch.from_numpy(targets)
    matryoshka = MatryoshkaLoss(targets, config.matryoshka_dims) if config.matryoshka_dims else None
    student.train()
    losses = []
    for _ in range(config.epochs):
        order = generator.permutation(len(sentences))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            embeddings = _forward(student, [sentences[i] for i in index])
            loss = torch.nn.functional.mse_loss(embeddings, target[index])
            if matryoshka is not None:
                loss = loss + matryoshka(embeddings, target[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(index)
            if progress:
                progress(1, float(loss))
        losses.append(total / len(sentences))
    student.eval()
    return losses


def stsb_dev_spearman(model) -> float:
    pairs = load_stsb("dev")
    sentences = pairs.unique_sentences()
    return sts_spearman(model.encode(sentences, batch_size=64, convert_to_numpy=True), sentences, pairs)


@dataclass
class DistillResult:
    teacher: str  # the teacher's name, as its artifacts are named: reports set a student beside its teacher
    kept_layers: list[int]
    teacher_layers: int
    epoch_losses: list[float]
    spearman_teacher: float
    spearman_student: float
    seconds: float
    config: dict

    @property
    def drop(self) -> float:
        return self.spearman_teacher - self.spearman_student


def distill(teacher, teacher_name: str, config: DistillConfig, sentences: list[str], out: Path,
            progress: Callable[[int, float], None] | None = None) -> DistillResult:
    """Build, train, evaluate and save the student into ``out`` (a new folder)."""
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty; pass a new folder to --out")
    started = time.perf_counter()
    total = len(layer_stack(teacher[0].auto_model)[2])
    everything = config.layers is None and not config.keep and config.matryoshka_dims  # Matryoshka training only
    keep = list(range(total)) if everything else layers_to_keep(total, config.layers, config.keep)
    with torch.no_grad(), tokenizer_errors(ModelSourceError, f"the teacher {teacher_name!r} failed on the texts"):
        targets = teacher.encode(sentences, batch_size=64, convert_to_numpy=True).astype(np.float32)
    student = make_student(teacher, keep)
    losses = train_student(student, sentences, targets, config, progress)
    result = DistillResult(teacher_name, keep, total, losses, stsb_dev_spearman(teacher), stsb_dev_spearman(student),
                           time.perf_counter() - started, {**asdict(config), "keep": keep})
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        student.save(str(staging))
        write_json_atomic(staging / DISTILL_RECORD, asdict(result))
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)  # onto a missing or empty folder: the student appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def training_sentences(corpus: str | None) -> list[str]:
    return read_corpus(Path(corpus)) if corpus else load_stsb("train").unique_sentences()
