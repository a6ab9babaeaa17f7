"""`softprompt migrate`: a prompt moved to another base model by distillation on unlabelled
texts (the library function is softprompt.migration.migrate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import (
    DtypeOpt,
    JsonOpt,
    TemplateOpt,
    VerbalizerOpt,
    emit,
    out,
    parse_verbalizer,
)
from softprompt.errors import UsageError

ToOpt = Annotated[list[str] | None, typer.Option("--to", help="The new model; repeat for several.")]
InputsOpt = Annotated[
    str | None,
    typer.Option(
        help="Unlabelled texts: .jsonl/.csv/.txt, or - for stdin (labels only report accuracy)."
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="New .safetensors (a folder with several --to).")
]
MethodOpt = Annotated[
    str | None, typer.Option(help="prompt, prefix, p_tuning or residual (default: the same).")
]
BaseConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Base config (prompt: and train: sections).")
]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="Source model (default: the artifact's).")
]
ShiftOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Weight a of the shift term (0: plain KL).")
]
ReferenceOpt = Annotated[
    str,
    typer.Option(
        help="KL toward: teacher (POST), shifted (own zero-shot + shift) or ensemble "
        "(teacher x own zero-shot)."
    ),
]
OwnOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="With --reference ensemble: own zero-shot's weight.")
]
RunDirOpt = Annotated[Path | None, typer.Option(help="Run folder (default: beside --out, .run).")]


def migrate(
    artifact: Annotated[Path, typer.Argument(help="The prompt or prefix to migrate.")],
    to: ToOpt = None,
    data: InputsOpt = None,
    out_path: OutOpt = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps of the student.")] = 200,
    method: MethodOpt = None,
    config: BaseConfigOpt = None,
    source: FromOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    shift_weight: ShiftOpt = 0.5,
    reference: ReferenceOpt = "teacher",
    own_weight: OwnOpt = 0.5,
    run_dir: RunDirOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in the run folder.")] = False,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Training and split seed.")] = 42,
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Move a prompt to another base model without labels: the old model with its prompt
    teaches a new prompt on the new model, on unlabelled texts."""
    from softprompt.migration import migrate as run_migration

    if not to:
        raise UsageError("give the model to migrate to with --to MODEL")
    if data is None:
        raise UsageError("give the unlabelled texts with --data FILE (or - for stdin)")
    result = run_migration(
        str(artifact),
        to if len(to) > 1 else to[0],
        data,
        out=out_path,
        run_dir=run_dir,
        resume=resume,
        steps=steps,
        method=method,
        config=config,
        source=source,
        template=template,
        verbalizer=parse_verbalizer(verbalizer),
        shift_weight=shift_weight,
        reference=reference,
        own_weight=own_weight,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        dtype=dtype,
    )
    emit(result, as_json, _render)


def _render(result: dict) -> None:
    for one in result.get("migrations", [result]):
        agreement = one.get("teacher_agreement")
        shown = f"{agreement:.3f}" if agreement is not None else "n/a"
        out.print(
            f"{one['path']}: {one['target']} student, {one['objective']['what']}, "
            f"start {one['student_start']['start']}, {one['inputs']} inputs, "
            f"held-out agreement with the teacher {shown}",
            highlight=False,
            soft_wrap=True,
        )
        for name, row in (one.get("labelled") or {}).items():
            out.print(
                f"  labels ({name}, {row['inputs']} inputs, not used to train): teacher "
                f"{row['teacher_accuracy']:.3f}, student {row['student_accuracy']:.3f}",
                highlight=False,
            )
