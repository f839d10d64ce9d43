"""Small helpers shared by the command modules: progress bars, seeds, metric formatting."""

from __future__ import annotations

import zlib
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for tables and JSON)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def seed_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends on the run's seed and one item's name, not on its position in a folder."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def format_metric(value: float | None, decimals: int = 4) -> str:
    """A metric for a table or CSV; ``None`` (not computable, e.g. LPIPS without weights) is "n/a"."""
    return "n/a" if value is None else f"{value:.{decimals}f}"
