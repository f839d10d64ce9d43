"""``diffiqt bench``: the paper's Table 1 / Table 2 comparison, every method trained at an equal budget."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


@app.command("bench")
def bench(
    budget: str = typer.Option(
        "cpu",
        help="cpu (2 CPU cores, under 2 hours, narrow networks), smoke (seconds, a plumbing check) or paper (paper-size networks and preset, one GPU).",
    ),
    out: Path = typer.Option(
        Path("runs/bench"),
        "-o",
        "--out",
        help="Bench folder: runs/ (one training run per method), predictions/, results.json, results.csv, report.md, bench.png.",
    ),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated subset of: interpolation, bspline, bspline5, lanczos, linear-iqt, unet, resunet, esrgan, diffiqt, no-crossbatch, no-deepfeature-no-crossbatch, and in the cpu and smoke budgets diffiqt-full-grid, diffiqt-no-mean, shipped (default: all of the budget's).",
    ),
    docs: Path | None = typer.Option(
        None,
        help="Also put the report into this Markdown file, replacing what lies between <!-- bench:start --> and <!-- bench:end --> (appended the first time).",
    ),
    figure: Path | None = typer.Option(None, help="Where the figure goes (.png; default OUT/bench.png)."),
    threads: int | None = typer.Option(
        None, help="torch threads (default: torch's choice; 1 on a machine shared with other jobs)."
    ),
    progress: bool = typer.Option(True, help="Show a training progress bar per method."),
) -> None:
    """Train the paper's methods at an equal budget, score them on held-out scans, report like Tables 1-2.

    Methods: cubic interpolation, the classical peers (SimpleITK's cubic
    and quintic B-spline and Lanczos windowed sinc; pip install
    'diffiqt[bench]'), linear IQT, 3D U-Net, 3D ResU-Net, 3D ESRGAN
    (generator, reconstruction loss), DiffusionIQT and the ablations of
    Table 2 (deep feature only; neither module); in the cpu budget also
    DiffusionIQT on the full-resolution grid and without posterior-mean
    training (one mechanism of the shipped design each), and the shipped
    default model as it is. Every trained method gets the same data, seeds
    and number of training examples. Training uses MNI152 (augmented) only;
    the test scans are Colin27 skull-stripped and whole head under the x8
    low-field simulator, never used for training or validation. Scores:
    PSNR/SSIM/MS-SSIM under the paper's, the strict and the fit protocol,
    tissue Dice and mIoU; see docs/benchmarks.md. A finished
    method is not trained again: rerun the same command to continue an
    interrupted bench.

    Examples:\n
      diffiqt bench --budget smoke --out /tmp/bench-smoke\n
      diffiqt bench --budget cpu --threads 2 --docs docs/benchmarks.md\n
      diffiqt bench --budget cpu --methods interpolation,unet,diffiqt\n
      diffiqt bench --budget paper --out /scratch/bench-paper
    """
    import torch

    from diffiqt.bench.compare import get_budget, parse_methods
    from diffiqt.bench.compare_run import run
    from diffiqt.errors import ConfigError, OutputError

    chosen = get_budget(budget)
    names = parse_methods(methods, chosen)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if figure is not None and figure.suffix.lower() != ".png":
        raise OutputError(f"{figure}: the figure must be a .png file")
    if docs is not None and (docs.suffix.lower() != ".md" or docs.is_dir()):
        raise OutputError(f"{docs}: --docs must be a Markdown (.md) file")
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)
    command = command_line(budget=budget, out=out, methods=methods, docs=docs, figure=figure, threads=threads)
    run(chosen, names, out, command, docs=docs, figure=figure, progress=progress)


def command_line(**options) -> str:
    """The command that reproduces the bench (progress display left out), for the report."""
    import shlex

    words = ["diffiqt", "bench"]
    for name, value in options.items():
        words += [f"--{name}", str(value)] if value is not None else []
    return shlex.join(words)
