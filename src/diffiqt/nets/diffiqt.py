"""The DiffusionIQT network (paper §2.2, Appendix A.1): x̂ = net([LF, x_t], logsnr).

Encoder: per level a cross-batch transformer block (fused with a skip) and time-conditioned ResNet
blocks; channel-shuffle downsampling between levels. Bottleneck: the deep-feature module. Decoder:
channel-shuffle upsampling, concatenation with the encoder's features, ResNet blocks; no attention.
No diffusion logic lives here: the caller supplies the log-SNR and reads x̂.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffiqt.nets.base import Network
from diffiqt.nets.blocks import (
    ChannelNorm,
    ChannelShuffleDown,
    ChannelShuffleUp,
    DeepFeatureModule,
    InputConv,
    LogSNREmbedding,
    Mish,
    PointwiseConv,
    ResBlock,
    start_at_zero,
    TransformerBlock,
)
from diffiqt.nets.crossbatch import (
    BLOCK_GRID,
    block_to_patches,
    fold_last_axis,
    halo_of_path,
    pad_to_multiple,
    patches_to_block,
    unfold_last_axis,
)


class EncoderLevel(nn.Module):
    """Optional transformer block, then ResNet blocks: [B, C, D, H, W], time [B, T] -> same."""

    def __init__(self, channels: int, blocks: int, time_dim: int, attention: TransformerBlock | None):
        super().__init__()
        self.attention = attention
        self.blocks = nn.ModuleList(ResBlock(channels, channels, time_dim) for _ in range(blocks))

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        if self.attention is not None:
            x = self.attention(x)
        for block in self.blocks:
            x = block(x, time)
        return x


class DecoderLevel(nn.Module):
    """ResNet blocks on [features, skip]: [B, Cin, D, H, W], time [B, T] -> [B, C, D, H, W]."""

    def __init__(self, in_channels: int, channels: int, blocks: int, time_dim: int):
        super().__init__()
        widths = [in_channels] + [channels] * blocks
        self.blocks = nn.ModuleList(ResBlock(i, o, time_dim) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, time)
        return x


class DiffusionIQTNet(Network):
    """Predicts the clean image from [LF condition, noisy image] and the log-SNR.

    forward(x [B, 2, D, H, W], logsnr [B], layout="volume") -> x̂ [B, 1, D, H, W]

    layout="volume": any D, H, W; the volume is zero-padded at its far end to multiples of
    ``patch_size`` and the output cropped back. With ``cross_batch`` it runs as one tensor (no seams);
    without, it is cut into independent patches as in the ablation.
    layout="patches": B = 27·Nb patches of ``patch_size``³, each group of 27 the 3×3×3 grid of one block in
    the order of :mod:`diffiqt.nets.crossbatch`; all 27 must share one logsnr. With ``cross_batch`` the
    blocks are reassembled so the patches see each other; without, each patch runs alone.

    ``condition_skip`` adds the LF condition to the output and starts the head at zero (the identity on
    the condition). ``zero_head`` only starts the head at zero: for a Denoiser with ``residual_sigma``,
    which adds the condition itself, so that the untrained network already returns interpolation.

    ``slice_fold`` f > 1 runs the network on the low-field grid: the last axis is the slice axis of a
    thick-slice scan (resampled to the model grid, so f voxels per thick slice at x f) and its f voxels
    under each thick slice are folded into channels at the input (condition and noisy image alike) and
    unfolded at the output, the channel shuffle of the paper applied along one axis. Every layer then sees
    f times fewer voxels. Cells are ``patch_size``² × ``patch_size``·f input voxels (:attr:`cell_shape`);
    the cross-batch mechanism is unchanged on the folded grid, and only the volume layout is offered.
    """

    name = "diffiqt"
    needs_time = True
    in_channels = 2  # channel 0: low-field condition, channel 1: noisy image x_t
    # cross_batch, patch_size and slice_fold are constructor settings; cell_shape is Network's.

    def __init__(
        self,
        widths: Sequence[int] = (64, 64, 128),
        res_blocks: int = 3,
        attention: bool = True,
        embed_dim: int = 512,
        heads: int = 8,
        tokens_per_axis: int = 2,
        deep_feature: bool = True,
        deep_feature_width: int = 256,
        deep_feature_blocks: int = 1,
        cross_batch: bool = True,
        patch_size: int = 32,
        time_dim: int = 256,
        condition_skip: bool = False,
        zero_head: bool = False,
        slice_fold: int = 1,
    ):
        super().__init__()
        levels = len(widths)
        if slice_fold < 1:
            raise ValueError(f"slice_fold must be >= 1, not {slice_fold}")
        if slice_fold > 1 and not cross_batch:
            raise ValueError("slice_fold > 1 needs cross_batch (independent patches are cut as cubes)")
        if patch_size % (2 ** (levels - 1) * tokens_per_axis):
            raise ValueError(f"patch_size {patch_size} does not fit {levels} levels of {tokens_per_axis}³ tokens")
        self.widths = list(widths)
        self.res_blocks = res_blocks
        self.tokens_per_axis = tokens_per_axis
        self.cross_batch = cross_batch
        self.patch_size = patch_size
        self.slice_fold = slice_fold
        self.time_embedding = LogSNREmbedding(time_dim)
        self.stem = InputConv(self.in_channels * slice_fold, widths[0])
        self.encoder = nn.ModuleList(
            EncoderLevel(
                width,
                res_blocks,
                time_dim,
                TransformerBlock(width, patch_size >> level, embed_dim, heads, tokens_per_axis) if attention else None,
            )
            for level, width in enumerate(widths)
        )
        self.down = nn.ModuleList(ChannelShuffleDown(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.deep_feature = (
            DeepFeatureModule(widths[-1], deep_feature_width, time_dim, deep_feature_blocks) if deep_feature else None
        )
        self.up = nn.ModuleList(ChannelShuffleUp(b, a) for a, b in zip(widths[:-1], widths[1:]))
        # The deepest level continues the bottleneck without a skip; the others concatenate the encoder's.
        self.decoder = nn.ModuleList(
            DecoderLevel(width * (1 if level == levels - 1 else 2), width, res_blocks, time_dim)
            for level, width in enumerate(widths)
        )
        self.head = nn.Sequential(ChannelNorm(widths[0]), Mish(), PointwiseConv(widths[0], slice_fold))
        self.condition_skip = condition_skip
        if condition_skip or zero_head:
            # The network learns the correction to the LF condition and starts as the identity on it,
            # i.e. at interpolation quality; on a short (CPU) budget this is what lets it beat interpolation.
            start_at_zero(self.head[-1])

    def forward(self, x: Tensor, logsnr: Tensor, layout: str = "volume") -> Tensor:
        logsnr = logsnr.reshape(-1).expand(x.shape[0])
        if layout == "patches":
            if self.slice_fold > 1:
                raise ValueError("a network with slice_fold > 1 runs in the volume layout only")
            return self._forward_patches(x, logsnr)
        if layout != "volume":
            raise ValueError(f"layout must be 'volume' or 'patches', not {layout!r}")
        padded, crop = pad_to_multiple(x, self.cell_shape)
        if self.cross_batch:
            return self._forward_blocks(padded, logsnr)[crop]
        depth, height, width = padded.shape[2:]
        grid = (depth // self.patch_size, height // self.patch_size, width // self.patch_size)
        patches = block_to_patches(padded, self.patch_size)
        out = self._forward_blocks(patches, logsnr.repeat_interleave(math.prod(grid)))
        return patches_to_block(out, grid)[crop]

    def _forward_patches(self, patches: Tensor, logsnr: Tensor) -> Tensor:
        """[27·Nb, 2, p, p, p], logsnr [27·Nb] -> [27·Nb, 1, p, p, p]."""
        if patches.shape[2:] != (self.patch_size,) * 3:
            raise ValueError(f"patches must be {self.patch_size}³, not {tuple(patches.shape[2:])}")
        if not self.cross_batch:
            return self._forward_blocks(patches, logsnr)
        blocks = patches_to_block(patches, BLOCK_GRID)
        block_logsnr = logsnr.reshape(len(blocks), -1)
        if not torch.equal(block_logsnr, block_logsnr[:, :1].expand_as(block_logsnr)):
            raise ValueError("the 27 patches of a block must share one logsnr in cross-batch training")
        return block_to_patches(self._forward_blocks(blocks, block_logsnr[:, 0]), self.patch_size)

    def _forward_blocks(self, x: Tensor, logsnr: Tensor) -> Tensor:
        """The network proper on grid-aligned tensors: [B, 2, D, H, W] (multiples of patch_size) -> [B, 1, D, H, W]."""
        time = F.mish(self.time_embedding(logsnr))
        h = self.stem(fold_last_axis(x, self.slice_fold) if self.slice_fold > 1 else x)
        skips = []
        for level, encoder in enumerate(self.encoder):
            if level:
                h = self.down[level - 1](h)
            h = encoder(h, time)
            skips.append(h)
        if self.deep_feature is not None:
            h = self.deep_feature(h, time)
        for level in reversed(range(len(self.decoder))):
            if level < len(self.decoder) - 1:
                h = torch.cat([self.up[level](h), skips[level]], dim=1)
            h = self.decoder[level](h, time)
        out = self.head(h)
        if self.slice_fold > 1:
            out = unfold_last_axis(out, self.slice_fold)
        return out + x[:, :1] if self.condition_skip else out

    @property
    def receptive_field(self) -> int:
        """A safe halo in input voxels: the output at a voxel depends on no input farther away (per axis).

        Chunks of a large volume give exact results if they start at multiples of ``patch_size`` and
        carry this halo on each side. Without cross-batch every patch is computed alone, so nothing
        reaches past its own patch.
        """
        reach = halo_of_path(self._halo_steps()) * self.slice_fold  # folded voxels span f input voxels on one axis
        return reach if self.cross_batch else min(reach, self.patch_size - 1)

    def _halo_steps(self) -> list[int | str]:
        """The longest input-to-output path as :func:`halo_of_path` steps."""
        levels = len(self.widths)
        level_convs = 2 * self.res_blocks  # two 3³ convs per ResNet block
        steps: list[int | str] = [1]  # stem
        for level in range(levels):
            if level:
                steps.append("down")
            attention = self.encoder[level].attention
            if attention is not None:
                # A voxel sees its cell's neighbours (±1 cell beyond its own) and their tokens' 3³ convs.
                cell = self.patch_size >> level
                steps.append(2 * cell + cell // self.tokens_per_axis - 1)
            steps.append(level_convs)
        if self.deep_feature is not None:
            steps.extend(1 + dilation for dilation in self.deep_feature.dilations)
        for level in reversed(range(levels)):
            if level < levels - 1:
                steps.append("up")
            steps.append(level_convs)
        return steps
