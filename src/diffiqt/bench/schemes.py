"""Tools that compare inference schemes: one sampling loop for any denoiser, and a measure of seams.

The schemes themselves are tilers of :mod:`diffiqt.inference.tiling` (the authors' sliding windows,
:class:`~diffiqt.inference.tiling.SlidingWindowDenoiser`) or the whole head box as one tensor
(:func:`diffiqt.inference.enhance.enhance`). :func:`sample_volume` runs any of them with the noise that
enhancement draws; :func:`seam_measure` quantifies what patchwork leaves behind: intensity jumps at the
32-voxel block borders in excess of the jumps elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from diffiqt.diffusion import SAMPLERS


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
