"""Small helpers shared by the command modules: progress bars, seeds, metric formatting."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.loading import Model

console = Console(stderr=True)


@contextmanager
def progress() -> Iterator[Progress]:
    """A rich progress bar on stderr (stdout stays clean for tables and JSON).

    If the block fails the bar is not left behind, so that the error is the one line the user sees.
    """
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True  # read when the bar stops: erased on a terminal, never printed elsewhere
            raise


def print_enhance_notes(model: Model, options: EnhanceOptions) -> None:
    """The notes an enhancement run ends with: the model card's caveat, and that samples of one step are no
    uncertainty map. Printed after the work, so that an error is the one line printed, not a paragraph's end."""
    if model.warning:
        console.print(f"[yellow]note:[/yellow] {model.warning}")
    if options.samples > 1 and options.steps_for(model) == 1:
        console.print(
            "[yellow]note:[/yellow] with 1 step the samples differ only by the pure noise the network starts "
            "from, so their spread is no uncertainty map; use --steps 20 for one"
        )


def check_seed(seed: int) -> None:
    """A seed torch and numpy both take: 0 to 2^63 - 1 (a larger one would fail deep inside, after the work began)."""
    from diffiqt.errors import ConfigError

    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed}: must be in [0, 2^63)")


def seed_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends on the run's seed and one item's name, not on its position in a folder."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def format_metric(value: float | None, decimals: int = 4) -> str:
    """A metric for a table or CSV; ``None`` (not computable, e.g. LPIPS without weights) is "n/a"."""
    return "n/a" if value is None else f"{value:.{decimals}f}"
