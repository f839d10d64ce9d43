"""The cross-batch mechanism: patch/block rearrangements and neighbourhood linear attention.

A training mini-batch is the 3×3×3 grid of adjacent, non-overlapping 32³ patches of one 96³ block.
The networks never compute on patches one by one: they reassemble the block once
(:func:`patches_to_block`), run on it as a single tensor and cut the result back
(:func:`block_to_patches`). Convolutions on the block see the neighbouring patches' real values
at every patch border, which is exactly the paper's cross-batch padding, and zeros only at the
block's outer border.

Patch order (used everywhere in diffiqt): C order with the last spatial axis fastest. Patch ``n`` of
block ``b`` sits at grid position ``(i, j, k)`` with ``n = ((b * gD + i) * gH + j) * gW + k``; its voxels
are ``block[b, :, i*p:(i+1)*p, j*p:(j+1)*p, k*p:(k+1)*p]``.

Attention uses a grid of *cells*: one cell is the footprint of one patch at the current
resolution. :func:`neighbourhood_linear_attention` lets the queries of a cell attend to the keys and
values of its 3×3×3 neighbourhood of cells, so it gives the same result on a 27-patch block, a whole
brain or any grid-aligned chunk of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_GRID = (3, 3, 3)  # patches per block along D, H, W (the paper's mini-batch of 27)


def block_to_patches(block: Tensor, patch_size: int) -> Tensor:
    """Cut blocks into patches. [Nb, C, gD*p, gH*p, gW*p] -> [Nb*gD*gH*gW, C, p, p, p], in the module's patch order."""
    nb, channels, depth, height, width = block.shape
    p = patch_size
    if depth % p or height % p or width % p:
        raise ValueError(f"block shape {tuple(block.shape[2:])} is not a multiple of the patch size {p}")
    grid = (depth // p, height // p, width // p)
    patches = block.reshape(nb, channels, grid[0], p, grid[1], p, grid[2], p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return patches.reshape(-1, channels, p, p, p)


def patches_to_block(patches: Tensor, grid: tuple[int, int, int] = BLOCK_GRID) -> Tensor:
    """Reassemble patches into blocks. [Nb*gD*gH*gW, C, p, p, p] -> [Nb, C, gD*p, gH*p, gW*p]."""
    n, channels, p = patches.shape[0], patches.shape[1], patches.shape[2]
    per_block = grid[0] * grid[1] * grid[2]
    if n % per_block or patches.shape[2:] != (p, p, p):
        raise ValueError(f"{tuple(patches.shape)} is not a batch of cubic patches in groups of {per_block}")
    block = patches.reshape(n // per_block, *grid, channels, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return block.reshape(n // per_block, channels, grid[0] * p, grid[1] * p, grid[2] * p)


def pad_to_multiple(volume: Tensor, multiple: int | tuple[int, int, int]) -> tuple[Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of [B, C, D, H, W] at their far end up to a multiple of ``multiple`` (per axis
    if a triple).

    Returns the padded tensor and the index that crops a network output back: ``out[crop]``.
    Padding only at the far end keeps the patch grid anchored at voxel 0, so chunks of a volume cut at
    multiples of the patch size see the same grid. Zeros match the background of normalised MR images
    and the zeros every convolution already sees beyond the volume.
    """
    spatial = volume.shape[2:]
    crop = (slice(None), slice(None), *(slice(0, n) for n in spatial))
    multiples = (multiple,) * 3 if isinstance(multiple, int) else multiple
    extra = [-n % m for n, m in zip(spatial, multiples)]
    if not any(extra):
        return volume, crop
    return F.pad(volume, (0, extra[2], 0, extra[1], 0, extra[0])), crop


def _to_cells(tokens: Tensor, per_axis: int) -> Tensor:
    """[B, C, nD·a, nH·a, nW·a] -> [B, C, nD·nH·nW, a³] (a = ``per_axis`` tokens): each cell's tokens side by side."""
    b, c, d, h, w = tokens.shape
    a = per_axis
    x = tokens.reshape(b, c, d // a, a, h // a, a, w // a, a).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return x.reshape(b, c, -1, a**3)


def _from_cells(cells: Tensor, grid: tuple[int, int, int], per_axis: int) -> Tensor:
    """Inverse of :func:`_to_cells`: [B, C, nD·nH·nW, a³] -> [B, C, nD·a, nH·a, nW·a]."""
    b, c = cells.shape[:2]
    a = per_axis
    x = cells.reshape(b, c, *grid, a, a, a).permute(0, 1, 2, 5, 3, 6, 4, 7)
    return x.reshape(b, c, grid[0] * a, grid[1] * a, grid[2] * a)


def _sum_over_neighbourhood(sums: Tensor, log_shift: Tensor) -> Tensor:
    """Add up per-cell exponential sums over each cell's 3×3×3 neighbourhood (zero beyond the border).

    ``sums`` [B, K, J, nD, nH, nW] hold Σ exp(k - log_shift) · (…) per cell and key channel K;
    ``log_shift`` [B, K, nD, nH, nW] is the per-cell max used for them. Every neighbour is rescaled to the
    neighbourhood's max (log-sum-exp), so nothing overflows or underflows and, the reference being the
    neighbourhood's, the result does not depend on how the volume was cut. The 3×3×3 sum is done as
    three sums of 3 along one axis each, rescaling to the running max each time; the factors
    exp(m_c − M₁)·exp(M₁ − M₂)·exp(M₂ − M₃) telescope to exactly exp(m_c − M₃).
    """
    for axis in range(3):
        sums, log_shift = _sum_along_axis(sums, log_shift, axis)
    return sums


def _sum_along_axis(sums: Tensor, log_shift: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """One axis of :func:`_sum_over_neighbourhood`: sums over the cells at offsets −1, 0, +1 and their max shift."""
    pad = [0, 0] * (2 - axis) + [1, 1]  # F.pad lists the last axis first
    shifts = F.pad(log_shift, pad, value=float("-inf")).unfold(2 + axis, 3, 1)  # [B, K, nD, nH, nW, 3]
    reference = shifts.amax(dim=-1)
    weights = torch.exp(shifts - reference.unsqueeze(-1)).unsqueeze(2)
    windows = F.pad(sums, pad).unfold(3 + axis, 3, 1)  # a view: [B, K, J, nD, nH, nW, 3]
    return (weights * windows).sum(dim=-1), reference


def neighbourhood_linear_attention(
    query: Tensor, key: Tensor, value: Tensor, heads: int, tokens_per_axis: int
) -> Tensor:
    """Efficient attention (Shen et al. 2021) with keys and values from each cell's 3×3×3 neighbourhood.

    query, key, value: token grids [B, E, nD·a, nH·a, nW·a], a = ``tokens_per_axis`` tokens per cell and
    axis. Queries are soft-maxed over the channels of their head, keys over the tokens of the
    neighbourhood. The context Kᵀ·V is formed first, per cell, and a neighbourhood's context is the sum
    of its cells' (with the softmax normaliser carried along as an extra value channel). Returns [B, E, …].
    """
    b, embed = query.shape[:2]
    a = tokens_per_axis
    depth, height, width = query.shape[2:]
    grid = (depth // a, height // a, width // a)
    head_dim = embed // heads
    q = _to_cells(query, a).reshape(b, heads, head_dim, -1, a**3).softmax(dim=2)
    k = _to_cells(key, a).reshape(b, heads, head_dim, -1, a**3)
    v = _to_cells(value, a).reshape(b, heads, head_dim, -1, a**3)
    # Appending a row of ones to V makes the context's last column the softmax normaliser Σ exp(k).
    v = torch.cat([v, torch.ones_like(v[:, :, :1])], dim=2)
    # The per-cell max only keeps exp() finite; it is a constant for the gradient (softmax is shift-invariant).
    cell_max = k.detach().amax(dim=-1)  # [B, h, d, cells]
    weights = torch.exp(k - cell_max.unsqueeze(-1))
    cell_context = torch.einsum("bhkct,bhjct->bhkjc", weights, v)  # [B, h, d, d+1, cells]
    context = _sum_over_neighbourhood(
        cell_context.reshape(b, embed, head_dim + 1, *grid), cell_max.reshape(b, embed, *grid)
    ).reshape(b, heads, head_dim, head_dim + 1, -1)
    context = context[:, :, :, :-1] / context[:, :, :, -1:]
    out = torch.einsum("bhkct,bhkjc->bhjct", q, context)
    return _from_cells(out.reshape(b, embed, -1, a**3), grid, a)


def fold_last_axis(x: Tensor, factor: int) -> Tensor:
    """Space-to-channels along the last axis: [B, C, D, H, W] -> [B, C·f, D, H, W/f]; channel c·f + j holds the
    voxels at W positions j (mod f). With f the slice step of a thick-slice scan on a 1 mm grid, the f thin
    slices under one thick slice become channels of one voxel (the low-field grid)."""
    b, c, d, h, w = x.shape
    if w % factor:
        raise ValueError(f"the last axis ({w}) is not a multiple of the fold {factor}")
    return (
        x.reshape(b, c, d, h, w // factor, factor).permute(0, 1, 5, 2, 3, 4).reshape(b, c * factor, d, h, w // factor)
    )


def unfold_last_axis(x: Tensor, factor: int) -> Tensor:
    """Inverse of :func:`fold_last_axis`: [B, C·f, D, H, W] -> [B, C, D, H, W·f]."""
    b, cf, d, h, w = x.shape
    return (
        x.reshape(b, cf // factor, factor, d, h, w).permute(0, 1, 3, 4, 5, 2).reshape(b, cf // factor, d, h, w * factor)
    )


def halo_of_path(steps: list[int | str]) -> int:
    """How far (voxels per axis) a network's output can depend on its input, from its longest path.

    ``steps`` lists the path from input to output: an int is a layer reaching that many voxels of its
    own level (a 3³ conv: 1), ``"down"``/``"up"`` a ×2 resolution change. The walk goes backwards from an
    output voxel, tracking the dependence radius in voxels of the current level.
    """
    radius = 0
    for step in reversed(steps):
        if isinstance(step, int):
            radius += step
        elif step == "down":  # a coarse voxel was made of the 2 finer voxels at 2X, 2X+1
            radius = 2 * radius + 1
        elif step == "up":  # fine voxels x-r … x+r came from coarse voxels (x-r)//2 … (x+r)//2
            radius = -(-radius // 2)
        else:
            raise ValueError(f"unknown path step {step!r}; give an int, 'down' or 'up'")
    return radius
