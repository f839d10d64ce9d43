"""Baselines of the paper's Table 1 that map the LF volume straight to the HF estimate.

All take [B, 1, D, H, W] (the LF condition, already resampled cubically onto the HF grid) and return
[B, 1, D, H, W]; none uses a diffusion time. Sizes that do not fit their downsampling are zero-padded at
the far end and cropped back. The exact layers of Lin et al. (2023) are not published with the paper;
these are standard 3D U-Net / ResU-Net designs whose widths reproduce the paper's parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffiqt.nets.base import Network
from diffiqt.nets.blocks import PointwiseConv, start_at_zero
from diffiqt.nets.crossbatch import halo_of_path, pad_to_multiple


class DirectNet(Network):
    """The :class:`~diffiqt.nets.base.Network` attributes shared by the baselines: no time input, one input
    channel, no cross-batch, 32³ cells on the isotropic grid."""

    name = "baseline"
    needs_time = False
    in_channels = 1
    cross_batch = False
    patch_size = 32
    slice_fold = 1


class Interpolation(DirectNet):
    """The interpolation baseline: returns the condition unchanged. [B, 1, D, H, W] -> same.

    The LF volume reaches the networks already resampled cubically onto the HF grid, so the
    cubic-interpolation baseline is the identity here. It has no parameters and needs no training.
    """

    name = "interpolation"
    receptive_field = 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :1]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3³ conv-BatchNorm-ReLU layers: [B, Cin, …] -> [B, Cout, …]."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class _ResidualBlock(nn.Module):
    """Two 3³ conv-BatchNorm layers plus a 1×1 projected shortcut, then ReLU: [B, Cin, …] -> [B, Cout, …]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = _conv_block(in_channels, out_channels)[:-1]  # the ReLU comes after the sum
        projection = PointwiseConv(in_channels, out_channels, bias=False)
        self.shortcut = nn.Sequential(projection, nn.BatchNorm3d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class UNet3d(DirectNet):
    """3D U-Net (``residual=False``) or ResU-Net (``residual=True``): [B, 1, D, H, W] -> [B, 1, D, H, W].

    Levels of two 3³ convs (or a residual block) with BatchNorm and ReLU, 2³ max-pooling down,
    2³ transposed convolutions up, skip concatenation, a 1×1 conv head. ``condition_skip``: the output
    is added to the input, as in :class:`~diffiqt.nets.diffiqt.DiffusionIQTNet`.
    """

    name = "unet"

    def __init__(
        self, widths: Sequence[int] = (64, 128, 256, 512), residual: bool = False, condition_skip: bool = False
    ):
        super().__init__()
        block = _ResidualBlock if residual else _conv_block
        self.widths = list(widths)
        self.encoder = nn.ModuleList(block(a, b) for a, b in zip([1, *widths[:-1]], widths))
        self.up = nn.ModuleList(nn.ConvTranspose3d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.decoder = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.head = PointwiseConv(widths[0], 1)
        self.pool = nn.MaxPool3d(2)
        self.condition_skip = condition_skip
        if condition_skip:
            start_at_zero(self.head)

    def forward(self, x: Tensor) -> Tensor:
        padded, crop = pad_to_multiple(x, 2 ** (len(self.widths) - 1))
        h = padded.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for level, encoder in enumerate(self.encoder):
            h = encoder(self.pool(h) if level else h)
            skips.append(h)
        for level in reversed(range(len(self.decoder))):
            h = self.decoder[level](torch.cat([self.up[level](h), skips[level]], dim=1))
        out = self.head(h)[crop]
        return out + x if self.condition_skip else out

    @property
    def receptive_field(self) -> int:
        """A safe halo in input voxels (see :func:`diffiqt.nets.crossbatch.halo_of_path`)."""
        levels = len(self.widths)
        down = [2] + [s for _ in range(levels - 1) for s in ("down", 2)]
        return halo_of_path(down + [s for _ in range(levels - 1) for s in ("up", 2)])
