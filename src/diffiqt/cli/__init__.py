"""Command-line interface: ``diffiqt simulate | demo | model-info | ...``.

Each command lives in its own module and registers on :data:`app`. Heavy imports
(torch, nilearn) happen inside commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from diffiqt.cli.app import app

# Command modules register themselves on `app` when imported.
from diffiqt.cli import bench as _bench  # noqa: F401
from diffiqt.cli import bench_speed as _bench_speed  # noqa: F401
from diffiqt.cli import models as _models  # noqa: F401
from diffiqt.cli import demo as _demo  # noqa: F401
from diffiqt.cli import enhance as _enhance  # noqa: F401
from diffiqt.cli import evaluate as _evaluate  # noqa: F401
from diffiqt.cli import simulate_pairs as _simulate_pairs  # noqa: F401
from diffiqt.cli import simulate as _simulate  # noqa: F401
from diffiqt.cli import train as _train  # noqa: F401
from diffiqt.errors import DiffiqtError

from typer._click import exceptions as click_exceptions  # typer >= 0.22 carries its own click

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user and usage errors become one line on stderr and exit status 2.

    SIGTERM (what schedulers and ``kill`` send) stops a command as Ctrl-C does (exit 130), so that its
    partial outputs are removed the same way. Set DIFFIQT_DEBUG=1 to see the full traceback of unexpected errors.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click_exceptions.UsageError as exc:
        print(f"diffiqt: error: {usage_message(exc, sys.argv[1:])}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except DiffiqtError as exc:
        print(f"diffiqt: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last line of defence against tracebacks
        if os.environ.get("DIFFIQT_DEBUG"):
            raise
        print(
            f"diffiqt: internal error: {type(exc).__name__}: {exc} (set DIFFIQT_DEBUG=1 for details)", file=sys.stderr
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def usage_message(exc, args: list[str]) -> str:
    """A usage error on one line; an unknown option that is a file name starting with '-' says how to give it."""
    from diffiqt.imaging.io import has_image_suffix

    message = " ".join(exc.format_message().split())
    dashed = [a for a in args if a.startswith("-") and has_image_suffix(a)]
    if isinstance(exc, click_exceptions.NoSuchOption) and dashed:
        return f"{message}: to name the file {dashed[0]!r}, write ./{dashed[0]} or put it after --"
    command = exc.ctx.command_path if exc.ctx is not None else "diffiqt"
    return f"{message} (see {command} -h)"
