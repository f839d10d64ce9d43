"""3D ESRGAN (Wang et al. 2018): RRDB generator, VGG-style discriminator and the ESRGAN losses.

The generator keeps the resolution (the LF volume is already on the HF grid), so the two upsampling
convolutions of ESRGAN stay as plain 3³ convolutions. ESRGAN's perceptual loss needs a pretrained
feature network (VGG19 on ImageNet); none ships offline here, so the losses are the relativistic
adversarial term and L1 only (docs/networks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffiqt.nets.baselines import DirectNet
from diffiqt.nets.blocks import start_at_zero
from diffiqt.nets.crossbatch import halo_of_path

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling inside dense blocks and RRDBs


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3³ convs: [B, C, …] -> [B, C, …] (residual scaled by 0.2)."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv3d(channels + i * growth, growth if i < 4 else channels, 3, padding=1) for i in range(5)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), 0.2))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled residual. [B, C, …] -> same."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


class ESRGANGenerator3d(DirectNet):
    """RRDB generator: [B, 1, D, H, W] -> [B, 1, D, H, W]; ``condition_skip`` adds the output to the input."""

    name = "esrgan"

    def __init__(self, channels: int = 64, growth: int = 32, blocks: int = 13, condition_skip: bool = False):
        super().__init__()
        self.blocks = blocks
        self.first = nn.Conv3d(1, channels, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.trunk_conv = nn.Conv3d(channels, channels, 3, padding=1)
        # ESRGAN's upsampling stage, without the upsampling, then its HR conv and output conv.
        self.tail = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1), _lrelu(),
            nn.Conv3d(channels, channels, 3, padding=1), _lrelu(),
            nn.Conv3d(channels, channels, 3, padding=1), _lrelu(),
            nn.Conv3d(channels, 1, 3, padding=1),
        )  # fmt: skip
        self.condition_skip = condition_skip
        if condition_skip:
            start_at_zero(self.tail[-1])

    def forward(self, x: Tensor) -> Tensor:
        features = self.first(x.contiguous(memory_format=torch.channels_last_3d))
        out = self.tail(features + self.trunk_conv(self.trunk(features)))
        return out + x if self.condition_skip else out

    @property
    def receptive_field(self) -> int:
        """Every layer is a 3³ conv at full resolution: first, 15 per RRDB, trunk conv, four in the tail."""
        return halo_of_path([1] * (1 + 15 * self.blocks + 1 + 4))


def _halving(channels: int) -> list[nn.Module]:
    """A stride-2 4³ conv with BatchNorm and LeakyReLU: halves each spatial size."""
    return [nn.Conv3d(channels, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm3d(channels), _lrelu()]


class ESRGANDiscriminator3d(nn.Module):
    """VGG-style discriminator: [B, 1, D, H, W] (32³ patches) -> realness logits [B].

    Pairs of 3³ and stride-2 4³ convolutions with BatchNorm and LeakyReLU halve the size four times;
    an adaptive average pool to 2³ and two linear layers give one logit per patch.
    """

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(1, widths[0], 3, padding=1), _lrelu(), *_halving(widths[0])]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv3d(a, b, 3, padding=1, bias=False), nn.BatchNorm3d(b), _lrelu(), *_halving(b)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 8, 100), _lrelu(), nn.Linear(100, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).squeeze(1)


def _relativistic_terms(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Relativistic average logits: C(first) − E[C(second)] and C(second) − E[C(first)]."""
    return first - second.mean(), second - first.mean()


def relativistic_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """ESRGAN's discriminator loss: real should look more real than the average fake, and vice versa.

    real_logits, fake_logits: [B] from the discriminator (fake from a detached generator output).
    """
    real_vs_fake, fake_vs_real = _relativistic_terms(real_logits, fake_logits)
    real_term = F.binary_cross_entropy_with_logits(real_vs_fake, torch.ones_like(real_vs_fake))
    fake_term = F.binary_cross_entropy_with_logits(fake_vs_real, torch.zeros_like(fake_vs_real))
    return (real_term + fake_term) / 2


def relativistic_generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """ESRGAN's adversarial generator loss, the discriminator's with the labels swapped. Logits: [B]."""
    # The generator step does not train the discriminator's view of the real data.
    return relativistic_discriminator_loss(fake_logits, real_logits.detach())


def esrgan_generator_loss(
    fake: Tensor,
    target: Tensor,
    real_logits: Tensor,
    fake_logits: Tensor,
    adversarial_weight: float = 5e-3,
    l1_weight: float = 1.0,
) -> Tensor:
    """L1 content loss plus the weighted relativistic adversarial loss (ESRGAN without its perceptual term).

    fake, target: [B, 1, D, H, W]; logits: [B]. ESRGAN weighs perceptual 1, adversarial 5e-3, L1 1e-2;
    with the perceptual term gone, L1 takes its unit weight so the adversarial term keeps its ratio to
    the main content loss.
    """
    adversarial = relativistic_generator_loss(real_logits, fake_logits)
    return l1_weight * F.l1_loss(fake, target) + adversarial_weight * adversarial
