"""`export --config`: rebuild what a manifest (or a build config) records, and compare the bytes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.config import BuildConfig
from core.errors import ArtifactError, OutputError
from core.manifest import MANIFEST, MAX_MANIFEST_BYTES, SCHEMA, Manifest, read_manifest
from core.safe_io import read_json
from pipelines.export import ArtifactResult


def rebuild_config(config_file: Path, out: str, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> tuple[BuildConfig, Manifest | None]:
    """The build recorded in ``config_file`` (a build config or an artifact's manifest.json), writing into ``out``;
    with the manifest, when it is one, to compare the rebuilt bytes against. The rebuild never replaces the
    artifact it is checked against. Pickle and remote code come from the command line only: a config file
    that asks for them is as easy to write as the model it points at."""
    config = replace(BuildConfig.from_file(config_file), out=out, allow_pickle=allow_pickle,
                     trust_remote_code=trust_remote_code)
    artifact = Path(config_file).parent
    if Path(config_file).name != MANIFEST or not (artifact / MANIFEST).is_file():
        return config, None
    if artifact.resolve().is_relative_to(Path(out).resolve()):
        raise OutputError(f"rebuilding into {out!r} would replace the artifact whose manifest is being rebuilt "
                          f"({artifact}); pass another --out")
    # A manifest of an older schema still names its build (BuildConfig reads it): it is rebuilt, not compared.
    recorded = read_json(artifact / MANIFEST, ArtifactError, "artifact manifest", cap=MAX_MANIFEST_BYTES)
    if recorded.get("schema") != SCHEMA:
        return config, None
    return config, read_manifest(artifact)


def rebuild_differences(original: Manifest, results: list[ArtifactResult]) -> list[str] | None:
    """Files of the rebuilt artifact whose bytes differ from the original manifest's checksums (missing and extra
    files included); None when the rebuild made no artifact of that kind."""
    rebuilt = next((r.manifest for r in results if r.manifest and r.manifest.target == original.target
                    and r.manifest.artifact == original.artifact), None)
    if rebuilt is None:
        return None
    expected, got = original.files, rebuilt.files
    return sorted(name for name in set(expected) | set(got) if expected.get(name) != got.get(name))
