"""What the command groups of ``melgenre.cli`` share: the consoles, one-line output, option parsing
and help texts used by more than one group."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from melgenre.errors import MelgenreError, printable

err_console = Console(stderr=True)
console = Console()

MODEL_HELP = ("Model: a run directory, a .ckpt, a package .json/.safetensors, an exported .onnx, or a shipped "
              "model by name: default (the pretrained musicnn tagger with a genre head; `melgenre models` and "
              "docs/model-card.md say which recipe) or melcnn (the fast from-scratch CNN). Default: the "
              "installed default model (melgenre/weights/default.json).")


def say(message: str) -> None:
    """Print one unwrapped line (log-friendly; rich markup allowed; control characters escaped)."""
    console.print(printable(message), soft_wrap=True, highlight=False)


def shown(text: object) -> str:
    """``text`` (a file name, a reason) for rich markup: on one line (:func:`melgenre.errors.printable`), markup escaped."""
    from rich.markup import escape

    return escape(printable(text))


def error_line(message: object) -> None:
    """Print ``error: MESSAGE`` on stderr as one line, whatever the file names in it."""
    err_console.print(f"[bold red]error:[/] {shown(message)}", highlight=False, soft_wrap=True)


def windows_option(value: str | None):
    """``--windows N|all`` parsed at the edge into a :class:`melgenre.windows.WindowCount` (None: not given);
    a bad value is a one-line :class:`MelgenreError` (exit code 2)."""
    from melgenre.windows import WindowCount

    return None if value is None else WindowCount.parse(value)


def split_names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option as a tuple of names (empty for None)."""
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()


def resumable(out: Path, run, *args, **kwargs):
    """``run(*args, **kwargs)`` (prepare or embed into ``out``); an OS error (full or read-only
    disk, no permission) becomes one line that also says what is kept for the rerun."""
    try:
        return run(*args, **kwargs)
    except OSError as exc:
        parts = out.with_name(out.name + ".parts")
        kept = (f"; the {sum(1 for _ in parts.glob('*.npz'))} finished tracks are kept in {parts}/: rerun the "
                "same command to resume") if parts.is_dir() else ""
        raise MelgenreError(f"{exc.filename or out}: {exc.strerror or exc}{kept}") from None


def quiet_lightning() -> None:
    """Hide Lightning's start-up tips and hardware lines unless --verbose (warnings still show)."""
    import logging

    import lightning  # noqa: F401  (it sets its own level on import)

    if logging.getLogger("melgenre").level > logging.DEBUG:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
