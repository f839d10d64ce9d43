"""The bench's classical peers on the model card's cases: Colin27 (skull-stripped) x8 along each axis.

Each case is :func:`diffiqt.evaluation.heldout.held_out_case` with seed 0, as scripts/model_card.py makes it; every
peer of :mod:`diffiqt.bench.peers` and the cubic baseline (:func:`diffiqt.imaging.resample.to_isotropic`)
interpolates the same scan onto the 1 mm model grid, timed, and is scored inside the brain under the
strict and fit protocols (:mod:`diffiqt.evaluation.metrics`).

    python scripts/peers_bench.py --out runs/peers.json   (or one process per axis: --axes 2 --out ...)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from diffiqt.bench.peers import interpolate
from diffiqt.evaluation.heldout import held_out_case
from diffiqt.evaluation.metrics import fit_protocol, on_target_range, psnr
from diffiqt.imaging.resample import shared_extent, to_isotropic

AXES = {2: "axial", 0: "sagittal", 1: "coronal"}
METHODS = {
    "cubic (scipy, the bench's interpolation)": None,
    "B-spline (SimpleITK)": "sitk-bspline",
    "quintic B-spline (SimpleITK)": "sitk-bspline5",
    "Lanczos windowed sinc (SimpleITK)": "sitk-lanczos",
    "nearest neighbour (SimpleITK)": "sitk-nearest",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", default="colin27-brain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--axes", type=int, nargs="+", default=list(AXES), help="slice axes: 2 axial, 0 sagittal, 1 coronal"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for axis in args.axes:
        name = AXES[axis]
        case = held_out_case(args.brain, seed=args.seed, axis=axis)
        for label, peer in METHODS.items():
            begin = time.perf_counter()
            volume = to_isotropic(case.lf, 1.0) if peer is None else interpolate(case.lf, 1.0, peer)
            seconds = time.perf_counter() - begin
            common = shared_extent(volume.shape, case.hf.shape)
            pred, truth, brain = volume.data[common], case.hf.data[common], case.brain[common]
            strict = psnr(*on_target_range(pred, truth, brain), 1.0, brain)
            fit = fit_protocol(pred, truth, brain)
            rows.append({"axis": name, "method": label, "psnr": strict, **fit, "seconds": seconds})
            print(
                f"{name:9s} {label:45s} strict {strict:6.2f}  fit {fit['fit_psnr']:6.2f} {fit['fit_ssim']:.4f}  "
                f"{seconds:5.1f} s",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"brain": args.brain, "seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
