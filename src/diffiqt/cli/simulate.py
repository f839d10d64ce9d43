"""``diffiqt simulate``: low-field volumes from high-field ones (Lin et al. 2023 decimation simulator)."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app

AXES = "axial, coronal or sagittal (or 2, 1, 0: the axis of the RAS+ reoriented volume)"


def parse_axis(text: str) -> int:
    from diffiqt.errors import InputError
    from diffiqt.imaging.io import AXIS_NAMES

    if text.lower() in AXIS_NAMES:
        return AXIS_NAMES[text.lower()]
    if text in ("0", "1", "2"):
        return int(text)
    raise InputError(f"--axis must be {AXES}; got {text!r}")


@app.command()
def simulate(
    source: str = typer.Argument(
        ..., help="HF T1w NIfTI/MGZ file, a folder of them, or a bundled brain name ('mni152')."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Output LF file (.nii.gz), or a folder when SOURCE is a folder."),
    thickness: float = typer.Option(4.2, help="Slice thickness in mm (= FWHM of the Gaussian slice profile)."),
    gap: float = typer.Option(1.4, help="Gap between slices in mm; one slice is kept every thickness+gap mm."),
    factor: float = typer.Option(
        None,
        help="Decimation factor relative to the input voxel size; overrides --thickness/--gap with the paper's 3:1 ratio (8 = paper).",
    ),
    axis: str = typer.Option("axial", help=f"Slice direction: {AXES}."),
    snr_wm: float = typer.Option(
        None, help="White-matter SNR; with --snr-gm fixes both instead of drawing them from the T1w prior."
    ),
    snr_gm: float = typer.Option(None, help="Grey-matter SNR (see --snr-wm)."),
    inplane: float = typer.Option(
        None,
        help="In-plane voxel size of the simulated scan in mm (clinical scans: 1.2-1.5); default: the input's own. "
        "The output keeps this grid; --upsample brings it back onto the input's.",
    ),
    seed: int = typer.Option(0, help="Random seed (noise and SNR draws); each file's stream also depends on its name."),
    upsample: bool = typer.Option(
        True, help="Also write the LF resampled (cubic) onto the HF grid as *_upsampled: the network's condition."
    ),
    png: bool = typer.Option(False, help="Also write a PNG montage (HF vs LF) as *_montage.png."),
    force: bool = typer.Option(False, "--force", help="Replace outputs that already exist."),
    participant_label: list[str] = typer.Option(
        [], help="BIDS dataset only: simulate from this participant's scans (repeatable; 01 or sub-01)."
    ),
    session_label: list[str] = typer.Option(
        [], help="BIDS dataset only: simulate from this session's scans (repeatable; 1 or ses-1)."
    ),
) -> None:
    """Simulate low-field scans from high-field T1w volumes.

    Slice-profile blur, decimation in the slice direction, contrast change and
    noise, as in Lin et al. 2023 (paper setting: 4.2 mm slices, 1.4 mm gap on
    0.7 mm data, i.e. x8; use --factor 8 for x8 on any voxel size). GM/WM/CSF
    maps are read from FSL FAST files beside each input (NAME_pve_0/1/2) or
    estimated. Each output gets a JSON sidecar with every parameter used and drawn.

    Examples:\n
      diffiqt simulate sub-01_T1w.nii.gz -o sub-01_lf.nii.gz --png\n
      diffiqt simulate hf_folder/ -o lf_folder/ --factor 8 --seed 1\n
      diffiqt simulate bids_root/ -o bids_root/derivatives/diffiqt-lowfield --factor 8\n
      diffiqt simulate mni152 -o mni_lf.nii.gz --snr-wm 60 --snr-gm 50\n
      diffiqt simulate sub-01_T1w.nii.gz -o lf.nii.gz --factor 5 --inplane 1.4
    """
    from functools import partial

    from diffiqt.anatomy import brains
    from diffiqt.cli.bids import bids_mode, simulate_dataset
    from diffiqt.cli.common import check_seed, progress, seed_for
    from diffiqt.errors import DiffiqtError, InputError
    from diffiqt.imaging.io import check_output_path, check_outputs, split_image_name

    axis_index = parse_axis(axis)
    check_seed(seed)
    path = Path(source)
    params = partial(
        lowfield_params,
        thickness=thickness,
        gap=gap,
        factor=factor,
        axis=axis_index,
        snr_wm=snr_wm,
        snr_gm=snr_gm,
        inplane=inplane,
    )
    if bids_mode(path, participant_label, session_label):  # a folder with dataset_description.json: see cli/bids.py
        return simulate_dataset(
            path,
            out,
            params,
            seed,
            upsample=upsample,
            png=png,
            force=force,
            participants=participant_label,
            sessions=session_label,
        )
    if path.is_dir():
        files = brains.list_user_folder(path)
        if out.suffix:
            raise InputError(f"{out}: SOURCE is a folder, so --out must be a folder (no suffix)")
        jobs = [(file, out / f"{split_image_name(file)[0]}_lf{split_image_name(file)[1]}") for file in files]
        # Every output against every input of the folder: s_lf.nii.gz may be another input, not only s's own.
        check_outputs(
            [(p, file.name) for file, target in jobs for p in outputs_of(target, upsample, png)], files, force=force
        )
        failures = []
        with progress() as bar:
            task = bar.add_task("simulating", total=len(files))
            for file, target in jobs:
                try:
                    sample = brains.load_user_volume(file)
                    _simulate_one(sample, target, [file], params, seed, seed_for(seed, file.name), upsample, png)
                except DiffiqtError as exc:
                    failures.append(str(exc))
                    bar.console.print(f"[red]skipped[/red] {exc}")
                bar.advance(task)
        if failures:
            raise InputError(f"{len(failures)} of {len(files)} files failed (see above)")
        return
    check_outputs([(p, source) for p in outputs_of(check_output_path(out, [path]), upsample, png)], [path], force=force)
    if path.exists() or source not in brains.BUNDLED:
        sample = brains.load_user_volume(path)
    else:
        sample = brains.load_bundled(source)
    _simulate_one(sample, out, [path], params, seed, seed_for(seed, sample.name), upsample, png)


def outputs_of(out: Path, upsample: bool, png: bool) -> list[Path]:
    """Every file simulating into ``out`` writes: the LF volume, its upsampled copy, the montage, the sidecar."""
    from diffiqt.imaging.io import sibling_path

    return (
        [out]
        + ([sibling_path(out, "_upsampled")] if upsample else [])
        + ([sibling_path(out, "_montage", ".png")] if png else [])
        + [sibling_path(out, "", ".json")]
    )


def lowfield_params(
    t1,
    thickness: float,
    gap: float,
    factor: float | None,
    axis: int,
    snr_wm: float | None,
    snr_gm: float | None,
    inplane: float | None = None,
):
    """The simulation's parameters for the HF volume ``t1``: --factor is relative to its voxel size."""
    from diffiqt.simulation import LowFieldParams

    if factor is not None:
        return LowFieldParams.for_factor(
            factor, float(t1.voxel_size[axis]), axis=axis, snr_wm=snr_wm, snr_gm=snr_gm, inplane_mm=inplane
        )
    return LowFieldParams(
        thickness_mm=thickness, gap_mm=gap, axis=axis, snr_wm=snr_wm, snr_gm=snr_gm, inplane_mm=inplane
    )


def _simulate_one(sample, out: Path, inputs, params, seed, rng, upsample, png):
    """Simulate one LF volume into ``out`` and its siblings (checked by the caller), all or none of them;
    ``params(t1)`` gives the simulation's parameters for the sample's volume."""
    from diffiqt import __version__
    from diffiqt.evaluation.figures import montage
    from diffiqt.imaging.io import OutputGroup, save_json, save_volume, sibling_path
    from diffiqt.simulation import simulate_low_field

    up_path, json_path, png_path = (
        sibling_path(out, "_upsampled"),
        sibling_path(out, "", ".json"),
        sibling_path(out, "_montage", ".png"),
    )
    chosen = params(sample.t1)
    result = simulate_low_field(sample.t1, sample.tissues, chosen, rng, upsample=upsample)
    with OutputGroup() as written:
        written.add(save_volume(result.lf, out, inputs=inputs))
        if result.lf_on_hf is not None:
            written.add(save_volume(result.lf_on_hf, up_path, inputs=inputs))
        if png:
            panels = [("high field", sample.t1), ("low field (simulated)", result.lf)]
            step = chosen.spacing_mm / sample.t1.voxel_size[chosen.axis]
            title = f"{sample.name}: x{step:.3g} decimation, axis {chosen.axis}"
            written.add(montage(panels, png_path, title=title))
        source = str(inputs[0]) if inputs[0].exists() else f"bundled:{sample.name}"
        sidecar = {
            "diffiqt_version": __version__,
            "source": source,
            "seed": seed,
            **result.info,
            "outputs": [str(p) for p in written.paths],
        }
        written.add(save_json(sidecar, json_path))
