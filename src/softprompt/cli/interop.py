"""Commands that move prompts between softprompt and other tools: export and import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from softprompt.cli.common import (
    JsonOpt,
    ModelOpt,
    ModelsOpt,
    default_model,
    emit,
    err,
    out,
)
from softprompt.errors import ModelError, UsageError


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
    from softprompt.models import load_backbone

    if format_ != "peft":
        raise UsageError(f"unknown --format {format_!r}; this version exports: peft")
    if out_dir is None:
        raise UsageError("give the new adapter folder with --out DIR")
    backbone = load_backbone(default_model(prompt, model))
    export_peft(prompt, backbone, out_dir, overwrite=force)
    info = {"path": str(out_dir), "format": format_, "model": backbone.name}
    emit(info, as_json, lambda i: out.print(f"wrote {i['path']} (PEFT adapter for {i['model']})"))


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
    pickles). For peft, --model is optional: it checks the fit and names the model. For esp, a
    model that cannot be loaded here (offline) is recorded as given, with a warning."""
    from softprompt.interop.esp import import_esp
    from softprompt.interop.peft import import_peft
    from softprompt.methods.prompt import save_prompt
    from softprompt.models import load_backbone

    if from_ not in ("esp", "peft"):
        raise UsageError(f"unknown --from {from_!r}; this version imports: esp, peft")
    if from_ == "esp" and not model:
        raise UsageError("name the model(s) the prompt belongs to with --model")
    if out_path is None:
        raise UsageError("give the new file with --out NEW.safetensors")
    if from_ == "peft":
        artifact = import_peft(source, out_path, [load_backbone(n) for n in model or []] or None)
    else:
        artifact = import_esp(source, [_model_or_name(name, source) for name in model or []])
        save_prompt(artifact, out_path)
    info = {"path": str(out_path), "method": artifact.method, "length": artifact.length}
    if hasattr(artifact, "hidden_size"):  # a soft prompt's width; a prefix has layers instead
        info["hidden_size"] = artifact.hidden_size
    emit(info, as_json, lambda i: out.print(f"wrote {i['path']} ({i['length']} tokens)"))


def _model_or_name(name: str, source: Path):
    """The loaded model, or (when the loader cannot provide it: not bundled, no such folder, the
    hub unreachable) its name alone, after a one-line warning that the fit goes unchecked."""
    from softprompt.interop.esp import read_esp_tensor
    from softprompt.models import load_backbone

    try:
        return load_backbone(name)
    except ModelError as exc:
        width = read_esp_tensor(source).shape[1]  # a bad file fails here, before any warning
        err.print(
            f"[yellow]warning:[/] {escape(str(exc))}; recorded {name!r} as given with the file's "
            f"hidden size {width}, its fit to the model was not checked (import again where the "
            "model loads to check it)",
            highlight=False,
            soft_wrap=True,
        )
        return name
