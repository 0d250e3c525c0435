"""The ``melgenre models`` sub-app: list the registered models, show one model's layer summary."""

from __future__ import annotations

import typer
from rich.table import Table

from melgenre.cli.common import console, say

models_app = typer.Typer(
    help="List the registered models, or show one model's layers, parameters and FLOPs.",
    invoke_without_command=True,
)


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the registered models with their parameter count (10 classes, default options)."""
    if ctx.invoked_subcommand is not None:
        return
    from melgenre.models import count_params_of, list_models

    table = Table("model", "description", "default input", "params")
    for spec in list_models():
        shape = "x".join(map(str, spec.default_input))
        table.add_row(spec.name, spec.description, shape, f"{count_params_of(spec.name):,}")
    console.print(table)


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Registered model name (see `melgenre models`)."),
    input_shape: str = typer.Option(
        None, "--input", help="Input shape CxHxW without the batch axis. (default: the model's default input)"
    ),
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="Model option key=value (value read as YAML); repeatable (default: none)."
    ),
    depth: int = typer.Option(2, "--depth", help="Show submodules up to this many name levels."),
) -> None:
    """Print a model's layer table, parameter count, FLOPs and output shape."""
    from melgenre.models import parse_options, parse_shape, summarize_by_name

    shape = parse_shape(input_shape) if input_shape else None
    summary = summarize_by_name(name, shape, classes, depth, **parse_options(option or []))
    table = Table("layer", "type", "output shape", "params")
    for layer in summary.layers:
        table.add_row(layer.name, layer.type, str(layer.output_shape), f"{layer.params:,}")
    console.print(table)
    say(f"input shape:  {summary.input_shape}")
    say(f"output shape: {summary.output_shape} (logits)")
    say(f"parameters:   {summary.total_params:,} ({summary.trainable_params:,} trainable)")
    say(f"FLOPs:        {summary.flops / 1e9:.3f} GFLOP ({summary.flops:,}; 2 x multiply-accumulates)")
