"""``python -m melgenre`` runs the command line."""

from melgenre.cli import app

app(prog_name="melgenre")
