"""The `softprompt` command line. Every command has `--json` for machine-readable stdout;
progress and messages go to stderr. User mistakes print one line and exit 2 (usage) or 1.

This package only parses options, calls the library and prints: each command lives in the module
of its group (training, using, analysis, crossmodel, interop, models) and is registered below.
The command modules import the library (torch, transformers, scikit-learn) inside the command
functions, not at the top: deliberately, so that `--help`, `--version` and usage errors answer
at once instead of after seconds of imports."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from softprompt.cli import (
    analysis,
    cartridge,
    crossmodel,
    interop,
    migrate,
    models,
    planning,
    serving,
    training,
    using,
)
from softprompt.cli.common import err
from softprompt.cli.usage import (
    Command,
    NoArgsIsHelpError,
    SuggestingGroup,
    click_errors,
    usage_line,
)
from softprompt.errors import SoftpromptError

app = typer.Typer(
    name="softprompt",
    help="Train, use and inspect soft prompts for frozen language models.",
    cls=SuggestingGroup,
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
    "migrate": migrate.migrate,
    "study": training.study,
    "cartridge": cartridge.cartridge,
    "plan": planning.plan,
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
    "serve": serving.serve,
}
for _name, _command in COMMANDS.items():
    app.command(_name, cls=Command)(_command)


def _print_version(value: bool) -> None:
    if value:
        from softprompt import __version__

        typer.echo(f"softprompt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Allow models whose code comes with their files (off by default)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    _state["debug"] = debug
    if trust_remote_code:
        os.environ["SOFTPROMPT_TRUST_REMOTE_CODE"] = "1"


def _debugging() -> bool:
    return _state["debug"] or os.environ.get("SOFTPROMPT_DEBUG") == "1"


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _stop(message: str, code: int) -> None:
    """An intended stop (a signal ended training): its line as it is, without `error:`."""
    err.print(escape(message), highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit codes."""
    _state["debug"] = False
    try:
        code = app(standalone_mode=False)
    except SoftpromptError as exc:
        if _debugging():
            raise
        if not exc.is_error:
            _stop(str(exc), exc.exit_code)
        _fail(str(exc), exc.exit_code)
    except NoArgsIsHelpError as exc:  # bare `softprompt`: the help is out (rich prints it)
        if exc.format_message().strip():
            exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        _fail(usage_line(exc), exc.exit_code)
    except click_errors.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if _debugging():
            raise
        _fail(f"{exc.strerror or exc}: {exc.filename}", 1)
    if isinstance(code, int) and code:  # a typer.Exit(code); Ctrl-C outside training is 130
        if code == 130:
            err.print("interrupted")
        sys.exit(code)
