"""Every check of an export that needs no model loaded: options, corpus, output folder, the model folder (checked
once, by ``resolve_model``), its family, and the artifacts the family or the model's own files refuse."""

from __future__ import annotations

from pathlib import Path

from converters.registry import get_format
from core.config import QUANTIZATION_MODES, BuildConfig
from core.cpu import isa_class
from core.data import read_corpus
from core.errors import ConfigError
from core.families import Family, family_for
from core.model_source import ModelSource, resolve_model
from core.output_paths import check_output_folder
from pipelines.staging import check_free
from targets.base import Target, get_targets


def check_build(config: BuildConfig, source: ModelSource | None = None) -> tuple[ModelSource, Family]:
    """Every check that needs no model loaded: options, corpus, output folder, model directory and family. A
    ``source`` already resolved (and so checked: the parent of an isolated build) is not checked again."""
    if isinstance(config.dims, str) and config.dims != "auto" or isinstance(config.dims, int) and config.dims <= 0:
        raise ConfigError(f"--dims must be a positive number of dimensions or 'auto', got {config.dims}")
    if config.max_drop is not None and (config.dims != "auto" or config.max_drop < 0):
        raise ConfigError(f"--max-drop (STS-B points, >= 0) goes with --dims auto, got {config.max_drop} with "
                          f"--dims {config.dims}")
    if config.isa is not None:
        isa_class(config.isa)
    if config.quantization not in (None, *QUANTIZATION_MODES):
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATION_MODES)}, "
                          f"got {config.quantization!r}")
    if config.fit_corpus:
        read_corpus(Path(config.fit_corpus))
    source = source or resolve_model(config.model, trust_remote_code=config.trust_remote_code,
                                     allow_pickle=config.allow_pickle)
    check_output_folder(config.out, "--out", {"model folder": source.path})
    check_free(Path(config.out))  # a folder another export holds: refused before anything slow
    return source, family_for(source.layout.model_type)


def refusals(family: Family, source: ModelSource, targets: list[Target]) -> dict[tuple[str, str], str]:
    """(target, folder) -> why, for every planned artifact whose format the family, or this model's own files
    (a tokenizer the format's runtime cannot reproduce), cannot take."""
    refused = {}
    for target in targets:
        for plan in target.plans:
            check = get_format(plan.format).refusal
            what = f"cannot be exported to {target.name} {plan.description}"
            if plan.format in family.refused_formats:
                reason = family.refused_formats[plan.format]
                refused[target.name, plan.folder] = f"{family.name} models {what}: {reason}"
            elif check and (reason := check(source)):
                refused[target.name, plan.folder] = f"{source.name} ({family.name}) {what}: {reason}"
    return refused


def count_artifacts(config: BuildConfig) -> int:
    return sum(len(t.plans) for t in get_targets(config.target))


def preflight(config: BuildConfig, source: ModelSource | None = None
              ) -> tuple[ModelSource, list[Target], dict[tuple[str, str], str]]:
    """Every check that needs no model loaded, and the artifacts the model's family refuses; raises the first
    bad input as one line."""
    targets = get_targets(config.target)
    source, family = check_build(config, source)
    refused = refusals(family, source, targets)
    if len(refused) == count_artifacts(config):  # nothing left to build: one line, before any work
        raise ConfigError(next(iter(refused.values())))
    return source, targets, refused
