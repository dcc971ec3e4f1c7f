"""Terminal tables: the export summary and the verify verdicts."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichBar
from rich.table import Table

from targets.base import TARGETS


class _Bar:
    """One rich progress bar with one task, used as a context manager."""

    def __init__(self, console, total: int, description: str, *columns) -> None:
        self._bar = _RichBar(*columns, console=console, transient=False)
        self._task = self._bar.add_task(description, total=total)

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)


class RichProgress(_Bar):
    """A bar over the artifacts of an export, with the current step and elapsed time."""

    def __init__(self, console, total: int) -> None:
        super().__init__(console, total, "starting", SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                         MofNCompleteColumn(), TimeElapsedColumn())

    def __exit__(self, *exc) -> None:
        self._bar.update(self._task, description="finished")
        super().__exit__(*exc)

    def step(self, message: str) -> None:
        self._bar.update(self._task, description=message)

    def artifact_done(self, result) -> None:
        if result.refused:
            self._bar.console.print(f"[yellow]–[/yellow] {result.target} {result.format}: refused")
        else:
            mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
            self._bar.console.print(f"{mark} {result.target} {result.format} ({result.seconds:.0f} s)")
        self._bar.advance(self._task)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task):
        return f"{task.speed:,.1f} {self.unit}" if task.speed else f"– {self.unit}"


class RateProgress(_Bar):
    """A bar over items (sentences, training batches): done / total, items per second, time left."""

    def __init__(self, console, total: int, label: str = "embedding", unit: str = "sent/s") -> None:
        super().__init__(console, total, label, TextColumn(label), BarColumn(), MofNCompleteColumn(),
                         _RateColumn(unit), TimeRemainingColumn())

    def advance(self, rows: int) -> None:
        self._bar.advance(self._task, rows)

    def update(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)


def _cell(value, fmt: str = "{:.4f}") -> str:
    return "–" if value is None else fmt.format(value)


def print_summary(console, results) -> None:
    table = Table(title="Export summary")
    for column in ("target", "artifact", "format", "size MB", "mean cos", "min cos", "STS-B Δ", "verdict", "time s"):
        table.add_column(column)
    for r in results:
        m = r.manifest
        parity = m.parity if m else None
        size = m.size_bytes / 1e6 if m else None
        verdict = "[green]pass[/green]" if r.ok else f"[red]FAIL[/red]: {r.error}"
        if r.refused:
            verdict = f"[yellow]refused[/yellow]: {r.refused}"
        elif r.ok and not parity:
            verdict = "[yellow]built, not verified[/yellow]"
        if parity and parity.emulated:
            verdict += " (emulated)"
        table.add_row(
            r.target, m.artifact if m else "–", r.format, _cell(size, "{:.1f}"), _cell(parity and parity.mean_cosine),
            _cell(parity and parity.min_cosine), _cell(-parity.spearman_drop if parity else None, "{:+.2f}"),
            verdict, "–" if r.refused else f"{r.seconds:.0f}",
        )
    console.print(table)
    console.print("Parity: every STS-B dev sentence vs fp32 PyTorch, on each artifact's own runtime. "
                  "Speed: `cli.py bench`.")
    for r in results:
        if r.ok and not r.refused:
            console.print(f"  {r.target}: {r.folder}")


def print_verify(console, results: list[dict]) -> None:
    table = Table(title="Verify")
    for column in ("artifact", "mean cos", "min cos", "STS-B", "Δ vs fp32", "test vectors", "verdict"):
        table.add_column(column)
    for r in results:
        p = r.get("parity") or {}
        verdict = "[green]pass[/green]" if r["ok"] else "[red]FAIL[/red]: " + "; ".join(r["failures"])
        if p.get("emulated"):
            verdict += " (emulated)"
        table.add_row(
            r["path"], _cell(p.get("mean_cosine")), _cell(p.get("min_cosine")), _cell(p.get("spearman"), "{:.2f}"),
            _cell(-p["spearman_drop"] if p else None, "{:+.2f}"), _cell(p.get("test_vectors_min_cosine")), verdict,
        )
    console.print(table)
    for r in results:
        if r.get("cpu"):
            console.print(f"[yellow]note[/yellow] {r['path']}: {r['cpu']}")


def print_arm64(console, results: list[dict]) -> None:
    table = Table(title="Verify on emulated ARM64 CPU kernels (qemu; times are not speeds)")
    for column in ("artifact", "CPU model", "int8 kernels", "sentences", "mean cos", "min cos", "test vectors",
                   "max |Δ| vs x86", "verdict"):
        table.add_column(column)
    for r in results:
        if "error" in r:
            table.add_row(r["path"], "–", "–", "–", "–", "–", "–", "–", f"[red]ERROR[/red]: {r['error']}")
            continue
        for i, (cpu, c) in enumerate(r["arm64"].cpus.items()):
            if c.skipped:
                table.add_row(r["path"] if i == 0 else "", cpu, c.kernels, "–", "–", "–", "–", "–",
                              f"[yellow]skipped[/yellow]: {c.skipped}")
                continue
            verdict = "[green]pass[/green]" if c.ok else "[red]FAIL[/red]: " + "; ".join(c.failures)
            table.add_row(r["path"] if i == 0 else "", cpu, c.kernels, str(c.sentences), _cell(c.mean_cosine),
                          _cell(c.min_cosine), _cell(c.test_vectors_min_cosine),
                          _cell(c.max_abs_diff_vs_x86, "{:.1e}"), verdict)
    console.print(table)


def target_names() -> list[str]:
    """The registered targets, in the order of ``--target all``."""
    return list(TARGETS)


def print_targets(console) -> None:
    table = Table(title="Targets")
    for column in ("target", "folder", "artifact", "gate: mean cos / min cos / max STS-B drop", "target is"):
        table.add_column(column)
    for target in TARGETS.values():
        for i, plan in enumerate(target.plans):
            gate = f"{plan.gate.min_mean_cosine} / {plan.gate.min_cosine} / {plan.gate.max_spearman_drop}"
            table.add_row(target.name if i == 0 else "", f"{target.name}/{plan.folder}".rstrip("/"), plan.description,
                          gate, target.description if i == 0 else "")
    console.print(table)
