"""``diffiqt bench-speed``: networks, enhancement schemes and quality against steps, timed on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@app.command("bench-speed")
def bench_speed(
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Write the Markdown section to this file (default: print it)."
    ),
    presets: str = typer.Option(
        "paper,no-crossbatch,no-deepfeature-no-crossbatch,small", help="Networks to time, comma-separated."
    ),
    parts: str = typer.Option(
        "networks,enhance,full-brain,quality,tuning",
        help="What to run, comma-separated: networks, enhance (schemes on --region), full-brain, quality, tuning.",
    ),
    repeats: int = typer.Option(3, help="Timed passes per measurement (1: no warm-up pass either)."),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's choice)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    bf16: bool = typer.Option(
        False, "--bf16", help="bf16 autocast (CUDA only; about 1000x slower on this kind of CPU)."
    ),
    model: str = typer.Option(
        "default", help="Model for enhancement: a shipped name, a checkpoint, or untrained:PRESET (timings only)."
    ),
    steps: int = typer.Option(20, help="Sampling steps of the scheme comparison."),
    region: int = typer.Option(
        64, help="Edge (voxels) of the central brain region the three schemes run on in full; 0: the whole brain."
    ),
    samples: int = typer.Option(4, help="Samples averaged by scheme (c)."),
    blend: str = typer.Option("mean", help="How scheme (c) combines overlapping windows: mean or gaussian."),
    windows: int = typer.Option(2, help="full-brain: windows timed per windowed scheme to extrapolate its time."),
    sweep_steps: str = typer.Option("1,2,4,8,20", help="Step counts of the quality sweep, comma-separated."),
    samplers: str = typer.Option("paper,ancestral,ddim", help="Samplers of the quality sweep, comma-separated."),
    tuning_preset: str = typer.Option("small", help="Network of the tuning part (paper: about 20x longer)."),
    compile_: bool = typer.Option(False, "--compile", help="tuning: also try torch.compile (takes minutes on CPU)."),
    seed: int = typer.Option(0, help="Seed of the simulation and the sampler."),
) -> None:
    """Measure speed on this machine and write one Markdown section for docs/benchmarks.md.

    Times each network on one 27-patch batch against the machine's measured convolution peak; enhances
    the simulated MNI brain by our whole-volume scheme (a), the authors' sliding 96³ windows (b) and
    blended windows with several samples (c); sweeps quality against sampling steps. Every figure says
    whether it was measured or extrapolated.

    Examples:\n
      diffiqt bench-speed --out speed.md\n
      diffiqt bench-speed --presets small --parts networks --repeats 5\n
      diffiqt bench-speed --model untrained:small --parts enhance --steps 2 --region 32\n
      diffiqt bench-speed --device cuda --bf16 --presets paper --parts networks,enhance
    """
    import shlex
    import sys

    import torch

    from diffiqt.bench.speed import PARTS, BenchOptions, run
    from diffiqt.diffusion import SAMPLERS
    from diffiqt.errors import ConfigError, OutputError
    from diffiqt.imaging.io import atomic_write
    from diffiqt.inference.tiling import BLENDS

    options = BenchOptions(
        presets=_names(presets),
        parts=_names(parts),
        repeats=repeats,
        device=device,
        bf16=bf16,
        model=model,
        steps=steps,
        region=region or None,
        samples=samples,
        blend=blend,
        windows=windows,
        sweep_steps=[int(s) for s in _names(sweep_steps)],
        samplers=_names(samplers),
        tuning_preset=tuning_preset,
        compile=compile_,
        seed=seed,
    )
    problems = [
        (not options.presets, "--presets names no network"),
        (bool(set(options.parts) - set(PARTS)), f"--parts takes {', '.join(PARTS)}"),
        (bool(set(options.samplers) - set(SAMPLERS)), f"--samplers takes {', '.join(SAMPLERS)}"),
        (blend not in BLENDS[1:], "--blend is mean or gaussian"),
        (min([repeats, steps, samples, windows, *options.sweep_steps]) < 1, "counts and steps must be at least 1"),
        (0 < region < 32 or region < 0, "--region is 0 (whole brain) or at least 32 voxels"),
        (bf16 and not device.startswith("cuda"), "--bf16 needs --device cuda (bf16 on this CPU is ~1000x slower)"),
        (
            device.startswith("cuda") and not torch.cuda.is_available(),
            "--device cuda asked for, but no GPU is available",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise ConfigError(message)
    if threads is not None:
        torch.set_num_threads(threads)
    report = run(options, "diffiqt " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if out is None:
        typer.echo(report, nl=False)
        return
    try:
        atomic_write(out, lambda tmp: tmp.write_text(report))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    typer.echo(f"wrote {out}")
