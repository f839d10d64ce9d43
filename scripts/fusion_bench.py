"""Multi-scan fusion measured: three orthogonal x8 scans of one brain, fused, against single scans.

For brain NAME, :func:`diffiqt.evaluation.heldout.multi_scan_case` simulates an axial, a coronal and a sagittal x8
scan (seeds SEED, SEED+1, SEED+2): ``--block still``, or ``--block moved`` with the coronal scan taken
after a head movement of ``--motion DEG MM``. Each scan is enhanced by the model once (cached in
``--cache``). Rows: single scans (enhanced and cubic), the mean of the three cubic interpolations,
and the fusions of :mod:`diffiqt.inference.fusion` (:data:`VARIANTS`). Score: fit-protocol PSNR inside the brain,
on the first (axial) scan's grid, which shares voxel 0 with the truth.

    python scripts/fusion_bench.py mni152 --block still --cache runs/fusion-cache --out runs/fusion-mni152-still.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from diffiqt.evaluation.heldout import MultiScanCase, multi_scan_case
from diffiqt.evaluation.metrics import on_target_range, psnr
from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import isotropic_grid, onto_shape, to_isotropic
from diffiqt.inference.enhance import EnhanceOptions, enhance
from diffiqt.inference.fusion import FusionOptions, ScanEstimate, fuse
from diffiqt.models.loading import load_model
from diffiqt.preprocess import affine_fit

AXIS_NAMES = {2: "axial", 1: "coronal", 0: "sagittal"}


def scores(prediction: np.ndarray, case: MultiScanCase) -> dict[str, float]:
    """Fit-protocol PSNR inside the brain (:func:`diffiqt.evaluation.metrics.fit_protocol` without its SSIM, which
    costs minutes on a busy machine); the prediction shares voxel 0 with the truth's grid."""
    truth, brain = case.case.hf.data, case.case.brain
    pred = onto_shape(prediction, truth.shape).astype(np.float64)
    gain, offset = affine_fit(pred, truth, brain)
    return {"fit_psnr": round(psnr(*on_target_range(gain * pred + offset, truth, brain), 1.0, brain), 3)}


def enhanced(scan: Volume, model, key: str, cache: Path) -> tuple[Volume, float]:
    """The model's enhancement of ``scan`` (cached by ``key``) and the seconds it took when it ran."""
    path, meta = cache / f"{key}.npy", cache / f"{key}.json"
    if path.exists():
        return Volume(np.load(path), isotropic_grid(scan, model.voxel_mm)[0]), json.loads(meta.read_text())["seconds"]
    begin = time.perf_counter()
    result = enhance(scan, model, EnhanceOptions())
    seconds = time.perf_counter() - begin
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, result.mean.data)
    meta.write_text(json.dumps({"seconds": seconds}))
    return result.mean, seconds


# (what is fused, method, register) per block; the cubic rows are the classical peers of the fusion.
VARIANTS = {
    "still": [
        ("enhanced", "mean", False),
        ("enhanced", "fourier", False),
        ("enhanced", "fourier", True),
        ("cubic", "fourier", False),
    ],
    "moved": [("enhanced", "mean", True), ("enhanced", "fourier", False), ("enhanced", "fourier", True)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brain")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--motion", type=float, nargs=2, default=(3.0, 2.0), metavar=("DEG", "MM"))
    parser.add_argument("--block", choices=list(VARIANTS), required=True, help="still scans, or the coronal one moved")
    parser.add_argument("--model", default="default")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = load_model(args.model)
    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    motion = {1: tuple(args.motion)} if args.block == "moved" else None
    case = multi_scan_case(args.brain, axes=(2, 1, 0), seed=args.seed, motion=motion)
    estimates, cubic = [], []
    for index, scan in enumerate(case.scans):
        name = AXIS_NAMES[(2, 1, 0)[index]] + ("-moved" if index in case.motion else "")
        volume, seconds[name] = enhanced(scan, model, f"{args.brain}-{args.seed}-{name}", args.cache)
        estimates.append(ScanEstimate(scan, volume))
        cubic.append(ScanEstimate(scan, to_isotropic(scan, model.voxel_mm)))
        if args.block == "still":
            rows[f"single {name}, enhanced"] = scores(volume.data, case)
            rows[f"single {name}, cubic"] = scores(cubic[-1].mean.data, case)
            print(json.dumps({name: [rows[f"single {name}, enhanced"], rows[f"single {name}, cubic"]]}), flush=True)
    rows["mean of the 3 cubic (no match, no registration)"] = scores(
        np.mean([onto_shape(c.mean.data, case.case.hf.shape) for c in cubic], axis=0), case
    )
    for what, method, register in VARIANTS[args.block]:
        begin = time.perf_counter()
        result = fuse(estimates if what == "enhanced" else cubic, FusionOptions(method=method, register=register))
        key = f"{what}, {method}" + (", registered" if register else "")
        rows[key] = {
            **scores(result.mean.data, case),
            "seconds": round(time.perf_counter() - begin, 1),
            "gain_offset": result.info["intensity_gain_offset"],
        }
        if register:
            rows[key]["transforms"] = result.info["world_transforms"]
        print(json.dumps({key: {k: v for k, v in rows[key].items() if k != "transforms"}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "brain": args.brain,
                "seed": args.seed,
                "block": args.block,
                "motion": motion,
                "model": model.description,
                "enhance_seconds": seconds,
                "rows": rows,
            },
            indent=2,
        )
    )
    for key, value in rows.items():
        print(f"{key:60s} {value['fit_psnr']:7.2f}")


if __name__ == "__main__":
    main()
