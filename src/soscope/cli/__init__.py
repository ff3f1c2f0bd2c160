"""The ``soscope`` command line (typer). ``main`` is the console-script entry point."""

from soscope.cli._app import app, main

__all__ = ["app", "main"]
