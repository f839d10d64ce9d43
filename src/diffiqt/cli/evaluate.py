"""``diffiqt evaluate``: score enhanced volumes against their high-field targets."""

from __future__ import annotations

from pathlib import Path

import typer

from diffiqt.cli.app import app


def pair_files(pred: Path, target: Path) -> list[tuple[Path, Path]]:
    """(pred, target) pairs: two files, or two folders matched by file name."""
    from diffiqt.anatomy.brains import list_user_folder
    from diffiqt.errors import InputError

    if pred.is_dir() != target.is_dir():
        raise InputError("--pred and --target must both be files or both be folders")
    if not pred.is_dir():
        return [(pred, target)]
    targets = {p.name: p for p in list_user_folder(target)}
    pairs = [(p, targets[p.name]) for p in list_user_folder(pred) if p.name in targets]
    if not pairs:
        raise InputError(f"no file name appears in both {pred} and {target}")
    return pairs


def score_pair(
    pred_path: Path, target_path: Path, mask_path: Path | None, segmentation: bool, png: Path | None
) -> dict:
    """Metrics of one pair; the prediction is resampled (cubic) onto the target's grid if needed."""
    import numpy as np

    from diffiqt.anatomy.brains import check_head, intensity_mask, looks_skull_stripped
    from diffiqt.errors import InputError
    from diffiqt.evaluation.figures import montage
    from diffiqt.evaluation.metrics import evaluate
    from diffiqt.imaging.io import load_volume
    from diffiqt.imaging.resample import resample

    target = load_volume(target_path)
    pred = load_volume(pred_path)
    if pred.shape != target.shape or not np.allclose(pred.affine, target.affine, atol=1e-4):
        # Resampling pads outside the prediction, so without any overlap it would score padding alone.
        (pred_lo, pred_hi), (target_lo, target_hi) = pred.world_bounds(), target.world_bounds()
        if np.any(np.minimum(pred_hi, target_hi) <= np.maximum(pred_lo, target_lo)):
            raise InputError(
                f"{pred_path}: its field of view does not overlap {target_path}'s; are both in the same world space?"
            )
        pred = resample(pred, target.affine, target.shape)
    if mask_path is not None:
        mask_volume = load_volume(mask_path)
        if mask_volume.shape != target.shape or not np.allclose(mask_volume.affine, target.affine, atol=1e-4):
            raise InputError(
                f"{mask_path}: mask is not on the target's grid (shape {target.shape} and the same affine)"
            )
        mask = mask_volume.data > 0.5
    else:
        mask = intensity_mask(target.data, skull_stripped=looks_skull_stripped(target.data))
    check_head(mask, mask_path or target_path)
    row = {
        "pred": str(pred_path),
        "target": str(target_path),
        **evaluate(pred.data, target.data, mask, segmentation=segmentation),
    }
    if png is not None:
        error = target.with_data(pred.data - target.data)
        montage(
            [("target", target), ("prediction", pred), ("prediction - target", error)],
            png,
            diverging={"prediction - target"},
            title=f"{pred_path.name}: PSNR {row['psnr']:.2f} dB (in mask)",
        )
    return row


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Enhanced volume, or a folder of them."),
    target: Path = typer.Option(
        ..., "--target", help="High-field reference volume, or a folder (files paired by name)."
    ),
    mask: Path = typer.Option(
        None, "--mask", help="Brain mask on the target's grid (default: from the target's intensity)."
    ),
    csv: Path = typer.Option(None, "--csv", help="Write the table as CSV."),
    json_out: Path = typer.Option(None, "--json", help="Write the table as JSON."),
    png: Path = typer.Option(None, "--png", help="Error-map montage (a file for one pair, a folder for folders)."),
    segmentation: bool = typer.Option(True, help="Also score CSF/GM/WM segmentation agreement (Dice, mean IoU)."),
    force: bool = typer.Option(False, "--force", help="Replace --csv/--json/--png files that already exist."),
) -> None:
    """Score predictions against targets: PSNR, SSIM, MS-SSIM, LPIPS (if available offline), tissue Dice/mIoU.

    Three protocols are reported (see docs/evaluation.md): `psnr`/`ssim`/`ms_ssim`
    inside the brain on the target's fixed intensity range; `fit_psnr`/`fit_ssim`,
    the same after one least-squares gain and offset maps the prediction onto the
    target (intensity units are arbitrary); and the paper's
    `paper_psnr`/`paper_ms_ssim` on the central 192³ region with each volume
    scaled to [0, 1]. Missing values (e.g. MS-SSIM of a small volume, LPIPS
    without local weights) are shown as n/a; in --json, they and infinite
    values (PSNR of identical volumes) are null.

    Examples:\n
      diffiqt evaluate --pred enhanced.nii.gz --target hf.nii.gz --png errors.png\n
      diffiqt evaluate --pred enhanced/ --target hf/ --csv scores.csv
    """
    from diffiqt.cli.common import console, format_metric, progress
    from diffiqt.imaging.io import OutputGroup, check_outputs, save_json, save_text, split_image_name

    pairs = pair_files(pred, target)
    png_paths: list[Path | None] = [None] * len(pairs)
    if png is not None:
        png_paths = [png / f"{split_image_name(p)[0]}_errors.png" for p, _ in pairs] if pred.is_dir() else [png]
    outputs = [(csv, "--csv"), (json_out, "--json")] + [(p, q.name) for p, (q, _) in zip(png_paths, pairs)]
    inputs = [path for pair in pairs for path in pair] + ([mask] if mask is not None else [])
    check_outputs([(path, what) for path, what in outputs if path is not None], inputs, force=force)
    rows = []
    with progress() as bar:
        task = bar.add_task("evaluating", total=len(pairs))
        for (pred_path, target_path), png_path in zip(pairs, png_paths):
            rows.append(score_pair(pred_path, target_path, mask, segmentation, png_path))
            bar.advance(task)
    keys = [k for k in rows[0] if k not in ("pred", "target")]
    console.print(metrics_table(rows, keys))
    with OutputGroup() as written:
        if json_out is not None:
            written.add(save_json(rows, json_out))
        if csv is not None:
            text = (
                ",".join(["pred", "target", *keys])
                + "\n"
                + "".join(",".join([r["pred"], r["target"], *[format_metric(r[k]) for k in keys]]) + "\n" for r in rows)
            )
            written.add(save_text(text, csv))


def metrics_table(rows: list[dict], keys: list[str]):
    """Metrics as rows; one column per prediction, or mean ± sd over many."""
    import numpy as np
    from rich.table import Table

    from diffiqt.cli.common import format_metric

    table = Table(title="diffiqt evaluate")
    table.add_column("metric")
    if len(rows) <= 4:
        for row in rows:
            table.add_column(Path(row["pred"]).name, justify="right")
        for key in keys:
            table.add_row(key, *[format_metric(row[key]) for row in rows])
        return table
    table.add_column(f"mean ± sd over {len(rows)}", justify="right")
    for key in keys:
        values = [row[key] for row in rows if row[key] is not None]
        table.add_row(key, f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "n/a")
    return table
