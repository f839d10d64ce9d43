"""Multi-scan fusion measured: three orthogonal x8 scans of one brain, fused, against single scans.

For brain NAME, :func:`diffiqt.heldout.multi_scan_case` simulates an axial, a coronal and a sagittal x8
scan (seeds SEED, SEED+1, SEED+2), once still and once with the coronal scan taken after a head movement
of ``--motion DEG MM``. Each scan is enhanced by the model once (cached in ``--cache``); the rows are
then cheap: single scans, the cubic interpolations and their mean, and the fusions of
:mod:`diffiqt.fusion` (Fourier / mean, with and without registration). Scores: fit-protocol PSNR and
SSIM inside the brain (:func:`diffiqt.metrics.fit_protocol`), on the first (axial) scan's grid.

    python scripts/fusion_bench.py mni152 --cache runs/fusion-cache --out runs/fusion-mni152.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from diffiqt.enhance import EnhanceOptions, load_model, enhance
from diffiqt.fusion import FusionOptions, ScanEstimate, fuse
from diffiqt.heldout import MultiScanCase, multi_scan_case
from diffiqt.io import Volume
from diffiqt.metrics import fit_protocol
from diffiqt.resample import onto_shape, to_isotropic

AXIS_NAMES = {2: "axial", 1: "coronal", 0: "sagittal"}


def scores(prediction: np.ndarray, case: MultiScanCase) -> dict[str, float]:
    """Fit-protocol PSNR/SSIM inside the brain; the prediction shares voxel 0 with the truth's grid."""
    values = fit_protocol(onto_shape(prediction, case.case.hf.shape), case.case.hf.data, case.case.brain)
    return {k: round(float(v), 3) for k, v in values.items()}


def enhanced(scan: Volume, model, key: str, cache: Path) -> tuple[Volume, float]:
    """The model's enhancement of ``scan`` (cached by ``key``) and the seconds it took when it ran."""
    path, meta = cache / f"{key}.npy", cache / f"{key}.json"
    grid = to_isotropic(scan, model.voxel_mm)
    if path.exists():
        return grid.with_data(np.load(path)), json.loads(meta.read_text())["seconds"]
    begin = time.perf_counter()
    result = enhance(scan, model, EnhanceOptions())
    seconds = time.perf_counter() - begin
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, result.mean.data)
    meta.write_text(json.dumps({"seconds": seconds}))
    return result.mean, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brain")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--motion", type=float, nargs=2, default=(3.0, 2.0), metavar=("DEG", "MM"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = load_model(args.model)
    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for label, motion in (("still", None), ("moved", {1: tuple(args.motion)})):
        case = multi_scan_case(args.brain, axes=(2, 1, 0), seed=args.seed, motion=motion)
        estimates, cubic = [], []
        for index, scan in enumerate(case.scans):
            name = AXIS_NAMES[(2, 1, 0)[index]] + ("-moved" if index in case.motion else "")
            volume, seconds[name] = enhanced(scan, model, f"{args.brain}-{args.seed}-{name}", args.cache)
            estimates.append(ScanEstimate(scan, volume))
            cubic.append(ScanEstimate(scan, to_isotropic(scan, model.voxel_mm)))
            if label == "still":
                rows[f"single {name}, enhanced"] = scores(volume.data, case)
                rows[f"single {name}, cubic"] = scores(cubic[-1].mean.data, case)
        shape = case.case.hf.shape
        rows[f"{label}: mean of the 3 cubic (no match, no registration)"] = scores(
            np.mean([onto_shape(c.mean.data, shape) for c in cubic], axis=0), case)
        for method in ("mean", "fourier"):
            for register in (False, True):
                begin = time.perf_counter()
                for what, inputs in (("enhanced", estimates), ("cubic", cubic)):
                    if what == "cubic" and register:
                        continue  # the classical peer: interpolations fused as they lie
                    result = fuse(inputs, FusionOptions(method=method, register=register))
                    key = f"{label}: {what}, {method}" + (", registered" if register else "")
                    rows[key] = {**scores(result.mean.data, case), "seconds": round(time.perf_counter() - begin, 1)}
                    if register:
                        rows[key]["transforms"] = result.info["world_transforms"]
                print(json.dumps({key: {k: v for k, v in rows[key].items() if k != "transforms"}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"brain": args.brain, "seed": args.seed, "motion": args.motion,
                                    "model": model.description, "enhance_seconds": seconds, "rows": rows}, indent=2))
    for key, value in rows.items():
        print(f"{key:60s} {value['fit_psnr']:7.2f} {value['fit_ssim']:.4f}")


if __name__ == "__main__":
    main()
