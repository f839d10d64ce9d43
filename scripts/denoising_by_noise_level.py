"""How well a model denoises at each noise level t, on a block of a *training* brain (never Colin27).

    python scripts/denoising_by_noise_level.py --model default

The block (80x80x128 voxels of MNI152, x8 axial, simulator seed 0) is noised to level t from the true
image, and the mean squared error of the model's prediction x̂ is set beside that of the Denoiser's skip
alone (the network's output F = 0) and of the condition (cubic interpolation). A trained denoiser's
error falls as t falls, since x_t then carries more of the truth; where it does not, a sampling chain
ends with the noise its steps added (docs/model-card.md). Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from diffiqt.anatomy.brains import mni152
from diffiqt.diffusion import add_noise, alpha_sigma, residual_preconditioning
from diffiqt.imaging.resample import to_isotropic
from diffiqt.models.loading import load_model
from diffiqt.preprocess import lf_scale, normalise
from diffiqt.simulation import LowFieldParams, simulate_low_field

BLOCK = (slice(50, 130), slice(70, 150), slice(8, 136))  # inside the head, aligned to the thick slices
TIMES = (1.0, 0.6, 0.3, 0.1, 0.03)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    model = load_model(args.model)
    brain = mni152()
    assert brain.tissues is not None  # the bundled template ships its tissue maps
    lf = simulate_low_field(
        brain.t1, brain.tissues, LowFieldParams.for_factor(8, 1.0, axis=2), np.random.default_rng(0)
    ).lf
    cond_volume = to_isotropic(lf, model.voxel_mm).data
    scale = lf_scale(cond_volume)
    cond = torch.from_numpy(normalise(cond_volume[BLOCK], scale).astype(np.float32))[None, None]
    truth = torch.from_numpy(normalise(brain.t1.data[BLOCK], scale).astype(np.float32))[None, None]
    denoiser = model.denoiser().eval()
    generator = torch.Generator().manual_seed(0)
    print(f"{model.description}\n\n| t | network x̂ | skip only (F = 0) | condition |\n|---:|---:|---:|---:|")
    with torch.inference_mode():
        for t in TIMES:
            time = torch.tensor([t])
            x_t = add_noise(truth, time, torch.randn(truth.shape, generator=generator))
            c_skip = residual_preconditioning(time, denoiser.residual_sigma)[0] if denoiser.residual_sigma else 0.0
            skip = cond + c_skip * (x_t / alpha_sigma(time)[0] - cond)
            errors = [float(((x - truth) ** 2).mean()) for x in (denoiser(cond, x_t, time), skip, cond)]
            print(f"| {t} | " + " | ".join(f"{e:.4f}" for e in errors) + " |", flush=True)


if __name__ == "__main__":
    main()
