"""Choose how a model samples (steps, samples) on its *training* brains, never on the held-out one.

    python scripts/sampler_choice.py --model runs/ship3 --brains mni152 runs/brains/pycortex-s1.nii.gz

A diffusion sample is one draw from the model's posterior: even a perfect model's draw has twice the
squared error of the posterior mean, so PSNR favours few steps or the mean of several samples unless
the model is far better than its input. Which setting wins for a given model is measured here, on the
central 96³ cube of each brain with an axial x8 scan (seed 0), scored like the model card (strict
protocol inside the brain). The model card then reports the held-out brain for the chosen setting
(and the others), so the choice is not tuned on the figures it reports. Not a test.
"""

from __future__ import annotations

import argparse

import torch

from diffiqt.evaluation.heldout import held_out_case, run_held_out
from diffiqt.inference.enhance import EnhanceOptions
from diffiqt.models.loading import load_model

SETTINGS = [(1, 1), (20, 1)]  # (sampling steps, samples averaged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--brains", nargs="+", default=["mni152"])
    parser.add_argument("--region", type=int, default=96)
    args = parser.parse_args()
    model = load_model(args.model)
    print(f"{model.description} · torch threads {torch.get_num_threads()}\n")
    print("| brain | steps | samples | PSNR dB cubic → enhanced (Δ) | SSIM cubic → enhanced (Δ) | s |")
    print("|---|---:|---:|---|---|---:|")
    for brain in args.brains:
        case = held_out_case(brain, region=args.region)
        for steps, samples in SETTINGS:
            result = run_held_out(case, model, EnhanceOptions(steps=steps, samples=samples))
            cubic, ours = result.scores["cubic"], result.scores["enhanced"]
            print(
                f"| {brain} | {steps} | {samples} | {cubic['psnr']:.2f} → {ours['psnr']:.2f} "
                f"({ours['psnr'] - cubic['psnr']:+.2f}) | {cubic['ssim']:.3f} → {ours['ssim']:.3f} "
                f"({ours['ssim'] - cubic['ssim']:+.3f}) | {result.seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
