"""Tiny networks honouring the diffiqt.nets contract, for fast training tests.

``TinyDiffusionNet``: forward(x [B, 2, D, H, W], logsnr [B], layout="volume") -> [B, 1, D, H, W].
``TinySupervisedNet``: forward(x [B, 1, D, H, W]) -> [B, 1, D, H, W] (a baseline: needs_time False).
:func:`install` makes ``diffiqt.nets.build_network`` build them by name ("tiny", "tiny-supervised"),
delegating every other name to the real registry.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from diffiqt.nets import Network


class TinyDiffusionNet(Network):
    """Three 3x3x3 convolutions with a log-SNR FiLM; predicts the clean image as LF + residual."""

    name = "tiny"
    needs_time = True
    in_channels = 2
    cross_batch = False
    patch_size = 8
    slice_fold = 1
    cell_shape = (8, 8, 8)
    receptive_field = 7

    def __init__(self, width: int = 8):
        super().__init__()
        self.config = {"name": self.name, "width": width}
        self.inp = nn.Conv3d(2, width, 3, padding=1)
        self.film = nn.Linear(1, 2 * width)
        self.mid = nn.Conv3d(width, width, 3, padding=1)
        self.out = nn.Conv3d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, layout: str = "volume") -> torch.Tensor:
        scale, shift = self.film(logsnr[:, None] / 15.0).chunk(2, dim=1)
        h = torch.nn.functional.silu(self.inp(x)) * (1 + scale[..., None, None, None]) + shift[..., None, None, None]
        h = torch.nn.functional.silu(self.mid(h))
        return x[:, :1] + self.out(h)


class TinySupervisedNet(Network):
    """A two-layer residual CNN on the LF alone."""

    name = "tiny-supervised"
    needs_time = False
    in_channels = 1
    cross_batch = False
    patch_size = 8
    slice_fold = 1
    cell_shape = (8, 8, 8)
    receptive_field = 5

    def __init__(self, width: int = 8):
        super().__init__()
        self.config = {"name": self.name, "width": width}
        self.inp = nn.Conv3d(1, width, 3, padding=1)
        self.out = nn.Conv3d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.nn.functional.silu(self.inp(x)))


TINY = {"tiny": TinyDiffusionNet, "tiny-supervised": TinySupervisedNet}

# Training settings for fast tests: the tiny network on a 64x120x64 crop of the real MNI brain
# (validation on the crop's anterior slab), 24^3 blocks, no augmentation, checkpoints every 2 steps.
TINY_TRAINING = (
    "network.name=tiny",
    'network.overrides={"width": 4}',
    "data.crop=[[60,124],[50,170],[50,114]]",
    "data.block_size=24",
    "data.num_workers=0",
    "data.pool_size=2",
    "data.refresh_every=2",
    "data.augment.enabled=false",
    "data.augment.elastic_probability=0",
    "data.val_blocks=1",
    "diffusion.sample_steps=2",
    "batch_size=2",
    "log_every=1",
    "val_every=2",
    "checkpoint_every=2",
    "keep_checkpoints=5",
    "optim.lr=3e-3",
)


def install(monkeypatch=None) -> None:
    """Let ``diffiqt.nets.build_network`` build the tiny networks too (via ``monkeypatch`` if given)."""
    nets = importlib.import_module("diffiqt.nets")
    original = getattr(nets, "build_network", None)

    def build_network(name: str, **overrides):
        if name in TINY:
            return TINY[name](**overrides)
        if original is None:
            raise KeyError(f"unknown network {name!r}")
        return original(name, **overrides)

    if monkeypatch is not None:
        monkeypatch.setattr(nets, "build_network", build_network, raising=False)
    else:
        nets.build_network = build_network
