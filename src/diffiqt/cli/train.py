"""``diffiqt train``: fit a diffusion model (or a supervised baseline) on simulated low-field pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


@app.command()
def train(
    out: Path = typer.Option(..., "-o", "--out", help="Run folder: config.json, train.csv, val.csv, checkpoints/."),
    preset: str | None = typer.Option(
        None, help="Bundled preset: 'paper' (the paper's settings, GPU) or 'cpu-small' (2 CPU cores, < 1 h)."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="JSON or TOML config file, merged over the preset (or the defaults)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Change one setting, e.g. --set optim.lr=3e-4 --set data.sources='[\"mni152\"]' (repeatable)."
    ),
    steps: int | None = typer.Option(None, help="Total optimizer steps (with --resume: extend the run to this many)."),
    max_minutes: float | None = typer.Option(
        None, help="Stop earlier, with a final validation and checkpoint, after this many minutes of training."
    ),
    device: str | None = typer.Option(
        None, help="auto, cpu, cuda or cuda:N (under torchrun each process takes its local GPU)."
    ),
    seed: int | None = typer.Option(None, help="Random seed of weights, data and noise."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its newest checkpoint, exactly."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar (rank 0 only)."),
) -> None:
    """Train a model; every run folder holds the full resolved config and safetensors checkpoints.

    Several GPUs or nodes: launch through torchrun, one process per GPU, e.g.\n
      torchrun --nproc_per_node 4 --no-python diffiqt train --preset paper --out runs/paper\n
    Examples:\n
      diffiqt train --preset cpu-small --out runs/small\n
      diffiqt train --preset paper --set data.sources='["/data/hcp"]' --out runs/paper\n
      diffiqt train --out runs/small --resume --steps 2000
    """
    import os

    from diffiqt import config as configs
    from diffiqt.errors import ConfigError
    from diffiqt.training import distributed
    from diffiqt.training.loop import resume_config
    from diffiqt.training.loop import train as run_training

    given = (("steps", steps), ("seed", seed), ("max_minutes", max_minutes))
    assignments = tuple(set_) + tuple(f"{k}={v}" for k, v in given if v is not None)
    assignments += (f'device="{device}"',) if device is not None else ()
    if resume:
        if preset or config:
            raise ConfigError(
                "--resume continues the run with its saved config; drop --preset/--config (--steps extends it)"
            )
        cfg = resume_config(out, assignments)
    else:
        cfg = configs.resolve(preset, config, assignments)
    result = run_training(cfg, out, resume=resume, progress=progress)
    if not distributed.launched_by_torchrun() or os.environ["RANK"] == "0":  # the process group is closed by now
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result.val.items() if k != "step")
        typer.echo(f"trained to step {result.step}; checkpoint {result.checkpoint}" + (f"; {scores}" if scores else ""))
