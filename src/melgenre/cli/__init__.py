"""The ``melgenre`` command line: Typer commands that parse, call the library, and print.

Every command turns a :class:`~melgenre.errors.MelgenreError` into a one-line message on
stderr and exit code 2, never a traceback. This module builds :data:`app` and registers the
commands of each group: :mod:`~melgenre.cli.data`, :mod:`~melgenre.cli.models`,
:mod:`~melgenre.cli.training`, :mod:`~melgenre.cli.evaluation`, :mod:`~melgenre.cli.inference`,
:mod:`~melgenre.cli.library` and :mod:`~melgenre.cli.bench`.
"""

from __future__ import annotations

import typer
import typer.core

from melgenre import __version__
from melgenre.cli import bench, data, evaluation, inference, library, training
from melgenre.cli.common import err_console, error_line, say
from melgenre.cli.models import models_app
from melgenre.errors import MelgenreError
from melgenre.extras import missing_extra


class _Group(typer.core.TyperGroup):
    """Root command group: melgenre and OS errors, and a missing extra, become one line on stderr and exit code 2."""

    def invoke(self, ctx):  # noqa: D102
        try:
            return super().invoke(ctx)
        except MelgenreError as exc:
            error_line(exc)
            raise typer.Exit(2) from None
        except ImportError as exc:  # a command of an extra that is not installed (melgenre.extras)
            line = missing_extra(exc)
            if line is None:
                raise
            error_line(line)
            raise typer.Exit(2) from None
        except OSError as exc:  # read-only or full disk, no permission, a directory where a file belongs
            where = f"{exc.filename}: " if exc.filename else ""
            error_line(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None


class _OptionalRayValueCommand(typer.core.TyperCommand):
    """Lets ``--ray`` stand without a value: a bare ``--ray`` (last, or followed by another option)
    is read as ``--ray=`` (empty address = local Ray). Typer's parser has no optional-value options."""

    def parse_args(self, ctx, args):
        """Rewrite a bare ``--ray`` to ``--ray=`` before Typer parses the arguments."""
        fixed, positional_only = [], False
        for i, arg in enumerate(args):
            if arg == "--":
                positional_only = True
            elif arg == "--ray" and not positional_only and (i + 1 == len(args) or args[i + 1].startswith("-")):
                arg = "--ray="
            fixed.append(arg)
        return super().parse_args(ctx, fixed)


def _no_type_on_flags(display_type_rich):
    """Typer >= 0.2x prints a value type (`<bool>`) beside on/off flags, which take no value."""
    def display(self, ctx):
        return None if self.is_flag else display_type_rich(self, ctx)
    return display


typer.core.TyperOption.display_type_rich = _no_type_on_flags(typer.core.TyperOption.display_type_rich)

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
        say(f"melgenre {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging. Default: info."),
) -> None:
    """melgenre: mel-spectrogram images -> genre classifiers."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("melgenre")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err_console, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


#: Every command in the order ``melgenre --help`` lists them; the commands taking ``--ray [ADDRESS]``
#: parse it with :class:`_OptionalRayValueCommand`.
_COMMANDS = (
    ("prepare", data.prepare), ("embed", data.embed), ("info", data.info), ("show", data.show),
    ("synth", data.synth),
    ("train", training.train), ("evaluate", evaluation.evaluate), ("cv", training.cv), ("fuse", evaluation.fuse),
    ("compare", evaluation.compare), ("table", evaluation.table),
    ("predict", inference.predict_cmd), ("timeline", inference.timeline), ("explain", inference.explain),
    ("score", evaluation.score), ("export", inference.export_cmd),
    ("index", library.index_cmd), ("similar", library.similar),
    ("calibrate", training.calibrate), ("learn", training.learn), ("serve", inference.serve),
    ("bench", bench.bench), ("tag", library.tag_cmd),
)
for _name, _command in _COMMANDS:
    app.command(_name, cls=_OptionalRayValueCommand if _name in ("prepare", "predict", "index") else None)(_command)
app.add_typer(models_app, name="models")

__all__ = ["app"]
