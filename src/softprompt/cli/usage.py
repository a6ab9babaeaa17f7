"""Mistakes on the command line itself (an unknown command or option, a missing argument, a bad
value): one line that says what is wrong, the closest known name, and where the help is."""

from __future__ import annotations

import difflib
import importlib

import typer
from typer.core import TyperCommand, TyperGroup

# the click that typer runs on: its own vendored copy in recent typer, the click package before
click_errors = importlib.import_module(typer.BadParameter.__module__)
# bare `softprompt` (click >= 8.2 raises this after printing the help; older click exits 0)
NoArgsIsHelpError = getattr(click_errors, "NoArgsIsHelpError", ())


def closest(name: str, known: list[str]) -> str:
    """' (did you mean 'X'?)' for the known name nearest to a misspelt one, else ''."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class _NamesItsCommand:
    """Parsing errors that click raises without a context (an option missing its value) get the
    command's, so that the message can point at that command's help."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click_errors.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class Command(_NamesItsCommand, TyperCommand):
    """A command whose usage errors name it."""


class SuggestingGroup(_NamesItsCommand, TyperGroup):
    """The root command group: an unknown command is a usage error naming the closest command."""

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple:
        name = args[0]
        unknown = not name.startswith("-") and self.get_command(ctx, name) is None
        if unknown and not ctx.resilient_parsing:
            known = self.list_commands(ctx)
            raise click_errors.UsageError(f"unknown command {name!r}{closest(name, known)}", ctx)
        return super().resolve_command(ctx, args)


def command_path(ctx: typer.Context | None) -> str:
    """`softprompt train` for the train command's context, whatever the program was run as."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["softprompt", *reversed(names)])


def usage_line(exc: Exception) -> str:
    """The one-line message for a click usage error, ending with the command's help to read."""
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click_errors.NoSuchOption) and ctx is not None:
        params = ctx.command.get_params(ctx)
        known = [o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        what = f"unknown option {exc.option_name!r}{closest(exc.option_name, known)}"
    else:
        text = " ".join(exc.format_message().split())
        what = text[:1].lower() + text[1:].rstrip(".")
    return f"{what}; see '{command_path(ctx)} --help'"
