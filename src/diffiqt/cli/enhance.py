"""``diffiqt enhance``: a low-field scan in, an enhanced volume (and an uncertainty map) out."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


@app.command()
def enhance(
    sources: list[Path] = typer.Argument(
        ...,
        metavar="SOURCE...",
        help="Low-field NIfTI/MGZ scan (any orientation, thick slices), or a folder of them; or 2-3 scans of one session (any slice directions), fused into one volume.",
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Enhanced output file (.nii.gz), or a folder when SOURCE is a folder."
    ),
    model: str = typer.Option(
        "default",
        "--model",
        help="A shipped model's name ('default': the one shipped as default), a checkpoint folder, or a training run folder (its newest checkpoint).",
    ),
    steps: int = typer.Option(
        None,
        help="Sampling steps; default: the model's own (a shipped model's card says it, see docs/model-card.md; the paper uses 20). Fewer is faster and smoother.",
        show_default=False,
    ),
    sampler: str | None = typer.Option(
        None,
        help="paper (Algorithm 2), ancestral (posterior), ddim (deterministic) or refine (the posterior mean, then a short chain from it); default: the model's own (its card says it).",
        show_default=False,
    ),
    samples: int = typer.Option(
        1,
        help="Samples, each of the scan in its own in-plane mirror view (mirrored back); with more than 1 the mean is written and *_std holds their per-voxel standard deviation (uncertainty, even at one step).",
    ),
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto (cuda if available)."),
    max_voxels: int = typer.Option(
        None, help="Evaluate the network in chunks of at most this many voxels (same result, less memory)."
    ),
    png: bool = typer.Option(False, help="Also write a PNG montage (LF | enhanced | std) as *_montage.png."),
    force: bool = typer.Option(False, "--force", help="Replace outputs that already exist."),
    participant_label: list[str] = typer.Option(
        [], help="BIDS dataset only: enhance this participant's scans (repeatable; 01 or sub-01)."
    ),
    session_label: list[str] = typer.Option(
        [], help="BIDS dataset only: enhance this session's scans (repeatable; 1 or ses-1)."
    ),
    fusion: str = typer.Option(
        "fourier", help="Several scans: fourier (each scan weighted by the frequencies its slices resolve) or mean."
    ),
    register: bool = typer.Option(
        True,
        help="Several scans: rigidly register each enhanced scan to the first (needs SimpleITK: pip install 'diffiqt[bench]').",
    ),
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
      diffiqt enhance bids_root/ -o bids_root/derivatives/diffiqt --participant-label 01\n
      diffiqt enhance ax.nii.gz cor.nii.gz sag.nii.gz -o fused.nii.gz   (one volume from three scans; see docs/usage.md)\n
      torchrun --nproc_per_node 4 -m diffiqt enhance lf_folder/ -o enhanced/ --model RUN --device cuda
    """
    from diffiqt.anatomy.brains import list_user_folder
    from diffiqt.cli.bids import bids_mode, enhance_dataset
    from diffiqt.cli.common import check_seed, print_enhance_notes, progress
    from diffiqt.diffusion import SAMPLERS
    from diffiqt.errors import ConfigError, InputError
    from diffiqt.imaging.io import check_output_path, check_outputs, load_volume, split_image_name
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.loading import load_model
    from diffiqt.models.shipped import resolve_model
    from diffiqt.training import distributed

    # Everything that can be checked without the model is checked before it loads (seconds), so that a
    # mistake costs nothing and is the one line printed.
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if (steps is not None and steps < 1) or samples < 1 or (max_voxels is not None and max_voxels < 1):
        raise ConfigError("--steps, --samples and --max-voxels must be at least 1")
    check_seed(seed)
    target_device = distributed.resolve_device(device)
    ref = resolve_model(model)
    if len(sources) > 1:
        from diffiqt.cli.fusion import enhance_fused

        if participant_label or session_label:
            raise ConfigError(
                "--participant-label and --session-label select scans of one BIDS dataset, not of several scans"
            )
        options = EnhanceOptions(steps, sampler, samples, seed, str(target_device), max_voxels)
        return enhance_fused(sources, out, ref, options, fusion, register, png, force)
    source = sources[0]
    if bids_mode(source, participant_label, session_label):  # a folder with dataset_description.json: see cli/bids.py
        return enhance_dataset(
            source,
            out,
            ref,
            EnhanceOptions(steps, sampler, samples, seed, str(target_device), max_voxels),
            png=png,
            force=force,
            participants=participant_label,
            sessions=session_label,
        )
    folder_mode = source.is_dir()
    if folder_mode:
        if out.suffix:
            raise InputError(f"{out}: SOURCE is a folder, so --out must be a folder (no suffix)")
        scans = list_user_folder(source)
        jobs = [(f, out / f"{split_image_name(f)[0]}_enhanced{split_image_name(f)[1]}") for f in scans]
    else:
        scans, jobs = [source], [(source, check_output_path(out))]  # a .nii.gz/.mgz name (folder mode keeps the scans')
    check_outputs(
        [(path, scan.name) for scan, target in jobs for path in outputs_of(target, samples, png)], scans, force=force
    )
    lf = None if folder_mode else load_volume(source)
    if folder_mode:
        # Under torchrun each process takes every world-th scan. The split follows the process group, not
        # RANK/WORLD_SIZE alone: a stray RANK in the environment must not make a single process skip scans.
        # Joining (with a barrier) also keeps one process's new outputs from failing another's checks above.
        distributed.init(target_device.type)
        distributed.barrier()
        jobs = jobs[distributed.rank() :: distributed.world_size()]
    try:
        loaded = load_model(ref.name if ref.name is not None else ref.path)
        options = EnhanceOptions(
            steps if steps is not None else loaded.steps, sampler, samples, seed, str(target_device), max_voxels
        )
        with progress() as bar:
            for scan, target in jobs:
                enhance_file(scan, lf if lf is not None else load_volume(scan), target, loaded, ref, options, png, bar)
    finally:
        distributed.close()
    print_enhance_notes(loaded, options)


def outputs_of(target: Path, samples: int, png: bool) -> list[Path]:
    """Every file that enhancing into ``target`` writes: the mean, the std (samples > 1), the montage, the sidecar."""
    from diffiqt.imaging.io import sibling_path

    return (
        [target]
        + ([sibling_path(target, "_std")] if samples > 1 else [])
        + ([sibling_path(target, "_montage", ".png")] if png else [])
        + [sibling_path(target, "", ".json")]
    )


def enhance_file(scan: Path, lf, target: Path, model, ref, options, png: bool, bar) -> None:
    """Enhance the scan ``lf`` (read from ``scan``) into ``target`` and its siblings, all or none of them."""
    from dataclasses import asdict

    from diffiqt import __version__
    from diffiqt.evaluation.figures import montage
    from diffiqt.imaging.io import OutputGroup, save_json, save_volume, sibling_path
    from diffiqt.inference.enhance import enhance
    from rich.progress import TaskID

    std_path = sibling_path(target, "_std")
    tasks: list[TaskID] = []  # created at the first step, so that input errors print no empty bar

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
            panels = [("low field", lf), ("enhanced", result.mean)] + (
                [("uncertainty (sd)", result.std)] if result.std is not None else []
            )
            written.add(montage(panels, sibling_path(target, "_montage", ".png"), title=scan.name))
        # The model as resolved (a shipped name and the SHA-256 its weights were checked against, or a path),
        # so that a result can be traced to the exact weights that made it.
        written.add(
            save_json(
                {
                    "diffiqt_version": __version__,
                    "input": str(scan),
                    **result.info,
                    "resolved_model": asdict(ref),
                    "outputs": [str(p) for p in written.paths],
                },
                sibling_path(target, "", ".json"),
            )
        )
