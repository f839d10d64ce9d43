"""``diffiqt model-info``: what each network is, its parameter count and its FLOPs per patch."""

from __future__ import annotations

from typing import Annotated

import typer

from diffiqt.cli.app import app


def _facts(name: str) -> dict[str, str]:
    """Printable facts about the network ``name``, measured on the meta device (no memory, no compute)."""
    import torch

    from diffiqt import nets

    with torch.device("meta"):
        net = nets.build_network(name)
    paper = nets.paper_parameters_m(name)
    return {
        "network": name,
        "what": nets.network_summary(name),
        "params": f"{nets.count_parameters(net) / 1e6:.1f}M",
        "paper": "-" if paper is None else f"{paper:.1f}M",
        "GFLOP": f"{nets.count_flops(net) / 1e9:.1f}",
        "inputs": "LF, x_t, logSNR" if net.needs_time else "LF",
        "x-batch": "yes" if net.cross_batch else "no",
        "halo vx": str(net.receptive_field),
    }


@app.command("model-info")
def model_info(
    name: Annotated[
        str | None, typer.Argument(help="A network name; leave out to list every network.", show_default=False)
    ] = None,
) -> None:
    """Print a network's parameter count and FLOPs per 32³ patch (convolutions and matrix products)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from diffiqt.nets import list_networks

    console = Console()
    if name is not None:
        for key, value in _facts(name).items():
            console.print(f"{key:>8}  {value}")
        return
    rows = [_facts(n) for n in list_networks()]
    table = Table(
        title="diffiqt networks",
        caption=(
            "paper: count in Kim et al. 2023 · GFLOP: forward pass on one 32³ patch · x-batch: cross-batch "
            "mechanism · halo: receptive field · `diffiqt model-info NAME` for inputs and a description"
        ),
        box=box.SIMPLE_HEAD,
    )
    columns = [c for c in rows[0] if c not in ("what", "inputs")]  # `model-info NAME` gives them
    for column in columns:
        table.add_column(column, justify="left" if column == "network" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console.print(table)


@app.command("export-model")
def export_model(
    checkpoint: Annotated[
        str, typer.Argument(help="A checkpoint folder, or a training run folder (its newest checkpoint).")
    ],
    name: Annotated[
        str, typer.Option("--name", help="Name of the shipped model (its files are NAME.safetensors and NAME.json).")
    ],
    folder: Annotated[
        str | None,
        typer.Option(
            "--folder", help="Where to write; default: the installed package's weights/ folder.", show_default=False
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="float16 (half the size; enhancement computes in float32) or float32.")
    ] = "float16",
    default: Annotated[
        bool, typer.Option("--default", help="Make it the model `diffiqt enhance` uses without --model.")
    ] = False,
    summary: Annotated[
        str | None,
        typer.Option(
            "--summary",
            help="JSON file whose content goes into the card's 'trained' entry (data, time, ...).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Sampling steps `diffiqt enhance` uses for this model unless told otherwise; default: its training config's (diffusion.sample_steps).",
            show_default=False,
        ),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            "--sampler",
            help="Sampler `diffiqt enhance` uses for this model unless told otherwise; default: its training config's (diffusion.sampler).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an exported model of that name in --folder (the installed package's own models are never replaced).",
        ),
    ] = False,
) -> None:
    """Turn a training checkpoint's EMA weights into a model that `diffiqt enhance --model NAME` finds.

    NAME is a plain name (letters, digits, '.', '_', '-'): the files are NAME.safetensors and NAME.json in --folder.

    Example:\n
      diffiqt export-model runs/small --name my-model --default
    """
    import json
    from pathlib import Path

    from diffiqt.diffusion import SAMPLERS
    from diffiqt.errors import ConfigError, InputError
    from diffiqt.models.shipped import WEIGHTS_DIR, export_checkpoint

    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    target = Path(folder) if folder else WEIGHTS_DIR
    extra = None
    if summary:
        try:
            extra = json.loads(Path(summary).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{summary}: not a readable JSON file ({exc})") from None
    weights, card = export_checkpoint(
        checkpoint, name, target, dtype=dtype, default=default, summary=extra, steps=steps, sampler=sampler, force=force
    )
    typer.echo(str(weights))
    typer.echo(str(card))
