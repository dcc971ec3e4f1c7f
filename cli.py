"""Command line: export, verify, bench, package and embed with sentence-embedding artifacts.

    python cli.py targets   # the registered targets (x86, x86-openvino, mobile, apple, gpu, web, ...) and gates
    python cli.py export --target x86 [--model DIR|PACKAGE|HUB-ID] [--dims 128|auto [--max-drop 0.5]] [--out dist/]
    python cli.py verify dist/all-MiniLM-L6-v2/x86
    python cli.py bench  dist/all-MiniLM-L6-v2/x86
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from core.config import QUANTIZATION_MODES
from core.cpu import ARM_CPU_MODELS, ISA_CLASSES, usable_cores
from core.errors import ToolchainError
from core.output_paths import check_output_folder, check_outside
from pipelines.summary import target_names

# Converters print pages of third-party progress bars and warnings; the CLI shows its own progress,
# and what goes wrong reaches the user as one error line.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
logging.basicConfig(level=logging.ERROR)
warnings.filterwarnings("ignore")


def _fail(exc) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(getattr(exc, "exit_code", 2))


class ToolchainGroup(click.Group):
    """Turns a ToolchainError anywhere, and click's usage errors (a mistyped option or command), into one
    line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ToolchainError as exc:
            _fail(exc)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: no partial artifact was left in place", err=True)
            sys.exit(130)


@click.group(cls=ToolchainGroup)
@click.option("--verbose", "-v", is_flag=True, help="show converters' own output on the terminal instead of a log")
def main(verbose: bool) -> None:
    """Ship a sentence-embedding model to x86, mobile, Apple and GPU targets, verified."""


def _third_party_output(command: str):
    """Converter chatter to ~/.cache/embedding-toolchain/logs/COMMAND.log, or, with --verbose, to the terminal."""
    from pipelines.chatter import log_path, third_party_output_to

    verbose = click.get_current_context().find_root().params.get("verbose", False)
    return third_party_output_to(None if verbose else log_path(command))


def _console(file=None):
    from rich.console import Console

    file = file or sys.stdout
    # soft_wrap: a message naming a path stays on one line whatever the width; tables still fit the width
    return Console(file=file, highlight=False, soft_wrap=True, width=None if file.isatty() else 160)


class DimsParam(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of dimensions nor 'auto'", param, ctx)


@main.command()
@click.option("--target", "target", default="x86", show_default=True,
              help=f"{', '.join(target_names())} or all (`cli.py targets` lists their artifacts and gates)")
@click.option("--model", default=None, help="model dir, pip package or hub id [default: bundled all-MiniLM-L6-v2]")
@click.option("--dims", type=DimsParam(), default=None,
              help="PCA output dimensions folded into the graph, or 'auto': the smallest within --max-drop")
@click.option("--max-drop", type=float, default=None,
              help="with --dims auto: STS-B dev Spearman points the projection may lose [default: 0.5]")
@click.option("--fit-corpus", type=click.Path(path_type=Path), default=None,
              help="sentences (one per line): fit PCA, calibrate int8/binary vector ranges [default: STS-B train]")
@click.option("--out", default="dist", show_default=True, help="output folder")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="rebuild from a manifest.json or build config into --out and report whether the bytes match the "
                   "manifest's checksums (other options are ignored, but pickle and remote code need "
                   "--allow-pickle / --trust-remote-code here whatever the file says)")
@click.option("--check", is_flag=True, help="with --config: exit 1 unless the rebuilt bytes match the manifest")
@click.option("--quantization", type=click.Choice(QUANTIZATION_MODES), default=None,
              help="int8 ONNX: dynamic (default) or static QDQ calibrated on STS-B train sentences")
@click.option("--isa", type=click.Choice(list(ISA_CLASSES)), default=None,
              help="x86 int8: the CPU class it will run on [default: avx2, correct on any x86-64 server]")
@click.option("--no-verify", is_flag=True, help="skip parity verification and the gate (not recommended)")
@click.option("--allow-pickle", is_flag=True, help="allow pickle weight files (only for sources you trust)")
@click.option("--trust-remote-code", is_flag=True, help="allow model code from the hub (only for sources you trust)")
@click.option("--layout", "layout_names", multiple=True,
              help="also lay the artifacts out for a library: sentence-transformers, fastembed, transformers.js "
                   "(into <model>/layouts/<layout>/; repeatable)")
def export(target, model, dims, max_drop, fit_corpus, out, config_file, check, quantization, isa, no_verify,
           allow_pickle, trust_remote_code, layout_names) -> None:
    """Convert, verify and gate the model for one target (or all)."""
    from core.config import BuildConfig
    from pipelines.chatter import log_path
    from pipelines.isolated import export_isolated as run_export
    from pipelines.layouts import layout_folder, layouts_for_target, write_layout
    from pipelines.preflight import count_artifacts
    from pipelines.rebuild import rebuild_config, rebuild_differences
    from pipelines.summary import RichProgress, print_summary

    original = None
    if check and config_file is None:
        raise click.UsageError("--check compares a rebuild with its manifest: pass --config MANIFEST too")
    if config_file is not None:
        config, original = rebuild_config(config_file, out, allow_pickle, trust_remote_code)
    else:
        config = BuildConfig(
            model=model, target=target, dims=dims, max_drop=max_drop,
            fit_corpus=str(fit_corpus) if fit_corpus else None, out=out, quantization=quantization, isa=isa,
            verify=not no_verify, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        )
    layouts = layouts_for_target(layout_names, config.target)
    with _third_party_output("export") as terminal, \
            RichProgress(_console(terminal), count_artifacts(config)) as progress:
        results = run_export(config, progress)
    console = _console()
    print_summary(console, results)
    for layout in layouts:
        for result in results:
            if result.ok and result.manifest and result.format in layout.formats:
                artifact = result.artifact
                written = write_layout(layout, artifact.folder, layout_folder(artifact, layout))
                console.print(f"  {layout.name} layout: {written}")
    if terminal is not sys.stdout:
        console.print(f"[dim]converter output: {log_path('export')}[/dim]")
    differences = rebuild_differences(original, results) if original else None
    if original:
        verdict = ("[green]every file matches the manifest's checksums[/green]" if differences == [] else
                   f"[yellow]{len(differences)} file(s) differ from the manifest: {', '.join(differences)}[/yellow]"
                   if differences else "[red]no artifact of that kind was rebuilt[/red]")
        console.print(f"rebuild of {config_file}: {verdict}")
    if not all(r.ok for r in results):  # a refusal is ok: the family cannot take that format, by design
        sys.exit(1)
    if check and differences != []:
        sys.exit(1)


@main.command(name="targets")
def list_targets() -> None:
    """The registered targets, their artifacts and gates."""
    from pipelines.summary import print_targets

    print_targets(_console())


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--min-cosine", type=float, default=None, help="override the gate's minimum mean cosine")
@click.option("--max-spearman-drop", type=float, default=None, help="override the gate's max STS-B drop (points)")
@click.option("--model", default=None, help="source model, if not the one recorded in the manifest")
@click.option("--json", "as_json", is_flag=True, help="print a machine-readable verdict")
@click.option("--quick", is_flag=True, help="parity on the first 200 STS-B dev pairs only")
@click.option("--strict", is_flag=True, help="fail an x86 artifact built for another CPU class than this one")
@click.option("--arch", type=click.Choice(["host", "arm64"]), default="host", show_default=True,
              help="arm64: run the phone artifacts (TFLite, MediaPipe, ExecuTorch) on emulated ARM64 CPU kernels "
                   "(qemu; set up on first use) and record the figures in their manifests")
@click.option("--cpu", "cpus", multiple=True, type=click.Choice(list(ARM_CPU_MODELS)),
              help="with --arch arm64: the CPU model(s) [default: all: " + ", ".join(ARM_CPU_MODELS) + "]")
@click.option("--sentences", type=int, default=None,
              help="with --arch arm64: STS-B dev sentences per CPU model (the test vectors always run) [default: 300]")
@click.option("--public-key", type=click.Path(path_type=Path), default=None,
              help="refuse any artifact whose model-signing signature this PEM public key does not verify (checked "
                   "first; `package --sign-key` signs)")
def verify(path, min_cosine, max_spearman_drop, model, as_json, quick, strict, arch, cpus, sentences,
           public_key) -> None:
    """Gate before deployment: checksums, test vectors, STS-B parity. Exits 1 on a failed gate, 2 on a damaged
    artifact. With --arch arm64, the phone artifacts run on emulated ARM64 CPU kernels instead."""
    host_only = {"--min-cosine": min_cosine is not None, "--max-spearman-drop": max_spearman_drop is not None,
                 "--quick": quick, "--strict": strict, "--public-key": public_key is not None}
    arm64_only = {"--cpu": bool(cpus), "--sentences": sentences is not None}
    misplaced = [name for name, given in (host_only if arch == "arm64" else arm64_only).items() if given]
    if misplaced:
        raise click.UsageError(f"{misplaced[0]} does not apply to --arch {arch}")
    if arch == "arm64":
        from pipelines.arm64 import verify_arm64

        with _third_party_output("verify"):
            results = verify_arm64(path, cpus=cpus or tuple(ARM_CPU_MODELS), sentences=sentences or 300, model=model,
                                   log=lambda line: click.echo(line, err=True))
    else:
        from pipelines.gatekeeper import verify_path

        with _third_party_output("verify"):
            results = verify_path(path, model=model, min_mean_cosine=min_cosine,
                                  max_spearman_drop=max_spearman_drop, limit=200 if quick else None, strict=strict,
                                  public_key=public_key)
    if as_json:
        click.echo(json.dumps({"ok": all(r["ok"] for r in results), "artifacts": results}, indent=2))
    else:
        from pipelines.summary import print_arm64, print_verify

        (print_arm64 if arch == "arm64" else print_verify)(_console(), results)
    for row in (r for r in results if r.get("error")):  # damaged or hostile files: bad input, as everywhere
        click.echo(f"error: {row['error']}", err=True)
    if any(r.get("error") for r in results):
        sys.exit(2)
    if not all(r["ok"] for r in results):
        sys.exit(1)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="threads for every engine [default: the cores this process may use (taskset, a cpuset)]")
@click.option("--repeats", type=int, default=3, show_default=True, help="throughput passes (median is reported)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="also write the results as JSON (and a .md table beside it)")
@click.option("--vs-peers", is_flag=True,
              help="also measure every peer a user would pick here: sentence-transformers' int8 ONNX, OpenVINO "
                   "and NNCF int8 exports (own venv)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the fp32 PyTorch baseline runs (auto: cuda when torch and onnxruntime see a GPU)")
@click.option("--batch-size", type=int, default=None, help="throughput batch [default: 32 on CPU, 128 on GPU]")
@click.option("--strict", is_flag=True, help="refuse an x86 artifact built for another CPU class than this one")
def bench(path, threads, repeats, json_out, vs_peers, device, batch_size, strict) -> None:
    """Speed vs the fp32 PyTorch model, measured in the same run; recorded in each manifest."""
    from core.manifest import find_artifacts
    from pipelines.bench import BenchConfig, default_device, markdown_table, record_speed
    from pipelines.bench import bench as run_bench

    artifacts = find_artifacts(path)
    if json_out:  # checked before the run: a file inside an artifact would break its checksums
        check_outside(json_out, "--json", "artifact", artifacts)
    device = default_device() if device == "auto" else device
    config = BenchConfig(threads=threads or BenchConfig().threads, repeats=repeats, device=device,
                         batch_size=batch_size or (128 if device == "cuda" else 32))
    with _third_party_output("bench") as terminal:
        progress = _console(terminal)
        result = run_bench(artifacts, config, progress=lambda msg: progress.print(f"[dim]• timing[/dim] {msg}"),
                           peers=vs_peers, strict=strict)
    console = _console()
    table = markdown_table(result)
    console.print(table)
    record_speed(result, table)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        json_out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="archive folder [default: PATH/release; beside PATH when PATH is one artifact]")
@click.option("--layout", "layout_name", default=None,
              help="archive each artifact in a library's layout instead: sentence-transformers, fastembed, "
                   "transformers.js")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="sign each artifact with this PEM private key (OpenSSF model-signing; provenance.json and "
                   "model.sig go into the folder and the archive)")
@click.option("--new-key", type=click.Path(path_type=Path), default=None,
              help="generate an ECDSA P-256 key pair into this folder and sign with it (demos; keep real keys "
                   "offline)")
def package(path, out, layout_name, sign_key, new_key) -> None:
    """One release archive (.tar.gz) per artifact: model, tokenizer, manifest, model card, test vectors."""
    from pipelines.layouts import get_layout
    from pipelines.package import package_all
    from pipelines.signing import generate_key

    if sign_key and new_key:
        raise click.UsageError("--sign-key and --new-key both choose the signing key: pass one")
    if new_key:
        sign_key, public = generate_key(new_key)
        click.echo(f"signing with a new key: {sign_key} (public key: {public}; verify with --public-key {public})")
    layout = get_layout(layout_name) if layout_name else None
    for archive in package_all(path, out, layout, sign_key):
        click.echo(f"{archive}  ({archive.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default="dist")
def report(path) -> None:
    """report.md + report.html (table and accuracy/speed/size plot) over every artifact under PATH."""
    from core.manifest import MANIFEST
    from pipelines.report import write_model_report

    root = path.parent if (path / MANIFEST).is_file() else path  # never add files inside an artifact
    md, page = write_model_report(root)
    click.echo(f"wrote {md} and {page}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "input_path", required=True,
              help="texts: .txt (one per line), .jsonl, .parquet, or a folder of them; a path or a URI (s3://bucket/prefix)")
@click.option("--output", required=True,
              help="folder (a path or a URI) for the parquet shards, ledger/ and job.json; rerun the same command to "
                   "resume")
@click.option("--text-field", default="text", show_default=True, help="jsonl/parquet: the field holding the text")
@click.option("--id-field", default=None, help="jsonl/parquet: the field holding a unique id [default: row number]")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="a Ray cluster to run on [default: start a local Ray]")
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="ray: actors, each with one loaded artifact")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="rows per parquet file: the unit that runs on a worker and that a killed job resumes from")
@click.option("--precision", type=click.Choice(["float32", "int8", "binary"]), default="float32", show_default=True,
              help="stored vectors: int8 and binary use the ranges calibrated in the artifact's manifest")
def embed(artifact, input_path, output, text_field, id_field, engine, ray_address, actors, batch_size,
          chunk_rows, precision) -> None:
    """Embed a corpus with the artifact that ships (the vectors an index stores match the app's)."""
    from core.storage import Place
    from pipelines.corpus import Fields
    from pipelines.embed import LocalEngine, embed_corpus, open_artifact, plan_input
    from pipelines.runtime import ArtifactEncoder
    from pipelines.summary import RateProgress

    source, destination = Place.of(input_path), Place.of(output)
    if not destination.remote:
        inputs = {"artifact": artifact} if source.remote else {"artifact": artifact, "corpus": input_path}
        check_output_folder(output, "--output", inputs)
    manifest = open_artifact(artifact).manifest
    encoder = ArtifactEncoder(artifact, threads=usable_cores())
    encoder.require_token_input()
    fields = Fields(text_field, id_field)
    with contextlib.ExitStack() as stack:
        terminal = stack.enter_context(_third_party_output("embed"))
        if engine == "ray":
            from pipelines.embed_ray import ray_engine, shutdown

            stack.callback(shutdown)
            runner = ray_engine(artifact, ray_address, actors)
        else:
            runner = LocalEngine(encoder)
        with RateProgress(_console(terminal), 0, "checking input", "files/s") as checking:
            plan = plan_input(source, fields, chunk_rows, runner, checking.update)
        progress = stack.enter_context(RateProgress(_console(terminal), plan.rows))
        result = embed_corpus(plan, destination, runner, manifest, chunk_rows, batch_size, precision, progress.advance)
    speed = manifest.speed
    versus = f"; bench measured {speed.throughput_sps:,.0f} sent/s at batch {speed.batch_size}" if speed else ""
    click.echo(f"{result.rows} vectors in {output} ({result.embedded} embedded by this run in {result.seconds:.1f} s: "
               f"{result.sentences_per_second:,.0f} sent/s with the {engine} engine{versus})")


@main.command()
@click.option("--teacher", default=None, help="model dir, pip package or hub id [default: bundled all-MiniLM-L6-v2]")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="keep this many layers, evenly spaced")
@click.option("--keep", default=None, help="keep exactly these layer indices, e.g. 0,2,5")
@click.option("--corpus", type=click.Path(path_type=Path), default=None,
              help="training sentences, one per line [default: STS-B train]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="passes over the corpus [default: 6]")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="AdamW learning rate, decaying linearly to 0 [default: 1e-4]")
@click.option("--matryoshka", default=None,
              help="also train these output sizes (e.g. 64,128) to keep the teacher's similarities, for --dims later")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the student's new folder")
def distill(teacher, layers, keep, corpus, epochs, learning_rate, matryoshka, out) -> None:
    """A smaller student (a subset of the teacher's layers, or Matryoshka-trained output sizes) trained to reproduce
    the teacher's embeddings."""
    from core.model_source import load_sentence_transformer, resolve_model
    from pipelines.distill import DistillConfig, training_sentences
    from pipelines.distill import distill as run_distill
    from pipelines.summary import RateProgress

    if layers is None and keep is None and matryoshka is None:
        raise click.UsageError("pass --layers N, --keep I,J,... or --matryoshka D,D,...")
    indices, sizes = (_integers(option, value) for option, value in (("--keep", keep), ("--matryoshka", matryoshka)))
    overrides = {name: value for name, value in (("epochs", epochs), ("learning_rate", learning_rate)) if value}
    config = DistillConfig(teacher, layers, indices, str(corpus) if corpus else None, matryoshka_dims=sizes,
                           **overrides)
    sentences = training_sentences(config.corpus)
    with _third_party_output("distill") as terminal:  # loading torch models prints warnings of its own
        source = resolve_model(teacher)
        check_output_folder(out, "--out", {"teacher model folder": source.path})
        model = load_sentence_transformer(source)
        steps = config.epochs * -(-len(sentences) // config.batch_size)
        with RateProgress(_console(terminal), steps, "training", "batches/s") as bar:
            result = run_distill(model, source.name, config, sentences, out,
                                 progress=lambda batches, loss: bar.advance(batches))
    click.echo(f"student: layers {result.kept_layers} of {result.teacher_layers}; STS-B dev Spearman "
               f"{result.spearman_student:.2f} vs teacher {result.spearman_teacher:.2f} (drop {result.drop:.2f}); "
               f"{result.seconds / 60:.1f} min; saved to {out}")


def _integers(option: str, value: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(i) for i in value.split(",")) if value else None
    except ValueError:
        raise click.UsageError(f"{option} takes whole numbers separated by commas, got {value!r}") from None


@main.command(name="import-weights")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="new model folder (safetensors only)")
def import_weights(model_dir, out) -> None:
    """Copy a model whose weights are pickle files (pytorch_model.bin) with safetensors instead.

    Loads with torch.load(weights_only=True): tensors and plain containers only; anything else is refused."""
    from pipelines.intake import import_weights as convert

    check_output_folder(out, "--out", {"model folder": model_dir})
    for path in convert(model_dir, out):
        click.echo(f"wrote {path}")


@main.command(name="assemble-model")
@click.argument("parts_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
def assemble_model(parts_dir, out) -> None:
    """Join a model split into *.zip.001, .002 ... parts (loose or inside wheels) and extract it safely."""
    from pipelines.intake import assemble_model as assemble

    click.echo(f"model directory: {assemble(parts_dir, out)}")


if __name__ == "__main__":
    main()
