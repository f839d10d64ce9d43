"""``diffiqt enhance``: a low-field scan in, an enhanced volume (and an uncertainty map) out."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


@app.command()
def enhance(
    source: Path = typer.Argument(..., help="Low-field NIfTI/MGZ scan (any orientation, thick slices), or a folder of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Enhanced output file (.nii.gz), or a folder when SOURCE is a folder."),
    model: str = typer.Option("default", "--model", help="A shipped model's name ('default': the one shipped as default), a checkpoint folder, or a training run folder (its newest checkpoint)."),
    steps: int = typer.Option(None, help="Sampling steps; default: the model's own (a shipped model's card says it, see docs/model-card.md; the paper uses 20). Fewer is faster and smoother.", show_default=False),
    sampler: str = typer.Option("paper", help="paper (Algorithm 2), ancestral (posterior) or ddim (deterministic)."),
    samples: int = typer.Option(1, help="Stochastic samples; with more than 1 the mean is written and *_std holds the per-voxel standard deviation (uncertainty)."),
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto (cuda if available)."),
    max_voxels: int = typer.Option(None, help="Evaluate the network in chunks of at most this many voxels (same result, less memory)."),
    png: bool = typer.Option(False, help="Also write a PNG montage (LF | enhanced | std) as *_montage.png."),
) -> None:
    """Enhance low-field brain MRI with a trained DiffusionIQT model.

    The scan is resampled onto the model's isotropic grid (cubic), normalised,
    and the whole head runs through the network at once (the cross-batch
    mechanism: no patches, no seams). The output is on that isotropic grid,
    aligned with the input in world space; values outside the head box are the
    interpolated input. A JSON sidecar records the settings.

    Without --model the shipped default model is used (see docs/model-card.md).

    Examples:\n
      diffiqt enhance lf.nii.gz -o enhanced.nii.gz\n
      diffiqt enhance lf.nii.gz -o enhanced.nii.gz --model runs/cpu-small\n
      diffiqt enhance lf.nii.gz -o enhanced.nii.gz --model runs/cpu-small --samples 4 --png\n
      diffiqt enhance lf_folder/ -o enhanced/ --model runs/cpu-small\n
      torchrun --nproc_per_node 4 -m diffiqt enhance lf_folder/ -o enhanced/ --model RUN --device cuda
    """
    from diffiqt.cli.common import console, progress
    from diffiqt.datasets import list_user_folder
    from diffiqt.distributed import resolve_device
    from diffiqt.enhance import EnhanceOptions, load_model
    from diffiqt.errors import InputError
    from diffiqt.io import split_image_name

    import os

    loaded = load_model(model)
    options = EnhanceOptions(steps if steps is not None else loaded.steps, sampler, samples, seed, str(resolve_device(device)), max_voxels)
    if loaded.warning:
        console.print(f"[yellow]note:[/yellow] {loaded.warning}")
    if options.samples > 1 and options.steps == 1:
        console.print("[yellow]note:[/yellow] with 1 step the samples differ only by the pure noise the network starts "
                      "from, so their spread is no uncertainty map; use --steps 20 for one")
    if source.is_dir():
        if out.suffix:
            raise InputError(f"{out}: SOURCE is a folder, so --out must be a folder (no suffix)")
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        files = list_user_folder(source)[rank::world]  # torchrun: each process takes every world-th scan
        jobs = [(f, out / f"{split_image_name(f)[0]}_enhanced{split_image_name(f)[1]}") for f in files]
    else:
        jobs = [(source, out)]
    with progress() as bar:
        for scan, target in jobs:
            enhance_file(scan, target, loaded, options, png, bar)


def enhance_file(scan: Path, target: Path, model, options, png: bool, bar) -> None:
    from diffiqt import __version__
    from diffiqt.enhance import enhance
    from diffiqt.figures import montage
    from diffiqt.io import OutputGroup, check_output_path, load_volume, save_json, save_volume, sibling_path

    std_path = sibling_path(target, "_std")
    for path in (target, std_path):
        check_output_path(path, [scan])
    lf = load_volume(scan)
    tasks = []  # created at the first step, so that input errors print no empty bar

    def on_step(i: int) -> None:
        if not tasks:
            tasks.append(bar.add_task(f"enhancing {scan.name}", total=options.steps))
        bar.update(tasks[0], completed=i + 1)

    result = enhance(lf, model, options, on_step=on_step)
    with OutputGroup() as written:
        written.add(save_volume(result.mean, target, inputs=[scan]))
        if result.std is not None:
            written.add(save_volume(result.std, std_path, inputs=[scan]))
        if png:
            panels = [("low field", lf), ("enhanced", result.mean)] + ([("uncertainty (sd)", result.std)] if result.std is not None else [])
            written.add(montage(panels, sibling_path(target, "_montage", ".png"), title=scan.name))
        written.add(save_json({"diffiqt_version": __version__, "input": str(scan), **result.info,
                               "outputs": [str(p) for p in written.paths]}, sibling_path(target, "", ".json")))
