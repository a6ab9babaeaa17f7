"""The `softprompt` command line. Every command has `--json` for machine-readable stdout;
progress and messages go to stderr. User mistakes print one line and exit 2 (usage) or 1."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from softprompt.errors import SoftpromptError, UsageError

app = typer.Typer(
    name="softprompt",
    help="Train, use and inspect soft prompts for frozen language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model spec: bundled alias, local dir, .gguf file or hub id."
    ),
]
DtypeOpt = Annotated[str, typer.Option(help="Model weights dtype: float32 or bfloat16.")]
TemplateOpt = Annotated[
    str | None, typer.Option(help="Template with {text} (default: from the prompt's metadata).")
]
VerbalizerOpt = Annotated[
    str | None,
    typer.Option(help='Verbalizer as JSON, e.g. \'{"negative": " bad", "positive": " good"}\'.'),
]
DataOpt = Annotated[str | None, typer.Option(help="Folder, file or hf:NAME.")]
SplitOpt = Annotated[str, typer.Option(help="train, dev or test.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Examples per forward pass.")]
DeviceOpt = Annotated[
    str, typer.Option(help="cpu, cuda, cuda:1 ..., or auto: the GPU when there is one.")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Take the task (template, verbalizer) from a config."),
]


def _emit(data: object, as_json: bool, render) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        render(data)


def _verbalizer(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--verbalizer is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError('--verbalizer must be a JSON object of label: word, e.g. {"a": " yes"}')
    return {str(k): v for k, v in value.items()}


def _display_name(name: str) -> str:
    """A short name for a prompt file: its run directory for prompt/last.safetensors."""
    prefix, _, path = name.rpartition(":")
    shown = Path(path).parent.name if Path(path).stem in ("prompt", "last") else Path(path).stem
    return f"{prefix}:{shown}" if prefix else shown


def _default_model(prompt_path: Path | None, model: str | None) -> str:
    """The given model, else the first model the prompt was trained on, else the default."""
    from softprompt.methods import load_artifact
    from softprompt.models.backbone import DEFAULT_MODEL

    if model:
        return model
    if prompt_path is not None:
        models = load_artifact(prompt_path).models
        if models and models[0].get("name"):
            return str(models[0]["name"])
    return DEFAULT_MODEL


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Allow models whose code comes with their files (off by default)."),
    ] = False,
) -> None:
    _state["debug"] = debug
    if trust_remote_code:
        os.environ["SOFTPROMPT_TRUST_REMOTE_CODE"] = "1"


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Training config (YAML).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.lr=0.1")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its checkpoint.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a soft prompt; writes prompt.safetensors (best), metrics.jsonl and summary.json."""
    from softprompt.config import load_config
    from softprompt.training.trainer import train as run_training

    if resume is not None and out_dir is not None and resume != out_dir:
        raise UsageError("give either --out or --resume (the run directory to continue), not both")
    cfg = load_config(config, set_ or [])
    run_dir = resume or out_dir or Path("runs") / f"{config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    summary = run_training(cfg, run_dir, resume=resume is not None, progress=not quiet)

    def render(s: dict) -> None:
        best = s["best_dev"] or {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items())
        out.print(f"best dev ({s['best_metric']}) at step {s['best_step']}: {shown}")
        out.print(f"{s['train_samples_per_second']:.1f} samples/s; prompt: {s['prompt_path']}")

    _emit(summary, as_json, render)


ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Model spec; repeat to evaluate on several models."),
]


@app.command()
def evaluate(
    prompt: Annotated[
        Path | None, typer.Argument(help="Prompt .safetensors; leave out for zero-shot.")
    ] = None,
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    task: Annotated[
        str | None, typer.Option(help="Override the task type, e.g. suffix (the smiley metric).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Suffix task: continuations sampled.")] = 40,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Loss, accuracy and macro-F1 of a prompt (or the bare model) on a data split.

    With several --model, one result per model (JSON: a list), each marked trained_on_model."""
    from softprompt.evaluation import evaluate as run_evaluation
    from softprompt.models.backbone import load_backbone, resolve_device

    names = model or [_default_model(prompt, None)]
    place = resolve_device(device, "--device")
    results = [
        run_evaluation(
            prompt,
            load_backbone(name, dtype=dtype, device=place),
            data,
            split=split,
            config=config,
            template=template,
            verbalizer=_verbalizer(verbalizer),
            batch_size=batch_size,
            task=task,
            samples=samples,
        )
        for name in names
    ]

    def render(rows: list[dict]) -> None:
        if "suffix_rate" in rows[0]:
            for r in rows:
                rate, ppl = r["suffix_rate"], r["perplexity"]
                out.print(
                    f"{r['model']}: suffix rate {rate['with_prefix']:.3f} with, "
                    f"{rate['without_prefix']:.3f} without ({r['samples']} samples); perplexity "
                    f"{ppl['with_prefix']:.2f} with, {ppl['without_prefix']:.2f} without"
                )
            return
        keys = [k for k in ("loss", "accuracy", "macro_f1", "perplexity") if k in rows[0]]
        title = f"{rows[0]['prompt'] or 'zero-shot'} ({rows[0]['split']})"
        table = Table("model", "trained on", *keys, "examples", title=title)
        for r in rows:
            count = r.get("examples", r.get("tokens"))
            cells = [f"{r[k]:.4f}" for k in keys]
            table.add_row(r["model"], "yes" if r["trained_on_model"] else "no", *cells, str(count))
        out.print(table)

    _emit(results[0] if len(results) == 1 else results, as_json, lambda _: render(results))


@app.command("transfer-matrix")
def transfer_matrix(
    prompt: Annotated[list[Path], typer.Argument(help="One or more prompt .safetensors files.")],
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    metric: Annotated[str, typer.Option(help="Metric shown in the printed table.")] = "accuracy",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write transfer.json and transfer.csv here.")
    ] = None,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip zero-shot and initial-prompt rows.")
    ] = False,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Every prompt on every model, with zero-shot and untrained-prompt baselines."""
    from softprompt.crossmodel.matrix import transfer_matrix as build_matrix
    from softprompt.crossmodel.matrix import write_matrix
    from softprompt.models.backbone import resolve_device

    if not model:
        raise UsageError("give the models to evaluate on with --model (repeat it)")
    matrix = build_matrix(
        [str(p) for p in prompt],
        model,
        data,
        split=split,
        config=config,
        template=template,
        verbalizer=_verbalizer(verbalizer),
        batch_size=batch_size,
        dtype=dtype,
        baselines=not no_baselines,
        device=resolve_device(device, "--device"),
    )
    if out_dir is not None:
        write_matrix(matrix, out_dir)

    def render(m: dict) -> None:
        table = Table("prompt", *[Path(x).name for x in m["models"]], title=f"{metric} ({split})")
        for row in m["rows"]:
            cells = []
            for name, cell in row["results"].items():
                mark = "*" if name in row["trained_on"] else ""
                cells.append(f"{cell[metric]:.3f}{mark}" if metric in cell else "n/a")
            table.add_row(_display_name(row["name"]), *cells)
        out.print(table)
        out.print("* trained on this model")

    _emit(matrix, as_json, render)


@app.command()
def transfer(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors made for another model.")],
    to: Annotated[str | None, typer.Option("--to", help="Model to move the prompt to.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="New .safetensors file.")] = None,
    method: Annotated[str, typer.Option(help="Embedding map: ridge or procrustes.")] = "procrustes",
    source: Annotated[
        str | None, typer.Option("--from", help="Source model (default: the prompt's first).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Also evaluate on the target with this config's task."),
    ] = None,
    split: SplitOpt = "test",
    refit: Annotated[bool, typer.Option(help="Fit the map anew, not from the cache.")] = False,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Map a prompt into another model's embedding space through their shared tokens."""
    from softprompt.crossmodel.transfer import run_transfer

    if to is None:
        raise UsageError("give the target model with --to MODEL")
    if out_path is None:
        raise UsageError("give the new file with --out NEW.safetensors")
    result = run_transfer(
        prompt,
        to,
        out_path,
        method=method,
        source=source,
        config=config,
        split=split,
        batch_size=batch_size,
        dtype=dtype,
        refit=refit,
    )

    def render(r: dict) -> None:
        _print_alignment(r["alignment"])
        out.print(f"wrote {r['path']}")
        rows = r.get("evaluation") or []
        if rows:
            table = Table("prompt", "model", "accuracy", "loss", title=f"{config} ({split})")
            for row in rows:
                accuracy = f"{row['accuracy']:.3f}" if "accuracy" in row else "n/a"
                table.add_row(row["row"], row["model"], accuracy, f"{row['loss']:.4f}")
            out.print(table)

    _emit(result, as_json, render)


def _print_alignment(a: dict) -> None:
    q = a.get("quality", a)
    scores = "n/a (nothing held out)"
    if q["top1"] is not None:
        scores = f"top-1 {q['top1']:.3f}, top-10 {q['top10']:.3f}, cosine {q['mean_cosine']:.3f}"
    out.print(
        f"{a['source']} -> {a['target']} ({a['method']}): {scores} on {q['heldout_pairs']} "
        f"held-out of {q['shared_tokens']} shared tokens"
    )


@app.command()
def align(
    model_a: Annotated[str, typer.Argument(help="First model spec.")],
    model_b: Annotated[str, typer.Argument(help="Second model spec.")],
    method: Annotated[str, typer.Option(help="Embedding map: ridge or procrustes.")] = "procrustes",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Fit (or read from the cache) the embedding map both ways and print its quality."""
    from softprompt.crossmodel.transfer import align_both

    result = align_both(model_a, model_b, method, dtype=dtype)

    def render(r: dict) -> None:
        for direction in r["directions"]:
            _print_alignment({**direction, "method": r["method"]})

    _emit(result, as_json, render)


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(help="Study YAML (base config and the grid).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Study directory.")] = Path("runs/study"),
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a grid of trainings (model sets x seeds); finished runs are skipped on re-run."""
    from softprompt.study import load_study, run_study

    result = run_study(load_study(study_file), out_dir, progress=not quiet)

    def render(r: dict) -> None:
        table = Table("group", "models", "runs", "mean", "std", title=f"{r['metric']}")
        for g in r["groups"]:
            models_shown = ", ".join(Path(m).name for m in g["models"])
            table.add_row(
                g["group"], models_shown, str(g["runs"]), f"{g['mean']:.4f}", f"{g['std']:.4f}"
            )
        out.print(table)
        out.print(f"std: {r['std']}; written to {out_dir}/study.csv")

    _emit(result, as_json, render)


@app.command("tiny-family")
def tiny_family(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the models (seed-0, seed-1, ...).")],
    count: Annotated[int, typer.Option(min=1, help="How many models.")] = 3,
    family: Annotated[str, typer.Option(help="llama, gpt2, gpt_neox, gemma3 or bert.")] = "bert",
    hidden: Annotated[int, typer.Option(min=8, help="Hidden size (a multiple of 4).")] = 64,
    pretrain_steps: Annotated[int, typer.Option(min=0, help="LM pre-training steps.")] = 300,
    corpus: Annotated[
        str, typer.Option(help="Data whose texts make the vocabulary and pre-training corpus.")
    ] = "examples/data",
    as_json: JsonOpt = False,
) -> None:
    """Build a family of tiny models differing only in seed (like MultiBERTs), for experiments."""
    from softprompt.models.tiny import FAMILIES, corpus_texts
    from softprompt.models.tiny import tiny_family as build_family

    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    paths = build_family(
        out_dir, corpus_texts(corpus), count, family, hidden=hidden, pretrain_steps=pretrain_steps
    )
    _emit([str(p) for p in paths], as_json, lambda ps: [out.print(p) for p in ps])


@app.command()
def predict(
    prompt: Annotated[Path | None, typer.Argument(help="Prompt .safetensors (or none).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to classify.")
    ] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The label and the probability of each label for one or more texts."""
    from softprompt.evaluation import predict as run_prediction
    from softprompt.models.backbone import load_backbone, resolve_device

    if not text:
        raise UsageError("give at least one --text to classify")
    place = resolve_device(device, "--device")
    results = run_prediction(
        prompt,
        text,
        load_backbone(_default_model(prompt, model), dtype=dtype, device=place),
        config=config,
        template=template,
        verbalizer=_verbalizer(verbalizer),
        dtype=dtype,
    )

    def render(rows: list[dict]) -> None:
        for row in rows:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
            out.print(f"[bold]{row['label']}[/]  ({probs})  {row['text']}")

    _emit(results, as_json, render)


@app.command()
def generate(
    prompt: Annotated[Path | None, typer.Argument(help="Prompt .safetensors (or none).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to continue.")
    ] = None,
    model: ModelOpt = None,
    greedy: Annotated[bool, typer.Option(help="Greedy decoding instead of sampling.")] = False,
    temperature: float = 1.0,
    top_k: Annotated[int | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    max_new_tokens: int = 40,
    seed: int = 0,
    compare: Annotated[bool, typer.Option(help="Also generate without the prompt.")] = False,
    num_samples: Annotated[
        int, typer.Option(min=1, help="Samples per text (sampling draws each separately).")
    ] = 1,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Continue texts as given (no template) with a prompt or prefix; --compare shows the bare
    model too."""
    from softprompt.evaluation import steering
    from softprompt.generation import SamplingOptions
    from softprompt.generation import generate as run_generation
    from softprompt.methods import load_artifact
    from softprompt.models.backbone import load_backbone, resolve_device

    if not text:
        raise UsageError("give at least one --text to continue")
    if compare and prompt is None:
        raise UsageError("--compare needs a PROMPT to compare against the bare model")
    options = SamplingOptions(max_new_tokens, greedy, temperature, top_k, top_p, seed)
    options.check()
    place = resolve_device(device, "--device")
    backbone = load_backbone(_default_model(prompt, model), dtype=dtype, device=place)
    soft = load_artifact(prompt) if prompt is not None else None
    steer = steering(soft, backbone, str(prompt))
    if num_samples > 1 and greedy:
        raise UsageError("--num-samples needs sampling; leave out --greedy")
    text = [t for t in text for _ in range(num_samples)]
    with_prompt = run_generation(backbone, text, steer, options)
    bare = run_generation(backbone, text, None, options) if compare else None
    rows = [
        {
            "text": t,
            "with_prompt" if soft else "generated": g,
            **({"without_prompt": b} if bare else {}),
        }
        for t, g, b in zip(text, with_prompt, bare or [None] * len(text))
    ]

    def render(items: list[dict]) -> None:
        if compare:
            table = Table("text", "with prompt", "without prompt", show_lines=True)
            for item in items:
                table.add_row(item["text"], item["with_prompt"], item["without_prompt"])
            out.print(table)
            return
        for item in items:
            out.print(f"[bold]{item['text']}[/]{next(v for k, v in item.items() if k != 'text')}")

    _emit(rows, as_json, render)


@app.command()
def models(
    prepare: Annotated[
        bool, typer.Option(help="Convert every installed bundled model into the cache now.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the bundled model aliases, their package, and whether they are cached."""
    from softprompt.models.backbone import ensure_bundled, list_models

    if prepare:
        for row in list_models():
            if row["installed"] and not row["cached"]:
                ensure_bundled(row["alias"])
    rows = list_models()

    def render(items: list[dict]) -> None:
        table = Table("alias", "model", "package", "installed", "cache")
        for r in items:
            cache = f"{r['cache_bytes'] / 2**20:.0f} MiB" if r["cached"] else "not cached"
            name = r["alias"] + (" (default)" if r["default"] else "")
            table.add_row(name, r["description"], r["package"], str(r["installed"]), cache)
        out.print(table)

    _emit(rows, as_json, render)


@app.command()
def demo(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a 16-token prompt on the bundled SmolLM2 (sample sentiment); zero-shot vs trained."""
    from softprompt.demo import run_demo

    result = run_demo(out_dir, set_ or [], progress=not quiet)

    def render(r: dict) -> None:
        out.print(f"model: {r['model']}  test examples: {r['test_examples']}")
        out.print(f"zero-shot accuracy: {r['zero_shot_accuracy']:.3f}")
        out.print(f"trained accuracy:   {r['trained_accuracy']:.3f}")
        out.print(f"run written to {r['run_dir']} ({r['seconds']:.0f} s)")

    _emit(result, as_json, render)


@app.command()
def explain(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors to explain.")],
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report directory.")] = None,
    importance: Annotated[str, typer.Option(help="exact (ablation) or gradient.")] = "exact",
    ablation: Annotated[str, typer.Option(help="zero, mean or remove.")] = "zero",
    top_k: Annotated[int, typer.Option(min=1, help="Nearest tokens per prompt token.")] = 5,
    knn: Annotated[int, typer.Option(min=1, help="Neighbours in the location vote.")] = 7,
    keep: Annotated[
        int | None, typer.Option(min=1, help="One model: tokens kept when compressing.")
    ] = None,
    max_examples: Annotated[int | None, typer.Option(min=1)] = None,
    projection: Annotated[str, typer.Option(help="tsne, umap, pca or none.")] = "tsne",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Which tokens matter to which model, where they lie, and how far the prompt compresses."""
    from softprompt.analysis.explain import explain as run_explain
    from softprompt.analysis.projection import project
    from softprompt.analysis.report import write_report
    from softprompt.methods.prompt import load_prompt
    from softprompt.models.backbone import load_backbone, resolve_device

    if projection not in ("tsne", "umap", "pca", "none"):
        raise UsageError("--projection must be tsne, umap, pca or none")
    names = model or [_default_model(prompt, None)]
    place = resolve_device(device, "--device")
    backbones = [load_backbone(name, dtype=dtype, device=place) for name in names]
    result = run_explain(
        prompt,
        backbones,
        data,
        split=split,
        config=config,
        template=template,
        verbalizer=_verbalizer(verbalizer),
        importance=importance,
        ablation=ablation,
        top_k=top_k,
        knn=knn,
        keep=keep,
        max_examples=max_examples,
        batch_size=batch_size,
    )
    folder = out_dir or prompt.with_name(prompt.stem + "-explain")
    points = None
    if projection != "none":  # in the prompt's own space: models of another size show none
        soft = load_prompt(prompt)
        tables = [
            b.embedding_table() if b.hidden_size == soft.hidden_size else soft.embedding[:0]
            for b in backbones
        ]
        points = project(soft.embedding, tables, method=projection)
    result["files"] = write_report(result, points, folder)

    def render(r: dict) -> None:
        table = Table("token", "owner", "importance", "location", *[Path(n).name for n in names])
        for t in r["tokens"]:
            table.add_row(
                str(t["index"]),
                Path(t["owner"]).name,
                f"{t['strength']:.4f}",
                Path(t["location_cosine"]).name,
                *t["nearest"],
            )
        out.print(table)
        if len(names) > 1:
            out.print(
                f"alignment (cosine) {r['alignment']['cosine']:.2f}, chance {r['chance']:.2f}"
            )
        out.print(f"report: {r['files']['html']}")

    _emit(result, as_json, render)


@app.command()
def compress(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors to shorten.")],
    keep: Annotated[str, typer.Option(help="A number of tokens, or 'owned'.")],
    out_path: Annotated[Path, typer.Option("--out", help="New .safetensors file.")],
    model: ModelOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="Split that ranks tokens and is reported.")] = "test",
    mode: Annotated[str, typer.Option(help="remove (shorter) or mask (zeroed).")] = "remove",
    ablation: Annotated[str, typer.Option(help="zero, mean or remove.")] = "zero",
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Keep the N most important tokens (or those MODEL owns among the prompt's models)."""
    from softprompt.analysis.compress_command import compress_prompt
    from softprompt.models.backbone import resolve_device

    result = compress_prompt(
        prompt,
        _default_model(prompt, model),
        keep,
        out_path,
        data=data,
        split=split,
        mode=mode,
        ablation=ablation,
        batch_size=batch_size,
        device=resolve_device(device, "--device"),
    )

    def render(r: dict) -> None:
        out.print(f"tokens {r['tokens_before']} -> {r['tokens_after']} (kept {r['kept']})")
        out.print(f"accuracy {r['before']['accuracy']:.3f} -> {r['after']['accuracy']:.3f}")
        out.print(f"wrote {r['path']}")

    _emit(result, as_json, render)


@app.command()
def compare(
    prompts: Annotated[list[Path], typer.Argument(help="Two or more prompt files.")],
    as_json: JsonOpt = False,
) -> None:
    """The six similarity metrics between prompts, as matrices."""
    from softprompt.analysis.similarity import METRICS, similarity_matrices
    from softprompt.methods.prompt import load_prompt

    if len(prompts) < 2:
        raise UsageError("compare needs at least two prompts")
    matrices = similarity_matrices([load_prompt(p).embedding for p in prompts])
    result = {"prompts": [str(p) for p in prompts], "metrics": matrices}

    def render(r: dict) -> None:
        labels = [Path(p).stem for p in r["prompts"]]
        for metric in METRICS:
            table = Table("", *labels, title=metric)
            for label, row in zip(labels, r["metrics"][metric]):
                table.add_row(label, *["n/a" if v is None else f"{v:.4f}" for v in row])
            out.print(table)

    _emit(result, as_json, render)


@app.command()
def export(
    prompt: Annotated[Path, typer.Argument(help="Prompt or prefix .safetensors to export.")],
    format_: Annotated[str, typer.Option("--format", help="Target format: peft.")] = "peft",
    model: ModelOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="New adapter folder.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing, non-empty --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a prompt or prefix as a PEFT adapter folder that PeftModel.from_pretrained loads."""
    from softprompt.interop.peft import export_peft
    from softprompt.models.backbone import load_backbone

    if format_ != "peft":
        raise UsageError(f"unknown --format {format_!r}; this version exports: peft")
    if out_dir is None:
        raise UsageError("give the new adapter folder with --out DIR")
    backbone = load_backbone(_default_model(prompt, model))
    export_peft(prompt, backbone, out_dir, overwrite=force)
    info = {"path": str(out_dir), "format": format_, "model": backbone.name}
    _emit(info, as_json, lambda i: out.print(f"wrote {i['path']} (PEFT adapter for {i['model']})"))


@app.command("import")
def import_prompt(
    source: Annotated[
        Path, typer.Argument(help="A .pt file from the research code, or a PEFT adapter folder.")
    ],
    from_: Annotated[str, typer.Option("--from", help="Source format: esp or peft.")] = "esp",
    model: ModelsOpt = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="New .safetensors file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a prompt or prefix saved by another tool into a softprompt artifact (safely: no
    pickles). For peft, --model is optional: it checks the fit and names the model."""
    from softprompt.interop.esp import import_esp
    from softprompt.interop.peft import import_peft
    from softprompt.methods.prompt import SoftPrompt, save_prompt
    from softprompt.models.backbone import load_backbone

    if from_ not in ("esp", "peft"):
        raise UsageError(f"unknown --from {from_!r}; this version imports: esp, peft")
    if from_ == "esp" and not model:
        raise UsageError("name the model(s) the prompt belongs to with --model")
    if out_path is None:
        raise UsageError("give the new file with --out NEW.safetensors")
    backbones = [load_backbone(name) for name in model or []]
    if from_ == "peft":
        artifact = import_peft(source, out_path, backbones or None)
    else:
        artifact = import_esp(source, backbones)
        save_prompt(artifact, out_path)
    info = {"path": str(out_path), "method": artifact.method, "length": artifact.length}
    if isinstance(artifact, SoftPrompt):
        info["hidden_size"] = artifact.hidden_size
    _emit(info, as_json, lambda i: out.print(f"wrote {i['path']} ({i['length']} tokens)"))


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit codes."""
    _state["debug"] = False
    try:
        app(standalone_mode=False)
    except SoftpromptError as exc:
        if _state["debug"] or os.environ.get("SOFTPROMPT_DEBUG") == "1":
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if _state["debug"] or os.environ.get("SOFTPROMPT_DEBUG") == "1":
            raise
        err.print(f"[bold red]error:[/] {exc.strerror or exc}: {exc.filename}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
