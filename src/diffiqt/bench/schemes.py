"""The authors' patch scheme, as the reference that whole-volume inference is measured against.

DiffusionIQT's published code enhances a volume by sliding 96³ windows with a 32-voxel stride over it;
each window is one training mini-batch (its 27 patches of 32³, ``layout="patches"``), and only the
window's central patch is kept. :class:`SlidingWindowDenoiser` does exactly that inside the sampler's
loop: at every step it evaluates the denoiser window by window, assembles x̂ for the whole volume and
hands it to the sampler, so the samplers of :mod:`diffiqt.diffusion` run unchanged and
step-synchronously over the whole volume. With ``blend`` other than "centre", every voxel averages the
predictions of all windows that cover it instead (27 windows wherever its cell's neighbours lie inside
the volume).

:func:`seam_measure` quantifies what such patchwork leaves behind: intensity jumps at the 32-voxel
block borders in excess of the jumps elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffiqt.diffusion import SAMPLERS
from diffiqt.nets.crossbatch import BLOCK_GRID, block_to_patches, patches_to_block

BLENDS = ("centre", "mean", "gaussian")
WINDOW_CELLS = BLOCK_GRID[0]  # a window is 3 cells (patches) along each axis: one 96³ training block


def window_weights(cell: int, blend: str) -> Tensor:
    """Weight of each voxel of a window's prediction, [1, 1, 3·cell, 3·cell, 3·cell].

    "centre": 1 on the central cell, 0 elsewhere; "mean": 1 everywhere; "gaussian": a Gaussian of the
    distance to the window's centre with sigma = one cell, so predictions made far from a window's
    centre, where that window saw less context, count less.
    """
    size = WINDOW_CELLS * cell
    if blend == "centre":
        profile = torch.zeros(size)
        profile[cell : 2 * cell] = 1.0
    elif blend == "mean":
        profile = torch.ones(size)
    elif blend == "gaussian":
        offset = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        profile = torch.exp(-0.5 * (offset / cell) ** 2)
    else:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, not {blend!r}")
    return (profile[:, None, None] * profile[None, :, None] * profile[None, None, :])[None, None]


class SlidingWindowDenoiser(nn.Module):
    """A denoiser evaluated on 96³ windows slid with a 32-voxel stride: the authors' inference scheme.

    forward(cond [S, 1, D, H, W], x_t [S, 1, D, H, W], t) -> x̂ [S, 1, D, H, W], D, H, W multiples of
    ``cell``. One window is centred on every cell; the volume is zero-padded by one cell so that border
    cells have windows too. Each window runs as one network call on its 27 patches (of all S samples:
    27·S patches). ``blend`` picks how predictions are combined (:func:`window_weights`); with "centre"
    each voxel comes from exactly one window.
    """

    weights: Tensor  # a buffer, declared so that it types as a tensor

    def __init__(self, denoiser: nn.Module, cell: int = 32, blend: str = "centre"):
        super().__init__()
        self.denoiser, self.cell = denoiser, cell
        self.register_buffer("weights", window_weights(cell, blend), persistent=False)

    def forward(self, cond: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        grid = [n // self.cell for n in x_t.shape[2:]]
        if any(n % self.cell for n in x_t.shape[2:]):
            raise ValueError(f"volume {tuple(x_t.shape[2:])} is not a multiple of the {self.cell}-voxel cell")
        inputs = [F.pad(v, (self.cell,) * 6) for v in (cond, x_t)]
        total = torch.zeros_like(inputs[1])
        weight = torch.zeros_like(inputs[1][:1])
        for centre in np.ndindex(*grid):
            where = self.window_slices(centre)
            total[where] += self.predict_windows(inputs[0], inputs[1], t, [centre])[0] * self.weights
            weight[where] += self.weights
        inside = (slice(None), slice(None), *(slice(self.cell, -self.cell),) * 3)
        return (total / weight)[inside]

    def window_slices(self, centre: tuple[int, int, int]) -> tuple[slice, ...]:
        """Index of the window centred on cell ``centre`` in the one-cell-padded volume."""
        size = WINDOW_CELLS * self.cell
        return (slice(None), slice(None), *(slice(c * self.cell, c * self.cell + size) for c in centre))

    def predict_windows(self, cond: Tensor, x_t: Tensor, t: Tensor | float, centres: list) -> Tensor:
        """x̂ of the windows centred on ``centres`` of the padded volumes: [len(centres), S, 1, 96, 96, 96]."""
        samples = x_t.shape[0]
        blocks = [torch.cat([v[self.window_slices(c)] for c in centres]) for v in (cond, x_t)]
        patches = [block_to_patches(b, self.cell) for b in blocks]
        x_hat = self.denoiser(*patches, t, layout="patches")
        return patches_to_block(x_hat, BLOCK_GRID).unflatten(0, (len(centres), samples))

    def window_count(self, shape: tuple[int, ...]) -> int:
        """How many windows one evaluation of a volume of spatial ``shape`` runs."""
        return int(np.prod([n // self.cell for n in shape]))


def sample_volume(denoiser: nn.Module, cond: Tensor, sampler: str, steps: int, samples: int, seed: int) -> Tensor:
    """``samples`` trajectories on one condition [1, 1, D, H, W] -> [S, 1, D, H, W].

    Draws the same noise as :func:`diffiqt.inference.enhance.run_sampler` for the same seed, so schemes that
    differ only in their denoiser start from, and add, identical noise.
    """
    generator = torch.Generator(device=cond.device).manual_seed(seed)
    with torch.inference_mode():
        return SAMPLERS[sampler](denoiser, cond.expand(samples, -1, -1, -1, -1), steps, generator)


def seam_measure(volume: np.ndarray, mask: np.ndarray, cell: int = 32, origin=(0, 0, 0)) -> float:
    """Mean |intensity jump| across cell borders minus the mean jump across mid-cell planes, inside ``mask``.

    volume, mask: [D, H, W]; cell corners lie at ``origin + cell·k`` (``origin`` may be negative, e.g.
    a head box reaching beyond the volume). A jump is the difference between neighbours along one axis,
    counted where both lie in the mask. Border jumps are those between voxels ``c - 1`` and ``c`` for a
    corner ``c``; the reference jumps are those half a cell further on, which share the phase of any
    structure with a period dividing ``cell / 2`` (the slices of an x8 low-field scan, every 8 voxels,
    would otherwise count as seams). About 0 without seams, positive where blocks were computed apart.
    """
    border: list[np.ndarray] = []
    reference: list[np.ndarray] = []
    for axis in range(3):
        jumps = np.abs(np.diff(volume.astype(np.float64), axis=axis))
        inside = np.delete(mask, -1, axis=axis) & np.delete(mask, 0, axis=axis)
        phase = (np.arange(volume.shape[axis] - 1) + 1 - origin[axis]) % cell
        for offset, found in ((0, border), (cell // 2, reference)):
            planes = np.flatnonzero(phase == offset)
            found.append(np.take(jumps, planes, axis=axis)[np.take(inside, planes, axis=axis)])
    border_jumps, reference_jumps = np.concatenate(border), np.concatenate(reference)
    if border_jumps.size == 0 or reference_jumps.size == 0:
        return float("nan")
    return float(border_jumps.mean() - reference_jumps.mean())
