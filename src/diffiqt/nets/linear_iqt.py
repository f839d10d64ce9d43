"""Linear IQT: a per-slice-phase linear least-squares filter (Alexander et al.'s image quality transfer in its
simplest form), a direct baseline [B, 1, D, H, W] -> [B, 1, D, H, W].

Convention: the slice axis of the thick-slice scan is the LAST axis, the input is the LF condition
cubic-resampled onto the 1 mm grid (normalised as :func:`diffiqt.preprocess.normalise` does), and the thick-slice
centres lie at last-axis positions 0, f, 2f, ... (f the integral slice step, 8 for x8). Folding the last axis
(:func:`~diffiqt.nets.crossbatch.fold_last_axis`) gives the low-field grid [B, f, D, H, W/f]; its phase-0
channel is the thick-slice sample itself (a cubic spline passes through its samples). The output voxel at
last-axis position k·f + j (phase j) is

    out[x, y, k·f + j] = b_j + Σ_{dx, dy ∈ -r..r, dk ∈ -before..after} w_j[dx, dy, dk] · lf0[x+dx, y+dy, k+dk]

with lf0 the phase-0 values (zero beyond the volume): by default a 5×5 in-plane × 4 thick-slice window
(slices k-1 .. k+2) and a bias per phase, i.e. one 3D convolution with f output channels on the folded grid,
then unfolded. The weights are fitted by ordinary least squares (normal equations in float64, tiny ridge) on
simulated training pairs (:func:`diffiqt.training.loop.fit_linear_iqt`), so the filter learns the slice interpolation and the
low-field -> high-field contrast change together. They are buffers: saved in the state dict (safetensors
checkpoints), not trained by gradient descent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor

from diffiqt.errors import ConfigError
from diffiqt.nets.baselines import DirectNet
from diffiqt.nets.crossbatch import fold_last_axis, pad_to_multiple, unfold_last_axis

RIDGE = 1e-9  # relative to the mean diagonal of XᵀX: only keeps the solve defined
ROWS_PER_CHUNK = 1 << 16  # design-matrix rows formed at once (x 101 float64 columns: ~50 MB)


class LinearIQT(DirectNet):
    """The linear IQT filter: [B, 1, D, H, W] (slice axis last, thick-slice centres at 0, f, 2f, ...) -> same.

    Buffers: ``weight`` [f, 1, 2r+1, 2r+1, before+after+1] and ``bias`` [f] (output phase j = channel j of the
    folded grid). Unfitted, it is linear interpolation between the two nearest thick slices. A last axis that
    is not a multiple of f is zero-padded at its far end and the output cropped back.
    """

    name = "linear-iqt"
    weight: Tensor  # buffers, declared so that they type as tensors, not as nn.Module attributes
    bias: Tensor
    fit_info: dict[str, Any]  # set by :meth:`fit`: what the solution was fitted on

    def __init__(self, factor: int = 8, radius: int = 2, before: int = 1, after: int = 2):
        super().__init__()
        if factor < 1 or radius < 0 or before < 0 or after < 0:
            raise ValueError(
                f"LinearIQT needs factor >= 1 and radius, before, after >= 0 "
                f"(got {factor}, {radius}, {before}, {after})"
            )
        self.factor, self.radius, self.before, self.after = int(factor), int(radius), int(before), int(after)
        self.slice_fold = self.factor
        side = 2 * self.radius + 1
        weight = torch.zeros(self.factor, 1, side, side, self.before + self.after + 1)
        for j in range(self.factor):  # linear interpolation between thick slices k and k+1
            weight[j, 0, self.radius, self.radius, self.before] = 1.0 - j / self.factor
            if self.after >= 1:
                weight[j, 0, self.radius, self.radius, self.before + 1] = j / self.factor
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(self.factor))

    @property
    def receptive_field(self) -> int:
        """A safe halo in input voxels. Output k·f+j reads input slices (k-before)·f .. (k+after)·f: at most
        (before+1)·f-1 back and after·f ahead; r in-plane."""
        return max(self.radius, (self.before + 1) * self.factor - 1, self.after * self.factor)

    @property
    def cell_shape(self) -> tuple[int, int, int]:
        """Chunks and boxes must keep the thick-slice phase: the last axis is cut on multiples of f."""
        p = self.patch_size
        return (p, p, int(np.lcm(p, self.factor)))

    @property
    def window(self) -> tuple[int, int, int]:
        """Window shape on the folded grid: (in-plane, in-plane, thick slices)."""
        side = 2 * self.radius + 1
        return (side, side, self.before + self.after + 1)

    def forward(self, x: Tensor) -> Tensor:
        padded, crop = pad_to_multiple(x[:, :1], (1, 1, self.factor))
        lf0 = fold_last_axis(padded, self.factor)[:, :1]  # [B, 1, D, H, W/f]: the thick-slice samples
        r = self.radius
        lf0 = F.pad(lf0, (self.before, self.after, r, r, r, r))
        out = F.conv3d(lf0, self.weight.to(lf0.dtype), self.bias.to(lf0.dtype))  # [B, f, D, H, W/f]
        return unfold_last_axis(out, self.factor)[crop]

    def set_solution(self, theta: np.ndarray) -> None:
        """Load a least-squares solution [window voxels + 1, f] (last row: the biases) into the buffers."""
        n = int(np.prod(self.window))
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (n + 1, self.factor):
            raise ValueError(f"solution of shape {theta.shape}, expected {(n + 1, self.factor)}")
        weight = theta[:n].T.reshape(self.factor, 1, *self.window)
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(weight))
            self.bias.copy_(torch.from_numpy(theta[n]))

    @classmethod
    def fit(
        cls,
        pairs: Iterable,
        factor: int,
        radius: int = 2,
        before: int = 1,
        after: int = 2,
        max_voxels: int | None = None,
        seed: int | list[int] = 0,
    ) -> LinearIQT:
        """Least-squares fit on ``pairs``: objects with ``cond``, ``target`` and ``mask`` arrays [X, Y, Z] (slice
        axis last, thick-slice centres at Z = 0, f, ...; e.g. :class:`diffiqt.training.pairs.Pair` turned so), or
        (cond, target, mask) tuples. See :class:`NormalEquations`."""
        net = cls(factor, radius, before, after)
        equations = NormalEquations(net.factor, net.window, net.before)
        rng = np.random.default_rng(seed)
        for pair in pairs:
            cond, target, mask = pair if isinstance(pair, tuple) else (pair.cond, pair.target, pair.mask)
            equations.add(cond, target, mask, max_voxels, rng)
        net.set_solution(equations.solve())
        net.fit_info = {"voxels": equations.rows, "pairs": equations.pairs}
        return net


def phase0_windows(cond: np.ndarray, factor: int, window: tuple[int, int, int], before: int) -> np.ndarray:
    """Windows of thick-slice (phase-0) values around every low-field voxel, a strided view (float64).

    cond [X, Y, Z] (slice axis last) -> [X, Y, ceil(Z/f), *window]: the phase-0 samples Z = 0, f, ... (padding
    Z to a multiple of f at its far end adds none), zero-padded around, as :meth:`LinearIQT.forward` does.
    """
    lf0 = np.asarray(cond)[:, :, ::factor].astype(np.float64)
    r = window[0] // 2
    lf0 = np.pad(lf0, [(r, r), (r, r), (before, window[2] - 1 - before)])
    return sliding_window_view(lf0, window)


@dataclass
class NormalEquations:
    """Running XᵀX [n+1, n+1] and XᵀY [n+1, f] of the linear IQT regression (float64).

    A row of X is one low-field voxel's phase-0 window (n values) and a 1 (the bias); its row of Y the f
    high-field voxels under it. All f phases share X, so a low-field voxel enters when any of its f voxels is
    in the mask (the head, for simulated pairs), and all f outputs are fitted on the same rows. A last group
    cut short by the volume's end is left out (its cond still serves as a neighbour).
    """

    factor: int
    window: tuple[int, int, int]
    before: int

    def __post_init__(self):
        n = int(np.prod(self.window)) + 1
        self.xtx = np.zeros((n, n))
        self.xty = np.zeros((n, self.factor))
        self.rows = 0
        self.pairs = 0

    def add(
        self,
        cond: np.ndarray,
        target: np.ndarray,
        mask: np.ndarray,
        max_voxels: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Add one pair (arrays [X, Y, Z], slice axis last); at most ``max_voxels`` random rows of it if given."""
        f = self.factor
        if not (np.shape(cond) == np.shape(target) == np.shape(mask)) or np.ndim(cond) != 3:
            raise ValueError(
                f"cond, target and mask must be 3D of one shape (got {np.shape(cond)}, "
                f"{np.shape(target)}, {np.shape(mask)})"
            )
        pad = [(0, 0), (0, 0), (0, -np.shape(cond)[2] % f)]
        windows = phase0_windows(cond, f, self.window, self.before)
        x, y, k = windows.shape[:3]
        folded_target = np.pad(np.asarray(target, dtype=np.float64), pad).reshape(x, y, k, f)
        inside = np.asarray(
            np.pad(np.asarray(mask, bool), pad).reshape(x, y, k, f).any(axis=-1)
        )  # an array, for typing
        inside[:, :, np.shape(cond)[2] // f :] = False  # a group cut by the volume's end has no full target
        rows = np.flatnonzero(inside)
        if max_voxels is not None and rows.size > max_voxels:
            rng = rng if rng is not None else np.random.default_rng(0)
            rows = np.sort(rng.choice(rows, max_voxels, replace=False))
        target_rows = folded_target.reshape(-1, f)
        for start in range(0, rows.size, ROWS_PER_CHUNK):  # gathering from the view copies only the chunk
            chunk = rows[start : start + ROWS_PER_CHUNK]
            design = np.empty((chunk.size, self.xtx.shape[0]))
            design[:, :-1] = windows[np.unravel_index(chunk, (x, y, k))].reshape(chunk.size, -1)
            design[:, -1] = 1.0
            self.xtx += design.T @ design
            self.xty += design.T @ target_rows[chunk]
        self.rows += int(rows.size)
        self.pairs += 1

    def solve(self) -> np.ndarray:
        """θ [n+1, f] minimising Σ‖Xθ - Y‖² + λ‖θ‖², λ = RIDGE · mean diag(XᵀX)."""
        if self.rows == 0:
            raise ConfigError("linear IQT: no mask voxel in the training pairs")
        ridge = RIDGE * float(np.mean(np.diag(self.xtx)))
        return np.linalg.solve(self.xtx + ridge * np.eye(self.xtx.shape[0]), self.xty)
