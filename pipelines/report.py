"""Readable reports: report.md beside every artifact."""

from __future__ import annotations

import html
from pathlib import Path

import markdown_it
import numpy as np

from core.manifest import (
    AppText,
    Arm64Record,
    Artifact,
    DimsSweepRecord,
    Manifest,
    find_artifacts,
    read_manifest,
    write_manifest,
    write_text_atomic,
)
from core.schema import encode
from pipelines.snippets import TEXT_IN_FORMATS, app_snippets

# Manifests and folder names are untrusted: HTML inside them is shown as text in report.html, never run.
MARKDOWN = markdown_it.MarkdownIt("commonmark", {"html": False}).enable("table")


def _md_text(text: str) -> str:
    """A folder name as markdown text: markup in it shows as text in any viewer, and it cannot end a table cell."""
    return html.escape(text).replace("|", "\\|").replace("`", "&#96;")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def artifact_report(manifest: Manifest) -> str:
    m = manifest
    lines = [
        f"# {m.model.name} — {m.target} ({m.artifact})",
        "",
        f"- format: {m.format} (`{m.file}`), precision {m.precision}, runtime {m.runtime}",
        f"- inputs: {', '.join(i.name + ':' + i.dtype for i in m.inputs)}; "
        f"output `{m.output.name}` float32 × {m.embedding_dim}",
        f"- pooling {m.pooling}, normalised: {m.normalized}, "
        f"max sequence length {m.max_seq_length} tokens (longer texts are truncated as by the source model)",
    ]
    if m.shapes:
        shapes = ", ".join(f"{s.batch}×{s.sequence}" for s in m.shapes)
        lines.append(f"- fixed shapes (batch×sequence buckets; inputs are padded to the smallest that fits): {shapes}")
    if m.pca:
        lines.append(f"- PCA {m.pca.source_dim} → {m.pca.dims} (explained variance "
                     f"{m.pca.explained_variance_ratio:.3f}, fit on {m.pca.fit_corpus})")
    if parity := m.parity:
        label = " (EMULATED: the native runtime cannot run on this OS)" if parity.emulated else ""
        lines += [
            "",
            f"## Parity vs fp32 PyTorch on STS-B dev{label}",
            "",
            "| sentences | mean cos | min cos | p1 cos | STS-B ×100 | fp32 STS-B | drop | verdict |",
            "|---|---|---|---|---|---|---|---|",
            f"| {parity.sentences} | {_fmt(parity.mean_cosine)} | {_fmt(parity.min_cosine)} | "
            f"{_fmt(parity.p1_cosine)} | {_fmt(parity.spearman, 2)} | {_fmt(parity.spearman_source, 2)} | "
            f"{_fmt(parity.spearman_drop, 2)} | {m.verdict or '–'} |",
            "",
            f"Runtime: {parity.runtime}. Gate: {encode(m.gate)}.",
        ]
        if parity.app_text:
            lines += ["", "## Strings through the app's own tokenizer", "", app_text_md(parity.app_text)]
    if m.arm64:
        lines += ["", "## On emulated ARM64 CPU kernels (qemu; not speeds)", "", arm64_md(m.arm64)]
    if m.speed:
        lines += ["", "## Speed", "", m.speed.table_md]
    if m.dims_sweep:
        lines += ["", "## Output size and stored precision (PCA fitted on the fit corpus, scored on STS-B dev)", "",
                  sweep_table_md(m.dims_sweep), "",
                  "int8 and binary vectors use the ranges in the manifest's `vectors` entry (core/vectors.py; "
                  "`cli.py embed --precision`)."]
    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| {name} | `{digest[:16]}…` |" for name, digest in m.files.items()]
    return "\n".join(lines) + "\n"


def app_text_md(app_text: AppText) -> str:
    """Cosine to the fp32 model on the raw strings, with and without the app-side normalisation (a text-in
    artifact's manifest ``parity.app_text``)."""
    lines = ["| strings | app-normalised: mean / min cos | raw: mean / min cos |", "|---|---|---|"]
    for key, label in (("stsb", "STS-B dev"), ("strings", "tokenizer test strings")):
        with_it, raw = getattr(app_text.normalized, key), getattr(app_text.raw, key)
        lines.append(f"| {label} | {with_it.mean_cosine:.4f} / {with_it.min_cosine:.4f} | "
                     f"{raw.mean_cosine:.4f} / {raw.min_cosine:.4f} |")
    return "\n".join(lines)


def arm64_md(record: Arm64Record) -> str:
    """The manifest's ``arm64`` entry (``verify --arch arm64``) as a table."""
    lines = [f"{record.qemu}.", "",
             "| CPU model | int8 kernels | sentences | mean cos | min cos | test vectors | max abs diff vs x86 "
             "| verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for cpu, c in record.cpus.items():
        if c.skipped:
            lines.append(f"| {cpu} | {c.kernels} | – | – | – | – | – | skipped: {c.skipped} |")
            continue
        diff = "–" if c.max_abs_diff_vs_x86 is None else f"{c.max_abs_diff_vs_x86:.1e}"
        verdict = "pass" if c.ok else "FAIL: " + "; ".join(c.failures)
        lines.append(f"| {cpu} | {c.kernels} | {c.sentences} | {_fmt(c.mean_cosine)} | {_fmt(c.min_cosine)} "
                     f"| {_fmt(c.test_vectors_min_cosine)} | {diff} | {verdict} |")
    return "\n".join(lines)


def _phone_md(root: Path) -> str:
    """Every artifact under ``root`` with app-path figures: strings through its own tokenizer, ARM64 kernels."""
    parts = []
    for folder in find_artifacts(root):
        manifest = read_manifest(folder)
        name = _md_text(folder.relative_to(root).as_posix())
        app_text = manifest.parity.app_text if manifest.parity else None
        if app_text:
            parts += [f"\n### {name}: strings through the app's own tokenizer\n", app_text_md(app_text)]
        if manifest.arm64:
            parts += [f"\n### {name}: emulated ARM64 CPU kernels\n", arm64_md(manifest.arm64)]
    return "\n".join(parts)


def record_results(artifact: Artifact) -> None:
    """The one writer of what was measured of an artifact: its manifest.json, and the report.md made from it."""
    write_manifest(artifact.folder, artifact.manifest)
    write_text_atomic(artifact.folder / "report.md", artifact_report(artifact.manifest))


def _rows(root: Path) -> list[dict]:
    rows = []
    for folder in find_artifacts(root):
        manifest = read_manifest(folder)
        parity, speed = manifest.parity, manifest.speed
        emulated = bool(parity and parity.emulated)
        rows.append({
            "name": f"{folder.relative_to(root).as_posix()}",
            "target": manifest.target,
            "artifact": manifest.artifact,
            "dims": manifest.embedding_dim,
            "size_mb": manifest.size_bytes / 1e6,
            "mean_cosine": parity and parity.mean_cosine,
            "min_cosine": parity and parity.min_cosine,
            "spearman": parity and parity.spearman,
            "spearman_drop": parity and parity.spearman_drop,
            "spearman_source": parity and parity.spearman_source,
            "source_dim": manifest.graph.source_dim,
            "source_mb": speed.baseline_size_bytes / 1e6 if speed else 0.0,
            "emulated": emulated,
            # An emulated runtime has no speed of its own worth plotting.
            "throughput_ratio": speed.throughput_ratio if speed and not emulated else None,
            "throughput_sps": speed and speed.throughput_sps,
            "latency_p50_ms": speed and speed.latency_p50_ms,
            "verdict": manifest.verdict or "not verified",
            "model": manifest.model.name,
            "distillation": manifest.model.distillation,
            "dims_sweep": manifest.dims_sweep,
        })
    return rows


def _svg_frame(width: int, height: int, pad: int, right: int, x_label: str, y_label: str) -> list[str]:
    """An SVG's opening, white background, two axes and their labels; plots add ticks and marks."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - right}" y2="{height - pad}" stroke="black"/>',
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
            f'<text x="{(width - right + pad) / 2}" y="{height - 15}" text-anchor="middle">{x_label}</text>',
            f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">'
            f"{y_label}</text>"]


def _svg_plot(rows: list[dict]) -> str:
    """Accuracy (STS-B ×100) against speed (× fp32 PyTorch throughput); marker area ∝ file size."""
    points = [r for r in rows if r["spearman"] is not None and r["throughput_ratio"] is not None]
    sources = [r["spearman_source"] for r in rows if r.get("spearman_source") is not None]
    if points and sources:
        points.append({"name": "fp32 PyTorch (reference)", "target": "", "dims": points[0]["source_dim"],
                       "size_mb": points[0]["source_mb"], "spearman": sources[0], "throughput_ratio": 1.0})
    if not points:
        return "<p>No artifact has both parity and speed results yet: run <code>cli.py bench</code>.</p>"
    width, height, pad, right = 1000, 440, 60, 270  # room on the right for labels
    xs = [r["throughput_ratio"] for r in points]
    ys = [r["spearman"] for r in points]
    x0, x1 = 0.0, max(xs) * 1.15
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5

    def sx(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (width - pad - right)

    def sy(v: float) -> float:
        return height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad)

    palette = {"x86": "#1f77b4", "gpu": "#2ca02c", "mobile": "#ff7f0e", "apple": "#9467bd", "": "#222"}
    parts = _svg_frame(width, height, pad, right, "batch-32 throughput, × fp32 PyTorch", "STS-B dev Spearman ×100")
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv)}" y="{height - pad + 16}" text-anchor="middle">{xv:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{sy(yv) + 4}" text-anchor="end">{yv:.1f}</text>')
    parts.append(f'<line x1="{sx(1)}" y1="{pad}" x2="{sx(1)}" y2="{height - pad}" stroke="#bbb" stroke-dasharray="4"/>')
    firsts = {r["name"].split("/")[0] for r in points if "/" in r["name"]}
    common = f"{firsts.pop()}/" if len(firsts) == 1 else ""  # one model: its name goes in the caption instead
    label_slots: list[float] = []
    for r in sorted(points, key=lambda p: -p["spearman"]):
        radius = 4 + (r["size_mb"] ** 0.5)
        color = palette.get(r["target"], "#555")
        label = html.escape(f"{r['name'].removeprefix(common)} · {r['dims']}d · {r['size_mb']:.0f} MB")
        cx, cy = sx(r["throughput_ratio"]), sy(r["spearman"])
        ly = cy + 4
        while any(abs(ly - taken) < 14 for taken in label_slots):  # stack labels that would overlap
            ly += 14
        label_slots.append(ly)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius:.1f}" fill="{color}" fill-opacity="0.6">'
                     f"<title>{label}</title></circle>")
        parts.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{width - right + 8}" y2="{ly - 4:.1f}" stroke="{color}" '
                     f'stroke-opacity="0.5"/>')
        parts.append(f'<text x="{width - right + 12}" y="{ly:.1f}" fill="{color}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def sweep_table_md(dims_sweep: DimsSweepRecord) -> str:
    """The dims x precision sweep of a manifest: quality against bytes per stored vector."""
    lines = ["| dims | vector | bytes | STS-B | drop | recall@10 | MRR | MRR drop |",
             "|---|---|---|---|---|---|---|---|"]
    chosen = dims_sweep.smallest_within_max_drop
    for r in sorted(dims_sweep.rows, key=lambda r: (-r.bytes_per_vector, r.precision)):
        mark = " ←" if r.dims == chosen and r.precision == "float32" else ""
        lines.append(f"| {r.dims}{mark} | {r.precision} | {r.bytes_per_vector} | {r.spearman:.2f} | "
                     f"{r.spearman_drop:.2f} | {r.recall_at_10:.1f} | {r.mrr:.2f} | {r.mrr_drop:.2f} |")
    lines.append(f"\n← the smallest float32 size within {dims_sweep.max_drop} points (`--dims auto`). Retrieval: "
                 "each STS-B dev pair scored ≥ 4 as query → positive among all dev sentences.")
    return "\n".join(lines)


def _svg_sweep(dims_sweep: DimsSweepRecord, title: str) -> str:
    """STS-B Spearman against bytes per stored vector (log scale), one line per precision."""
    rows = dims_sweep.rows
    width, height, pad, right = 760, 360, 60, 110
    xs = [np.log2(r.bytes_per_vector) for r in rows]
    ys = [r.spearman for r in rows]
    x0, x1, y0, y1 = min(xs) - 0.3, max(xs) + 0.3, min(ys) - 1, max(ys) + 1

    def sx(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (width - pad - right)

    def sy(v: float) -> float:
        return height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad)

    colors = {"float32": "#1f77b4", "int8": "#ff7f0e", "binary": "#2ca02c"}
    parts = _svg_frame(width, height, pad, right, "bytes per stored vector (log scale)", "STS-B dev Spearman ×100")
    parts.append(f'<text x="{pad}" y="20">{html.escape(title)}</text>')
    for exponent in range(int(np.ceil(x0)), int(np.floor(x1)) + 1):
        parts.append(f'<text x="{sx(exponent):.1f}" y="{height - pad + 16}" text-anchor="middle">'
                     f"{2 ** exponent}</text>")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{pad - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1f}</text>')
    for precision, color in colors.items():
        series = sorted((r for r in rows if r.precision == precision), key=lambda r: r.bytes_per_vector)
        if not series:
            continue
        points = " ".join(f"{sx(np.log2(r.bytes_per_vector)):.1f},{sy(r.spearman):.1f}" for r in series)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r in series:
            parts.append(f'<circle cx="{sx(np.log2(r.bytes_per_vector)):.1f}" cy="{sy(r.spearman):.1f}" r="3" '
                         f'fill="{color}"><title>{precision} {r.dims}d: {r.bytes_per_vector} B, '
                         f'{r.spearman:.2f}</title></circle>')
        last = series[-1]
        parts.append(f'<text x="{sx(np.log2(last.bytes_per_vector)) + 8:.1f}" y="{sy(last.spearman) + 4:.1f}" '
                     f'fill="{color}">{precision}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _sweeps(rows: list[dict]) -> dict[str, DimsSweepRecord]:
    """One dims sweep per source model (every artifact of a model carries the same one)."""
    found: dict[str, DimsSweepRecord] = {}
    for r in rows:
        if r["dims_sweep"] and r["model"] not in found:
            found[r["model"]] = r["dims_sweep"]
    return found


def _distillation_md(rows: list[dict]) -> str | None:
    """Each distilled student's artifacts beside its teacher's of the same kind, when both are under the root."""
    students = [r for r in rows if r["distillation"]]
    if not students:
        return None
    lines = ["| artifact | layers | STS-B | teacher STS-B (fp32) | drop | sent/s | × teacher's artifact |",
             "|---|---|---|---|---|---|---|"]
    shown: set[str] = set()
    for r in students:
        record = r["distillation"]
        teacher = next((t for t in rows if t["model"] == record.teacher and t["target"] == r["target"]
                        and t["artifact"] == r["artifact"]), None)
        matryoshka = record.matryoshka_dims
        entries = [(r, f"{len(record.kept_layers)} of {record.teacher_layers} "
                       f"({','.join(map(str, record.kept_layers))})"
                       + (f", Matryoshka {','.join(map(str, matryoshka))}" if matryoshka else ""))]
        if teacher is not None and teacher["name"] not in shown:
            shown.add(teacher["name"])
            entries.insert(0, (teacher, f"{record.teacher_layers} (teacher)"))
        for row, layers in entries:
            ratio = None if teacher is None or not row["throughput_sps"] or not teacher["throughput_sps"] else \
                row["throughput_sps"] / teacher["throughput_sps"]
            drop = None if row["spearman"] is None else record.spearman_teacher - row["spearman"]
            lines.append(f"| {_md_text(row['name'])} | {layers} | {_fmt(row['spearman'], 2)} | "
                         f"{record.spearman_teacher:.2f} "
                         f"| {_fmt(drop, 2)} | {_fmt(row['throughput_sps'], 0)} | {_fmt(ratio, 2)} |")
    return "\n".join(lines)


def _table_md(rows: list[dict]) -> str:
    lines = [
        "| artifact | dims | size MB | mean cos | min cos | STS-B | Δ vs fp32 | × fp32 sent/s | b1 p50 ms | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        drop = None if r["spearman_drop"] is None else -r["spearman_drop"]
        verdict = r["verdict"] + (" (emulated parity)" if r["emulated"] else "")
        lines.append(
            f"| {_md_text(r['name'])} | {r['dims']} | {r['size_mb']:.1f} | {_fmt(r['mean_cosine'])} | "
            f"{_fmt(r['min_cosine'])} | "
            f"{_fmt(r['spearman'], 2)} | {_fmt(drop, 2)} | {_fmt(r['throughput_ratio'], 2)} | "
            f"{_fmt(r['latency_p50_ms'], 2)} | {verdict} |"
        )
    return "\n".join(lines)


def write_model_report(root: Path) -> tuple[Path, Path]:
    """report.md and report.html over every artifact under ``root``: one table and one plot."""
    rows = _rows(root)
    table = _table_md(rows)
    intro = (f"# Embedding artifacts under {_md_text(str(root))}\n\nParity is against the fp32 PyTorch "
             "(sentence-transformers) model on every STS-B dev sentence; speed ratios come from one `cli.py bench` "
             "run (see each artifact's report.md for threads, batch sizes and absolute figures).\n")
    md = intro + "\n" + table + "\n\n![accuracy vs speed vs size](report.svg)\n"
    svg = _svg_plot(rows)
    if svg.startswith("<svg"):
        write_text_atomic(root / "report.svg", svg)
    sections = ""  # extra sections, markdown for report.md and rendered for report.html
    plots = ""
    distilled = _distillation_md(rows)
    if distilled:
        sections += ("\n## Distilled students\n\nSpeed: `cli.py bench` sentences/s of each artifact, and its ratio to "
                     "the teacher's artifact of the same kind in the same run.\n\n" + distilled + "\n")
    phone = _phone_md(root)
    if phone:
        sections += ("\n## The app's own path\n\nText-in artifacts against the fp32 model on the raw strings, with "
                     "and without the normalisation the app applies; phone artifacts on emulated ARM64 CPU kernels "
                     "(`cli.py verify --arch arm64`; emulated times are not speeds).\n" + phone + "\n")
    for model, dims_sweep in _sweeps(rows).items():
        sections += (f"\n## {model}: output size and stored precision\n\nPCA fitted on the fit corpus, scored on "
                     "STS-B dev; int8 and binary vectors with the manifest's calibrated ranges.\n\n"
                     + sweep_table_md(dims_sweep) + "\n")
        plots += f"<h2>{html.escape(model)}: quality against bytes per vector</h2>" + _svg_sweep(dims_sweep, model)
    write_text_atomic(root / "report.md", md + sections)
    body = MARKDOWN.render(intro + "\n" + table)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(str(root))}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "</style></head><body>" + body + "<h2>Accuracy vs speed vs size</h2>"
            "<p>Marker area grows with file size. The dashed line is the fp32 PyTorch speed.</p>" + svg +
            MARKDOWN.render(sections) + plots + "</body></html>")
    write_text_atomic(root / "report.html", page)
    return root / "report.md", root / "report.html"


def model_card(manifest: Manifest) -> str:
    """MODEL_CARD.md shipped inside every artifact: what it is, how to call it, what it was checked against."""
    model = manifest.model
    inputs = ", ".join(f"`{i.name}` ({i.dtype}, {' × '.join(map(str, i.shape))})" for i in manifest.inputs)
    shapes = manifest.shapes
    length = shapes[0].sequence if shapes else manifest.max_seq_length  # a text-in artifact's one length
    lines = [
        f"# {model.name} — {manifest.artifact} for {manifest.target}",
        "",
        f"Sentence embeddings from `{model.source}` (model files sha256 `{model.sha256[:16]}…`), "
        f"converted to {manifest.format} at {manifest.precision} precision for {manifest.runtime}.",
        "",
        "## Use",
        "",
        f"- Strings in: the tokenizer is inside the file, and every text is padded or truncated to {length} tokens "
        f"(`{manifest.tokenizer.file}` is the model's own tokenizer, for checks)."
        if manifest.format in TEXT_IN_FORMATS else
        f"- Tokenize with `{manifest.tokenizer.file}` (Hugging Face `tokenizers`); it truncates at "
        f"{manifest.max_seq_length} tokens like the source model. Pad on the right with id "
        f"{manifest.tokenizer.pad_token_id}.\n- Inputs: {inputs}.",
        f"- Output `{manifest.output.name}`: float32 × {manifest.embedding_dim}, "
        + ("L2-normalised (the dot product is the cosine)." if manifest.normalized else "not normalised."),
        f"- Pooling ({manifest.pooling}), "
        + (f"PCA to {manifest.pca.dims} dims, " if manifest.pca else "")
        + "and normalisation are inside the model file.",
    ]
    if manifest.vectors:
        lines.append("- Smaller stored vectors: int8 (1 byte per dimension) or binary (1 bit) with the calibrated "
                     "ranges in the manifest's `vectors` entry, as `cli.py embed --precision` stores them; the "
                     "manifest's `dims_sweep` shows what each costs in STS-B and retrieval.")
    if shapes and manifest.format not in TEXT_IN_FORMATS:
        lines.append("- Fixed shapes: pad to the smallest that fits: "
                     + ", ".join(f"{s.batch}×{s.sequence} (`{s.name}`)" for s in shapes) + ".")
    lines += app_snippets(manifest)
    lines += [
        "",
        "## Checks",
        "",
        "`manifest.json` lists the sha256 of every file and the parity against the fp32 PyTorch model on STS-B dev. "
        "`test_vectors.json` holds a dozen sentences with their token ids and expected embeddings: run them in your "
        "app's CI and compare by cosine against the manifest's `gate.min_cosine`.",
        "",
        "## Intended use and limits",
        "",
        "Semantic similarity, search and clustering of short English texts, as the source model. Quantized and "
        "half-precision artifacts trade a little accuracy for size and speed: see the manifest's parity figures. "
        "Texts beyond the token limit are truncated. The license is that of the source model.",
    ]
    return "\n".join(lines) + "\n"
