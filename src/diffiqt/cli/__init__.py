"""Command-line interface: ``diffiqt simulate | demo | model-info | ...``.

Each command lives in its own module and registers on :data:`app`. Heavy imports
(torch, nilearn) happen inside commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys

from diffiqt.cli.app import app
# Command modules register themselves on `app` when imported.
from diffiqt.cli import bench as _bench  # noqa: F401
from diffiqt.cli import compare as _compare  # noqa: F401
from diffiqt.cli import models as _models  # noqa: F401
from diffiqt.cli import demo as _demo  # noqa: F401
from diffiqt.cli import enhance as _enhance  # noqa: F401
from diffiqt.cli import evaluate as _evaluate  # noqa: F401
from diffiqt.cli import gpu as _gpu  # noqa: F401
from diffiqt.cli import simulate as _simulate  # noqa: F401
from diffiqt.cli import train as _train  # noqa: F401
from diffiqt.errors import DiffiqtError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2.

    Usage errors and Ctrl-C are reported by typer/click itself (exit 2 and 1).
    Set DIFFIQT_DEBUG=1 to see the full traceback of unexpected errors.
    """
    try:
        app()
    except DiffiqtError as exc:
        print(f"diffiqt: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last line of defence against tracebacks
        if os.environ.get("DIFFIQT_DEBUG"):
            raise
        print(f"diffiqt: internal error: {type(exc).__name__}: {exc} (set DIFFIQT_DEBUG=1 for details)", file=sys.stderr)
        sys.exit(1)
