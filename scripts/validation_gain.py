"""Score models on a validation brain (never a test brain): gain over cubic interpolation, one line per case.

    python scripts/validation_gain.py --brain runs/brains-synth-val/synthseg-20.nii.gz \
        --models t1w-x8-lowfield-cpu-v8 t1w-x8-lowfield-cpu-v7

This is where recipe and checkpoint choices are made: on a brain kept out of training, with the cases of
the model card (x8 along each axis, and 5 mm slices) and its metric protocols, so that the held-out
Colin27 figures are looked at only once a model is fixed. ``diffiqt train`` refuses test brains as
sources; this script refuses them as validation brains for the same reason. Not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffiqt.anatomy.brains import held_out_identity
from diffiqt.evaluation.heldout import held_out_case, run_held_out
from diffiqt.inference.enhance import EnhanceOptions
from diffiqt.models.loading import load_model

AXES = {0: "sagittal", 1: "coronal", 2: "axial"}
# (slice axis, (thickness, gap) in mm or None for x8 at the paper's 3:1 ratio)
CASES = [(2, None), (0, None), (1, None), (2, (4.0, 1.0))]
KEYS = ("psnr", "fit_psnr", "fit_ssim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", required=True, help="a validation brain with tissue maps beside it")
    parser.add_argument("--models", nargs="+", required=True, help="model names or run folders")
    parser.add_argument("--steps", type=int, help="sampling steps (default: each model's own)")
    parser.add_argument("--sampler", help="sampler (default: each model's own)")
    parser.add_argument("--samples", type=int, default=1, help="samples averaged; > 1 also gives rho(sd, error)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, nargs="+", help="indices into CASES (default: all)")
    parser.add_argument("--inplane", type=float, help="in-plane voxel of every scan in mm (default: the brain's own)")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()
    held_out_identity().check(args.brain)  # the test brains never choose a model
    torch.manual_seed(args.seed)
    chosen = [CASES[i] for i in args.cases] if args.cases else CASES
    cases = [
        held_out_case(args.brain, seed=args.seed, axis=axis, slices_mm=slices, inplane_mm=args.inplane)
        for axis, slices in chosen
    ]
    results = {}
    print("| model | slices | " + " | ".join(f"{k} (Δ cubic)" for k in KEYS) + " |")
    print("|---|---|" + "---:|" * len(KEYS))
    for spec in args.models:
        model = load_model(spec)
        for (axis, slices), case in zip(chosen, cases):
            steps = args.steps or model.steps
            result = run_held_out(
                case, model, EnhanceOptions(steps=steps, sampler=args.sampler, samples=args.samples, seed=args.seed)
            )
            cubic, enhanced = result.scores["cubic"], result.scores["enhanced"]
            name = f"{AXES[axis]} {'x8' if slices is None else f'{slices[0]:g}+{slices[1]:g} mm'}"
            if args.inplane:
                name += f", {args.inplane:g} mm in-plane"
            cells = [f"{enhanced[k]:.3f} ({enhanced[k] - cubic[k]:+.3f})" for k in KEYS]  # type: ignore[operator]
            if "uncertainty_error_spearman" in enhanced:
                cells.append(f"rho(sd, error) {enhanced['uncertainty_error_spearman']:.2f}")
            print(f"| {spec} | {name} | " + " | ".join(cells) + " |", flush=True)
            results[f"{spec} {name}"] = result.scores
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
