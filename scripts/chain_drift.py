"""Does a model's error come from the network or from the sampling chain? (docs/model-card.md)

    python scripts/chain_drift.py                          # shipped default model, held-out Colin27
    python scripts/chain_drift.py --brain mni152 --model runs/small --sampler ddim

On a central 64³ crop of a bundled brain with an x8 axial scan simulated as in training (seed 0), it prints
the prediction x̂ of one network call given the *true* image noised to level t (what training shows the
network), for t from 1 down to 0.05, and then x̂ at every step of a sampler, where the noisy input is built
from the network's own previous prediction instead. Each line: PSNR inside the scan's foreground (peak =
the truth's maximum there), contrast gain (least-squares slope of x̂ on the truth) and brightness (mean
of x̂ over mean of the truth). A network that improves as t falls but a chain that gets worse means
the chain compounds a bias of the network. Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from diffiqt.anatomy.brains import crop_sample
from diffiqt.anatomy.brains import load_bundled
from diffiqt.config import DataConfig
from diffiqt.diffusion import SAMPLERS, add_noise
from diffiqt.evaluation.heldout import central_box
from diffiqt.models.loading import load_model
from diffiqt.training.pairs import simulate_pair

NOISE_LEVELS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


def scores(x: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> str:
    a, b = x[mask].double(), truth[mask].double()
    psnr = 10 * np.log10(float(b.max()) ** 2 / float(((a - b) ** 2).mean()))
    gain = float(((a - a.mean()) * (b - b.mean())).sum() / ((b - b.mean()) ** 2).sum())
    return f"PSNR {psnr:5.2f} dB  gain {gain:.3f}  brightness {float(a.mean() / b.mean()):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--brain", default="colin27-brain")
    parser.add_argument("--sampler", default="paper", choices=sorted(SAMPLERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    denoiser = model.denoiser().eval()
    sample = load_bundled(args.brain)
    sample = crop_sample(sample, *central_box(sample.mask, 64))
    pair = simulate_pair(sample, DataConfig(lf_axis=2), np.random.default_rng(0))
    truth, cond = (torch.from_numpy(a)[None, None].float() for a in (pair.target, pair.cond))
    mask = torch.from_numpy(pair.mask)[None, None]
    print(f"{args.brain}, cubic interpolation:          {scores(cond, truth, mask)}")

    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for t in NOISE_LEVELS:
            x_hat = denoiser(cond, add_noise(truth, torch.tensor([t]), noise), t, layout="volume")
            print(f"true image noised to t = {t:.2f}:      {scores(x_hat, truth, mask)}")

        def report(i, _s, _x_s, x_hat):
            print(f"{args.sampler} sampler, step {i + 1:2d} of {args.steps}:    {scores(x_hat, truth, mask)}")

        SAMPLERS[args.sampler](denoiser, cond, args.steps, torch.Generator().manual_seed(1), report, layout="volume")


if __name__ == "__main__":
    main()
