"""Training on a borrowed GPU machine: ``diffiqt simulate-pairs``, ``split-checkpoint`` and ``join-checkpoint``.

The machine may lack the simulator's dependencies and hands back only a few small
files; see docs/training.md, "Training on a GPU with a pre-simulated pairs file",
and scripts/gpu_train.sh.
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


# An optional helper for machines that hand back only a few small files; hidden from the command list.
@app.command("split-checkpoint", hidden=True)
def split_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder, or a run folder (its newest checkpoint)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the shards and checkpoint.json."),
    shard_mib: float = typer.Option(15.0, help="Largest shard in MiB."),
    max_shards: int = typer.Option(5, help="Most shards."),
    total_mib: float = typer.Option(60.0, help="Most MiB of shards in all."),
) -> None:
    """Write a checkpoint's EMA weights as a few small files (float32 if they fit, else float16).

    The defaults fit what a borrowed GPU machine hands back (8 files of 16 MiB, 64 MiB
    in all) with room for checkpoint.json, train.csv and val.csv.
    """
    from diffiqt.transfer import split_checkpoint as split

    for path in split(checkpoint, out, shard_mib, max_shards, total_mib):
        typer.echo(str(path))


@app.command("join-checkpoint", hidden=True)  # split-checkpoint's counterpart
def join_checkpoint(
    folder: Path = typer.Argument(..., help="The folder split-checkpoint wrote (shards and checkpoint.json)."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder to create the checkpoint in."),
) -> None:
    """Turn split-checkpoint's files back into a run folder that enhance --model and export-model read.

    Example:\n
      diffiqt join-checkpoint gpu_out/ --out runs/gpu-paper\n
      diffiqt export-model runs/gpu-paper --name paper-gpu --default
    """
    from diffiqt.transfer import join_checkpoint as join

    typer.echo(str(join(folder, out)))
