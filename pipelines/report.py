"""Readable reports: report.md beside every artifact."""

from __future__ import annotations

from pathlib import Path


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _size_mb(manifest: dict) -> float:
    return manifest.get("size_bytes", 0) / 1e6


def artifact_report(manifest: dict) -> str:
    parity = manifest.get("parity") or {}
    speed = manifest.get("speed") or {}
    lines = [
        f"# {manifest['model']['name']} — {manifest['target']} ({manifest['artifact']})",
        "",
        f"- format: {manifest['format']} (`{manifest['file']}`), precision {manifest['precision']}, "
        f"runtime {manifest['runtime']}",
        f"- inputs: {', '.join(i['name'] + ':' + i['dtype'] for i in manifest['inputs'])}; "
        f"output `{manifest['output']['name']}` float32 × {manifest['embedding_dim']}",
        f"- pooling {manifest['pooling']}, normalised: {manifest['normalized']}, "
        f"max sequence length {manifest['max_seq_length']} tokens (longer texts are truncated as the source model does)",
    ]
    if manifest.get("shapes"):
        shapes = ", ".join(f"{s['batch']}×{s['sequence']}" for s in manifest["shapes"])
        lines.append(f"- fixed shapes (batch×sequence buckets; inputs are padded to the smallest that fits): {shapes}")
    if manifest.get("pca"):
        pca = manifest["pca"]
        lines.append(f"- PCA {pca['source_dim']} → {pca['dims']} (explained variance "
                     f"{pca['explained_variance_ratio']:.3f}, fit on {pca['fit_corpus']})")
    if parity:
        label = " (EMULATED: the native runtime cannot run on this OS)" if parity.get("emulated") else ""
        lines += [
            "",
            f"## Parity vs fp32 PyTorch on STS-B dev{label}",
            "",
            "| sentences | mean cos | min cos | p1 cos | STS-B ×100 | fp32 STS-B | drop | verdict |",
            "|---|---|---|---|---|---|---|---|",
            f"| {parity['sentences']} | {_fmt(parity['mean_cosine'])} | {_fmt(parity['min_cosine'])} | "
            f"{_fmt(parity['p1_cosine'])} | {_fmt(parity['spearman'], 2)} | {_fmt(parity['spearman_source'], 2)} | "
            f"{_fmt(parity['spearman_drop'], 2)} | {manifest.get('verdict', '–')} |",
            "",
            f"Runtime: {parity.get('runtime', '')}. Gate: {manifest['gate']}.",
        ]
    if speed:
        lines += ["", "## Speed", "", speed.get("table_md", "")]
    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| {name} | `{digest[:16]}…` |" for name, digest in manifest["files"].items()]
    return "\n".join(lines) + "\n"


def write_artifact_report(artifact_dir: Path, manifest: dict) -> None:
    path = artifact_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(artifact_report(manifest), encoding="utf-8")
    tmp.replace(path)
