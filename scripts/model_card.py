"""Measure a model on the held-out Colin27 brain for its model card (docs/model-card.md).

    python scripts/model_card.py                         # the shipped default model, every case below
    python scripts/model_card.py --model runs/small --steps 2 --quick    # a plumbing check

Each case simulates an x8 scan of Colin27 (never used in training) with a fixed seed, enhances it
(the model's own sampling steps unless --steps, paper sampler) and scores it against the truth next to cubic interpolation of the same scan
(:mod:`diffiqt.heldout`). Prints a Markdown table with the machine, date and load average, writes the
scores as JSON and the montages of the two whole-volume cases as PNG. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from pathlib import Path

import torch

from diffiqt.bench.measure import cpu_name, load_average
from diffiqt.cli.demo import demo_montage
from diffiqt.enhance import EnhanceOptions, load_model
from diffiqt.heldout import held_out_case, run_held_out

AXES = {0: "sagittal", 1: "coronal", 2: "axial"}
# (brain, slice axis, slab in mm or None for the whole volume, samples, montage file name or None)
CASES = [
    ("colin27-brain", 2, None, 1, "model_card_brain.png"),
    ("colin27", 2, None, 1, "model_card_head.png"),
    ("colin27-brain", 0, 48.0, 1, None),
    ("colin27-brain", 1, 48.0, 1, None),
    ("colin27-brain", 2, 48.0, 4, None),
]
QUICK = [("colin27-brain", 2, 32.0, 2, "model_card_quick.png")]


def row(brain: str, axis: int, slab_mm, samples: int, seconds: float, scores: dict) -> str:
    cubic, ours = scores["cubic"], scores["enhanced"]
    where = "whole volume" if slab_mm is None else f"central {slab_mm:g} mm slab"
    scalp = (f"{cubic['outside_brain_mae_pct']:.2f} → {ours['outside_brain_mae_pct']:.2f}"
             if "outside_brain_mae_pct" in ours else "–")
    rho = f"{ours['uncertainty_error_spearman']:.2f}" if "uncertainty_error_spearman" in ours else "–"
    return (f"| {brain} | {AXES[axis]} | {where} | {samples} | {cubic['psnr']:.2f} → {ours['psnr']:.2f} "
            f"({ours['psnr'] - cubic['psnr']:+.2f}) | {cubic['ssim']:.3f} → {ours['ssim']:.3f} | "
            f"{cubic['seg_miou']:.3f} → {ours['seg_miou']:.3f} | {scalp} | {rho} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one thin slab only (plumbing check)")
    parser.add_argument("--cases", type=int, nargs="+", help="indices into CASES to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("model_card_results"), help="JSON and PNG go here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    steps = args.steps or model.steps
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{model.description} · {steps} steps · git {revision or 'unknown'} · {datetime.date.today().isoformat()} · {cpu_name()} · "
          f"torch threads {torch.get_num_threads()} · load average at start {load_average()}\n")
    print("| brain | slices | region | samples | PSNR dB cubic → enhanced (Δ) | SSIM cubic → enhanced | "
          "tissue mIoU | scalp MAE % | ρ(sd, error) | enhance s |")
    print("|---|---|---|---:|---|---|---|---|---:|---:|")
    results = []
    cases = QUICK if args.quick else [CASES[i] for i in args.cases] if args.cases else CASES
    for brain, axis, slab_mm, samples, picture in cases:
        case = held_out_case(brain, seed=args.seed, axis=axis, slab_mm=slab_mm)
        result = run_held_out(case, model, EnhanceOptions(steps=steps, samples=samples, seed=args.seed))
        print(row(brain, axis, slab_mm, samples, result.seconds, result.scores), flush=True)
        results.append({"brain": brain, "axis": axis, "slab_mm": slab_mm, "samples": samples,
                        "seconds": result.seconds, "scores": result.scores})
        if picture:
            demo_montage(case, result, args.out / picture)
    (args.out / "model_card.json").write_text(json.dumps(results, indent=1))
    print(f"\nload average at the end {load_average()}")


if __name__ == "__main__":
    main()
