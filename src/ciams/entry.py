"""The ``ciams`` console script.

``ciams deid`` is a batch tool that sites run on thousands of files, often one folder
at a time; it goes straight to :mod:`ciams.deid.command` (0.1 s to start) instead of
loading every domain's commands with the full CLI (1.5 s). Everything else is
:data:`ciams.cli.app`.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``ciams`` with the process's arguments."""
    if len(sys.argv) > 1 and sys.argv[1] == "deid":
        from ciams.deid.command import main as deid_main

        raise SystemExit(deid_main(sys.argv[2:], prog="ciams deid"))
    from ciams.cli import app

    app()
