"""Building blocks of the DiffusionIQT network.

Every block is *local*: its output at a voxel depends on a bounded neighbourhood, and no statistic is
pooled over a patch or a batch. That is what lets the same weights run on a 27-patch block, a whole
brain or a chunk of it with identical results (see docs/networks.md). Tensors are [B, C, D, H, W];
the networks keep them in ``torch.channels_last_3d`` memory format, in which 3D convolutions run up
to 2x faster on CPU here (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffiqt.nets.crossbatch import neighbourhood_linear_attention

SKIP_SCALE = 1 / math.sqrt(2)  # residual sums are scaled to keep their variance (paper, A.1)
MISH_SLICE = 32767  # elements per slice of the in-place Mish: cache-sized, and below PyTorch's parallel grain


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the residual branch it ends starts as nothing (ADM practice)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def _flat_view(x: Tensor) -> Tensor | None:
    """A 1-D view of all of ``x``'s elements if it is dense (contiguous or channels_last_3d), else None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x.permute(0, 2, 3, 4, 1).view(-1)
    return None


def mish(x: Tensor) -> Tensor:
    """Mish, x·tanh(softplus(x)); on CPU tensors that autograd does not track, computed in place.

    Callers pass a fresh temporary (a norm's output), so overwriting it is safe. F.mish costs about
    5 ns per element on this CPU (20% of a forward pass). With s = sigmoid(x), tanh(softplus(x)) =
    s(2 - s) / (1 + (1 - s)²), free of cancellation at both ends; computed on slices of ``MISH_SLICE``
    elements its temporaries stay in cache, and every operation runs on the calling thread (PyTorch
    parallelises only from 32768 elements), so no slice waits for a second thread: about 2x faster than
    F.mish and equal to it within float32 rounding. Training (autograd), other devices and
    torch.compile (which fuses F.mish itself, and would unroll the slices) use F.mish.
    """
    flat = _flat_view(x)
    if x.requires_grad or x.device.type != "cpu" or flat is None or torch.compiler.is_compiling():
        return F.mish(x)
    for part in flat.split(MISH_SLICE):
        s = torch.sigmoid(part)
        numerator = torch.rsub(s, 2.0).mul_(s)
        part.mul_(numerator.div_(s.neg_().add_(1.0).square_().add_(1.0)))
    return x


class Mish(nn.Module):
    """:func:`mish` as a module (no parameters, like nn.Mish)."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)


class InputConv(nn.Conv3d):
    """The first 3³ convolution: [B, Cin, D, H, W] -> [B, Cout, D, H, W], in channels_last_3d.

    With exactly 2 input channels PyTorch's CPU convolution leaves oneDNN for a 4x slower fallback, so
    input and weight then get a third, zero channel: the same result, faster.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        missing = 1 if self.in_channels == 2 else 0
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, missing)).contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(x, F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, missing)), self.bias, padding=1)


def start_at_zero(layer: nn.Module) -> None:
    """Zero a layer's weight and bias: a network whose output is added to its LF input (``condition_skip``)
    then starts as the identity on that input, i.e. as cubic interpolation."""
    for tensor in (layer.weight, layer.bias):
        if isinstance(tensor, Tensor):  # a layer without bias has bias None
            nn.init.zeros_(tensor)


class PointwiseConv(nn.Conv3d):
    """1×1×1 convolution as a matrix product over channels: [B, Cin, D, H, W] -> [B, Cout, D, H, W].

    The parameters of ``nn.Conv3d(Cin, Cout, 1)``. With one thread PyTorch runs 1×1 convolutions on a
    slow non-oneDNN CPU path that also drops channels_last (8x slower); F.linear on the channels-last
    view is fast with any thread count and keeps the layout.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias).permute(0, 4, 1, 2, 3)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each voxel: [B, C, D, H, W] -> same.

    Replaces GroupNorm, whose statistics pooled over a patch would differ between patch training and
    whole-volume inference.
    """

    def __init__(self, channels: int, affine: bool = True):
        super().__init__(channels, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        # In channels_last_3d memory the permuted view is contiguous, so this costs no copy.
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class LogSNREmbedding(nn.Module):
    """log-SNR [B] -> embedding [B, dim]: learned random Fourier features, then an MLP.

    The log-SNR (about -20…+20 for a cosine schedule) is divided by 10 so that the learned frequencies
    start on a useful scale.
    """

    def __init__(self, dim: int, frequencies: int = 16):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(frequencies))
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies + 1, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, logsnr: Tensor) -> Tensor:
        x = logsnr.to(self.frequencies.dtype).unsqueeze(1) / 10
        angles = 2 * math.pi * x * self.frequencies
        return self.mlp(torch.cat([x, angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """ADM residual block: [B, Cin, D, H, W], time embedding [B, T] -> [B, Cout, D, H, W].

    norm → Mish → 3³ conv → norm with the time's scale and shift → Mish → 3³ conv, plus the skip,
    scaled by 1/√2. The second convolution may be dilated (the deep-feature module uses it).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dilation: int = 1):
        super().__init__()
        self.norm1 = ChannelNorm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = ChannelNorm(out_channels, affine=False)  # the time's scale/shift is its affine
        self.conv2 = zero_init(nn.Conv3d(out_channels, out_channels, 3, padding=dilation, dilation=dilation))
        self.skip = PointwiseConv(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h = self.conv1(mish(self.norm1(x)))
        scale, shift = self.time(time)[:, :, None, None, None].chunk(2, dim=1)
        h = self.conv2(mish(torch.addcmul(shift, self.norm2(h), 1 + scale)))
        # In place: neither the conv nor the add needs this tensor for its backward pass.
        return h.add_(self.skip(x)).mul_(SKIP_SCALE)


def pixel_unshuffle_3d(x: Tensor, factor: int = 2) -> Tensor:
    """Space to depth: [B, C, D, H, W] -> [B, C·f³, D/f, H/f, W/f].

    Channel c·f³ + (i·f + j)·f + k holds the voxel at offset (i, j, k) of each f³ cube.
    """
    b, c, d, h, w = x.shape
    f = factor
    y = x.reshape(b, c, d // f, f, h // f, f, w // f, f).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return y.reshape(b, c * f**3, d // f, h // f, w // f)


def pixel_shuffle_3d(x: Tensor, factor: int = 2) -> Tensor:
    """Depth to space, the exact inverse of :func:`pixel_unshuffle_3d`: [B, C·f³, D, H, W] -> [B, C, D·f, H·f, W·f]."""
    b, cf, d, h, w = x.shape
    f = factor
    y = x.reshape(b, cf // f**3, f, f, f, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(b, cf // f**3, d * f, h * f, w * f)


class ChannelShuffleDown(nn.Module):
    """Downsampling ×2, 3D pixel-unshuffle then a 1×1 conv: [B, Cin, D, H, W] -> [B, Cout, D/2, H/2, W/2].

    The parameters are those of the 1×1 conv on the 8·Cin shuffled channels; the forward pass applies
    them as the identical stride-2 2³ convolution, which skips materialising the shuffled tensor
    (7x faster on CPU). A test checks it against the literal shuffle-then-conv.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv3d(8 * in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.proj.weight.reshape(self.proj.out_channels, -1, 2, 2, 2)
        return F.conv3d(x, weight, self.proj.bias, stride=2)


class ChannelShuffleUp(nn.Module):
    """Upsampling ×2: a 1×1 conv to 8·Cout channels then 3D pixel shuffle. [B, Cin, D, H, W] -> [B, Cout, 2D, 2H, 2W].

    Applied as the identical stride-2 2³ transposed convolution. The 1×1 conv has no bias: its bias
    would differ between the 8 sub-voxels, which a transposed convolution's bias cannot express.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, 8 * out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out_channels = self.proj.out_channels // 8
        weight = self.proj.weight.reshape(out_channels, 8, -1).permute(2, 0, 1)
        return F.conv_transpose3d(x, weight.reshape(-1, out_channels, 2, 2, 2), stride=2)


class _CubeKernel(nn.Module):
    """A depthwise kernel over size³ cubes, one per channel: weight [C, s, s, s], bias [C]."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(channels, size, size, size) / size**1.5)
        self.bias = nn.Parameter(torch.zeros(channels))

    def channels_last_kernel(self) -> Tensor:
        """The weight as [s, s, s, C] for products with channels-last cubes."""
        return self.weight.permute(1, 2, 3, 0)


class CellDepthwise(_CubeKernel):
    """Depthwise conv with kernel = stride = ``size``, one token per cube: [B, C, D, H, W] -> [B, C, D/s, H/s, W/s].

    Computed as a multiply-and-sum over the cubes: F.conv3d's depthwise backward with a 16³ kernel is
    5x slower on CPU.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, d, h, w = x.shape
        s = self.size
        cubes = x.permute(0, 2, 3, 4, 1).reshape(b, d // s, s, h // s, s, w // s, s, c)
        kernel = self.channels_last_kernel()[:, None, :, None, :, :]
        return ((cubes * kernel).sum(dim=(2, 4, 6)) + self.bias).permute(0, 4, 1, 2, 3)


class CellDepthwiseTranspose(_CubeKernel):
    """Transposed depthwise conv with kernel = stride = ``size``: [B, C, n, n, n] -> [B, C, n·s, n·s, n·s].

    Each token paints its own size³ cube (a broadcast multiply; F.conv_transpose3d with groups=C is 30x
    slower on CPU).
    """

    def forward(self, tokens: Tensor) -> Tensor:
        b, c, nd, nh, nw = tokens.shape
        s = self.size
        kernel = self.channels_last_kernel()[None, None, :, None, :, None, :, :]
        # The painted cubes follow the tokens' memory layout: channels last makes the output channels_last_3d.
        tokens = tokens.contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1)
        cubes = torch.addcmul(self.bias, tokens[:, :, None, :, None, :, None, :], kernel)
        return cubes.reshape(b, nd * s, nh * s, nw * s, c).permute(0, 4, 1, 2, 3)


class TransformerBlock(nn.Module):
    """Cross-batch efficient-attention transformer block fused with a skip: [B, C, D, H, W] -> same.

    Tokens: a depthwise conv with kernel = stride = token size keeps the 3D layout (``tokens_per_axis``³
    tokens per cell, a cell being one patch at this resolution); a 1×1 conv lifts them to the embedding;
    depthwise 3³ convs give Q, K, V; attention reaches the 3×3×3 neighbourhood of cells; a residual
    token-wise MLP follows, as in any transformer; a 1×1 conv and a transposed cell-local depthwise conv
    bring the result back to voxels, where it is added to the input.
    D, H, W must be multiples of ``cell_size``.
    """

    def __init__(self, channels: int, cell_size: int, embed_dim: int, heads: int, tokens_per_axis: int = 2):
        super().__init__()
        if cell_size % tokens_per_axis or embed_dim % heads:
            raise ValueError("cell_size must divide into tokens_per_axis tokens and embed_dim into heads")
        token_size = cell_size // tokens_per_axis
        self.heads = heads
        self.tokens_per_axis = tokens_per_axis
        self.norm = ChannelNorm(channels)
        self.tokenize = CellDepthwise(channels, token_size)
        self.embed = PointwiseConv(channels, embed_dim)
        # Depthwise Q, K and V in one grouped conv: output channel 3e + r is Q, K, V (r = 0, 1, 2) of channel e.
        self.qkv = nn.Conv3d(embed_dim, 3 * embed_dim, 3, padding=1, groups=embed_dim)
        self.mlp = nn.Sequential(
            ChannelNorm(embed_dim),
            PointwiseConv(embed_dim, embed_dim // 2),
            nn.Mish(),
            PointwiseConv(embed_dim // 2, embed_dim),
        )
        self.project = zero_init(PointwiseConv(embed_dim, channels))
        self.untokenize = CellDepthwiseTranspose(channels, token_size)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(self.tokenize(self.norm(x)))
        query, key, value = self.qkv(tokens).unflatten(1, (-1, 3)).unbind(dim=2)
        attended = neighbourhood_linear_attention(query, key, value, self.heads, self.tokens_per_axis)
        attended = attended + self.mlp(attended)
        return torch.add(x, self.untokenize(self.project(attended))).mul_(SKIP_SCALE)


class DeepFeatureModule(nn.Module):
    """Deep-feature extraction at the bottleneck: [B, C, D, H, W], time [B, T] -> [B, C, D, H, W].

    Widens the coarsest features to ``width`` channels, runs ``blocks`` time-conditioned residual blocks
    whose second conv is dilated by 2 (a wider view where one voxel already stands for 4³ input voxels),
    and narrows back, added to the input as a residual.
    """

    def __init__(self, channels: int, width: int, time_dim: int, blocks: int = 1):
        super().__init__()
        self.expand = PointwiseConv(channels, width)
        self.dilations = [2] * blocks  # of the blocks' second conv, for receptive-field bookkeeping
        self.blocks = nn.ModuleList(ResBlock(width, width, time_dim, dilation=d) for d in self.dilations)
        self.contract = zero_init(PointwiseConv(width, channels))

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h = self.expand(x)
        for block in self.blocks:
            h = block(h, time)
        return (x + self.contract(h)) * SKIP_SCALE
