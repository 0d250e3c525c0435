"""The ``melgenre`` command line: Typer commands that parse, call the library, and print.

Every command turns a :class:`~melgenre.errors.MelgenreError` into a one-line message on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import typer
import typer.core
from rich.console import Console

from melgenre import __version__
from melgenre.errors import MelgenreError

err_console = Console(stderr=True)
console = Console()


class _Group(typer.core.TyperGroup):
    """Root command group: melgenre errors become one line on stderr and exit code 2."""

    def invoke(self, ctx):  # noqa: D102
        try:
            return super().invoke(ctx)
        except MelgenreError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    name="melgenre",
    help="Music-genre classification from mel-spectrogram images (CNN and YOLO-style backbones).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"melgenre {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """melgenre: mel-spectrogram images -> genre classifiers."""
