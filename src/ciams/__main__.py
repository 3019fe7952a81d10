"""``python -m ciams``."""

from ciams.cli import app

app()
