"""``diffiqt simulate-pairs``: training pairs simulated once into a file, for a machine without the simulator.

A borrowed GPU machine may lack the simulator's dependencies; see docs/training.md, "Optional: training
on a GPU with a pre-simulated pairs file", and scripts/gpu_train.sh.
"""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


@app.command("simulate-pairs")
def simulate_pairs(
    out: Path = typer.Option(..., "-o", "--out", help="The pairs file to write (one .safetensors file)."),
    pairs: int = typer.Option(2, help="Augmented, simulated training pairs (17-20 MB each for an MNI152-sized brain)."),
    val_blocks: int = typer.Option(
        2, help="Fixed validation blocks per training source, from a simulation never trained on."
    ),
    preset: str | None = typer.Option(None, help="Preset whose data settings are used, e.g. 'paper' (96³ blocks)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="JSON or TOML config file, merged over the preset."
    ),
    set_: list[str] = typer.Option([], "--set", help="Change one setting, e.g. --set data.lf_axis=null (repeatable)."),
    seed: int | None = typer.Option(None, help="Random seed of the augmentation and simulation draws."),
) -> None:
    """Simulate training pairs once, into one compact file that `diffiqt train` reads with data.pairs_file.

    The file needs only numpy, torch and safetensors to train from. The defaults
    (2 pairs, 2 validation blocks) make about 44 MB with the paper's 96³ blocks.

    Example:\n
      diffiqt simulate-pairs --preset paper --out runs/gpu/pairs.safetensors
    """
    from diffiqt import config as configs
    from diffiqt.cli.common import progress
    from diffiqt.training.presimulated import write_pairs_file

    cfg = configs.validate(
        configs.resolve(preset, config, tuple(set_) + ((f"seed={seed}",) if seed is not None else ()))
    )
    with progress() as bar:
        task = bar.add_task("simulating pairs", total=pairs)
        meta = write_pairs_file(cfg, out, pairs, val_blocks, on_pair=lambda: bar.advance(task))
    typer.echo(
        f"{out}: {len(meta['pairs'])} pairs and {meta['val_blocks']} validation blocks of "
        f"{meta['block_size']}³ from {', '.join(meta['sources'])}, {out.stat().st_size / 1e6:.1f} MB"
    )
