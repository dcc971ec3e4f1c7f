"""The README's family x target table: every tiny family model (tests/tiny_models.py) exported to every target,
each cell the mean / min cosine on that target's own runtime against the fp32 model on STS-B dev.

    python -m tests.family_matrix OUT_DIR     # writes OUT_DIR/families.md and prints it
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.config import BuildConfig
from pipelines.export import export
from tests.tiny_models import FAMILIES, build_tiny_model

COLUMNS = ("x86", "x86-openvino", "mobile/tflite", "mobile/executorch", "mobile/mediapipe", "apple", "gpu", "web")


def cell(result) -> str:
    if result.refused:
        return f"refused: {result.refused}"
    if not result.ok:
        return f"FAIL: {result.error}"
    parity = result.manifest.to_json()["parity"]
    label = " (emulated)" if parity["emulated"] else ""
    return f"{parity['mean_cosine']:.4f} / {parity['min_cosine']:.4f}{label}"


def main(out: Path) -> str:
    rows = ["| family (tiny model: pooling, extras) | " + " | ".join(COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|"]
    for name, spec in FAMILIES.items():
        model = build_tiny_model(spec, out / "models" / name)
        results = export(BuildConfig(model=str(model), target="all", out=str(out / "dist")))
        by_artifact = {Path(r.folder).relative_to(out / "dist" / name).as_posix(): r for r in results}
        extras = ", ".join(filter(None, [spec.pooling, "Dense" if spec.dense else "", "no Normalize" if not
                                         spec.normalize else "", f"prompts {sorted(spec.prompts)}" if spec.prompts
                                         else "", f"max {spec.max_seq_length} tokens"]))
        rows.append(f"| {name} ({extras}) | " + " | ".join(cell(by_artifact[c]) for c in COLUMNS) + " |")
    table = "\n".join(rows)
    (out / "families.md").write_text(table + "\n", encoding="utf-8")
    return table


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist/families")))
