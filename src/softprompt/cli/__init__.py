"""The `softprompt` command line. Every command has `--json` for machine-readable stdout;
progress and messages go to stderr. User mistakes print one line and exit 2 (usage) or 1.

This package only parses options, calls the library and prints: each command lives in the module
of its group (training, using, analysis, crossmodel, interop, models) and is registered below."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import click
import typer

from softprompt.cli import analysis, crossmodel, interop, models, training, using
from softprompt.cli.common import err
from softprompt.errors import SoftpromptError

app = typer.Typer(
    name="softprompt",
    help="Train, use and inspect soft prompts for frozen language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}

# command name -> function, in the order `softprompt --help` lists them
COMMANDS = {
    "train": training.train,
    "evaluate": using.evaluate,
    "transfer-matrix": crossmodel.transfer_matrix,
    "transfer": crossmodel.transfer,
    "align": crossmodel.align,
    "study": training.study,
    "tiny-family": models.tiny_family,
    "predict": using.predict,
    "generate": using.generate,
    "models": models.models,
    "demo": training.demo,
    "explain": analysis.explain,
    "compress": analysis.compress,
    "compare": analysis.compare,
    "export": interop.export,
    "import": interop.import_prompt,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


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
