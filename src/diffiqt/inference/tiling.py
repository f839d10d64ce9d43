"""The two ways of evaluating a denoiser on a volume in pieces, each inside the sampler's loop.

* :class:`ChunkedDenoiser` (what ``enhance --max-voxels`` uses): cell-aligned chunks with a halo at least
  the network's receptive field, so the stitched result equals one whole-volume evaluation;
  :func:`chunk_size` picks the chunks for a memory budget.
* :class:`SlidingWindowDenoiser`: DiffusionIQT's published scheme, 96³ windows slid with a 32-voxel
  stride, each one training mini-batch (its 27 patches of 32³, ``layout="patches"``), of which only the
  central patch is kept (or, with another ``blend``, every voxel averages all windows covering it). The
  bench (:mod:`diffiqt.bench.enhancement`) measures whole-volume inference against it.

Both take ``(cond, x_t, t)`` like :class:`~diffiqt.diffusion.Denoiser`, so the samplers of
:mod:`diffiqt.diffusion` run unchanged and step-synchronously over the whole volume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffiqt.diffusion import Denoiser
from diffiqt.errors import ConfigError
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


class ChunkedDenoiser(nn.Module):
    """A denoiser evaluated in cell-aligned chunks with a halo; equal to one whole evaluation.

    The halo must be at least the network's receptive field (in voxels) so that
    every kept voxel sees all it would see in the whole volume. Chunk corners
    lie on the cell grid so the attention cells are the same cells.
    """

    def __init__(self, denoiser: Denoiser, chunk, halo: int, cell):
        super().__init__()
        self.denoiser = denoiser
        self.chunk, self.cell = np.broadcast_to(chunk, 3), np.broadcast_to(cell, 3)  # per axis
        self.halo = -(-halo // self.cell) * self.cell

    def forward(self, cond: Tensor, x_t: Tensor, t, **kw) -> Tensor:
        out = torch.empty_like(x_t)
        shape = x_t.shape[2:]
        for lower in np.ndindex(*[-(-n // c) for n, c in zip(shape, self.chunk)]):
            lo = np.array(lower) * self.chunk
            hi = np.minimum(lo + self.chunk, shape)
            read_lo, read_hi = np.maximum(lo - self.halo, 0), np.minimum(hi + self.halo, shape)
            read = (slice(None), slice(None), *[slice(a, b) for a, b in zip(read_lo, read_hi)])
            result = self.denoiser(cond[read], x_t[read], t, **kw)
            keep = (slice(None), slice(None), *[slice(a - r, b - r) for a, b, r in zip(lo, hi, read_lo)])
            out[(slice(None), slice(None), *[slice(a, b) for a, b in zip(lo, hi)])] = result[keep]
        return out


def chunk_size(box: tuple[int, ...], max_voxels: int | None, cell) -> np.ndarray | None:
    """Chunk edges per axis, multiples of ``cell`` (one number or one per axis), as near a cube as fits
    ``max_voxels``; None if the box fits whole."""
    if max_voxels is None or int(np.prod(box)) <= max_voxels:
        return None
    cell = np.broadcast_to(np.asarray(cell, dtype=np.int64), 3)
    if int(np.prod(cell)) > max_voxels:
        raise ConfigError(f"max_voxels={max_voxels} is smaller than one {'x'.join(map(str, cell))} cell")
    edge = cell.copy()
    while True:  # grow the shortest edge by one cell while the chunk still fits and is smaller than the box
        growable = [
            a for a in range(3) if edge[a] < box[a] and np.prod(edge) // edge[a] * (edge[a] + cell[a]) <= max_voxels
        ]
        if not growable:
            return edge
        axis = min(growable, key=lambda a: edge[a])
        edge[axis] += cell[axis]
