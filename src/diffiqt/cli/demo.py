"""``diffiqt demo``: the main job on a held-out real brain, end to end, in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app

METRIC_COLUMNS = [
    ("psnr", "PSNR dB"),
    ("ssim", "SSIM"),
    ("ms_ssim", "MS-SSIM"),
    ("paper_psnr", "paper PSNR"),
    ("paper_ms_ssim", "paper MS-SSIM"),
    ("seg_miou", "tissue mIoU"),
    ("outside_brain_mae_pct", "scalp MAE %"),
]


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), "-o", "--out", help="Folder for the demo's outputs."),
    brain: str = typer.Option(
        "auto",
        help="Bundled real brain: colin27-brain or colin27 (whole head) are held out of the shipped model's training; mni152 was trained on. auto: colin27-brain if installed, else mni152.",
    ),
    model: str = typer.Option(
        "default",
        "--model",
        help="Shipped model name ('default') or a checkpoint / run folder, as for `diffiqt enhance`.",
    ),
    slab_mm: float = typer.Option(
        0.0,
        "--slab-mm",
        help="Enhance only the central slab this thick across the slice axis (quicker, but a network that sees "
        "whole thick-slice stacks scores worse on a thin slab); 0: the whole brain or head.",
    ),
    axis: int = typer.Option(
        2, help="Slice axis of the simulated scan in RAS+ voxels: 0 sagittal, 1 coronal, 2 axial."
    ),
    steps: int = typer.Option(
        None, help="Sampling steps; default: the model's own (the paper uses 20).", show_default=False
    ),
    samples: int = typer.Option(
        1, help="Samples, each of its own in-plane mirror view; more than 1 also writes the uncertainty (sd) map."
    ),
    seed: int = typer.Option(0, help="Seed of the low-field simulation and of the sampler."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Simulate an x8 low-field scan of a real brain the model never saw, enhance it, and score both.

    Writes to OUT: hf.nii.gz (the truth), lf.nii.gz (thick slices), lf_cubic.nii.gz (cubic
    interpolation, the baseline), enhanced.nii.gz (and enhanced_std.nii.gz with --samples > 1),
    montage.png (low field | cubic | enhanced | truth | both error maps) and metrics.json, and prints
    the metrics of cubic interpolation and of the enhancement side by side.

    Examples:\n
      diffiqt demo\n
      diffiqt demo --brain colin27 --samples 4 -o demo_whole_head\n
      diffiqt demo --slab-mm 48 -o demo_quick
    """
    from diffiqt import __version__
    from diffiqt.cli.common import console, progress
    from diffiqt.evaluation.heldout import held_out_case, run_held_out
    from diffiqt.imaging.io import OutputGroup, save_json, save_volume
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.loading import load_model
    from diffiqt.training.distributed import resolve_device

    loaded = load_model(model)
    console.print(f"model: {loaded.description}")
    if loaded.warning:
        console.print(f"[yellow]note:[/yellow] {loaded.warning}")
    brain = pick_brain(brain)
    console.print(f"simulating an x8 low-field scan of [bold]{brain}[/bold] (slice axis {axis})")
    case = held_out_case(brain, seed=seed, axis=axis, slab_mm=slab_mm or None)
    options = EnhanceOptions(
        steps if steps is not None else loaded.steps, samples=samples, seed=seed, device=str(resolve_device(device))
    )
    with progress() as bar:
        task = bar.add_task("enhancing", total=options.steps)
        result = run_held_out(case, loaded, options, on_step=lambda i: bar.update(task, completed=i + 1))
    enhanced = result.enhanced
    with OutputGroup() as written:
        written.add(save_volume(case.hf, out / "hf.nii.gz"))
        written.add(save_volume(case.lf, out / "lf.nii.gz"))
        written.add(save_volume(result.interpolated, out / "lf_cubic.nii.gz"))
        written.add(save_volume(enhanced.mean, out / "enhanced.nii.gz"))
        if enhanced.std is not None:
            written.add(save_volume(enhanced.std, out / "enhanced_std.nii.gz"))
        written.add(demo_montage(case, result, out / "montage.png"))
        written.add(
            save_json(
                {
                    "diffiqt_version": __version__,
                    "brain": brain,
                    "model": loaded.description,
                    "simulation": case.simulation,
                    "enhance": enhanced.info,
                    "enhance_seconds": result.seconds,
                    "metrics": result.scores,
                },
                out / "metrics.json",
            )
        )
    console.print(metrics_table(result.scores, f"{brain}: {result.seconds:.0f} s for {options.steps} steps"))
    for path in written.paths:
        typer.echo(str(path))


def pick_brain(brain: str) -> str:
    from diffiqt.anatomy.brains import colin27_available
    from diffiqt.cli.common import console

    if brain != "auto":
        return brain
    if colin27_available():
        return "colin27-brain"
    console.print(
        "note: Colin27 (Debian's mricron-data) is not installed, so the demo uses MNI152, which the "
        "shipped model was trained on: its scores are not a held-out test"
    )
    return "mni152"


def demo_montage(case, result, path: Path) -> Path:
    from diffiqt.evaluation.figures import montage
    from diffiqt.imaging.resample import onto_shape

    truth = case.hf
    cubic, enhanced = result.interpolated, result.enhanced.mean
    errors = [
        (f"error {name}", truth.with_data(onto_shape(vol.data, truth.shape) - truth.data))
        for name, vol in (("cubic", cubic), ("enhanced", enhanced))
    ]
    panels = [
        ("high field (truth)", truth),
        ("low field x8", case.lf),
        ("cubic", cubic),
        ("enhanced", enhanced),
        *errors,
    ]
    scores = result.scores
    title = (
        f"{case.name}: PSNR cubic {scores['cubic']['psnr']:.2f} dB, "
        f"enhanced {scores['enhanced']['psnr']:.2f} dB (brain mask)"
    )
    return montage(panels, path, title=title, diverging={name for name, _ in errors})


def metrics_table(scores: dict, title: str):
    from rich.table import Table

    from diffiqt.cli.common import format_metric

    table = Table(title=title)
    table.add_column("method")
    present = [(key, label) for key, label in METRIC_COLUMNS if any(s.get(key) is not None for s in scores.values())]
    for _, label in present:
        table.add_column(label, justify="right")
    for method, values in scores.items():
        table.add_row(method, *(format_metric(values.get(key), 3) for key, _ in present))
    return table
