"""The network contract: what training, enhancement, checkpoints and benchmarks may read from any network.

Every network in :mod:`diffiqt.nets` subclasses :class:`Network`. Consumers type against it and read its
attributes directly (no ``getattr`` fallbacks), so a network that does not declare one fails at once.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Network(nn.Module):
    """A 3D network mapping the low-field condition (and, for diffusion, a noisy image) to the HF estimate.

    forward(x [B, in_channels, D, H, W]) -> [B, 1, D, H, W] when ``needs_time`` is False;
    forward(x [B, in_channels, D, H, W], logsnr [B], layout="volume") -> [B, 1, D, H, W] when it is True.

    The attributes are declared here (as class-level annotations, so that ``nn.Module.__getattr__``, which
    types every unknown attribute as ``Tensor | Module``, does not hide them); each subclass sets them.
    """

    name: str
    """The registry name it was built under (:func:`diffiqt.nets.build_network` sets it; e.g. "paper")."""
    config: dict[str, Any]
    """JSON-serialisable arguments of :func:`diffiqt.nets.build_network` that rebuild it (set there too)."""
    in_channels: int
    """Input channels: 2 for a diffusion network (LF condition, noisy image x_t), 1 for a direct baseline."""
    needs_time: bool
    """True: a denoiser called with the log-SNR and sampled; False: one supervised forward pass."""
    cross_batch: bool
    """Whether the patches of a block attend to each other (DiffusionIQT's cross-batch mechanism)."""
    patch_size: int
    """Edge in voxels of one patch, the unit that volumes are padded to and the patch layout cuts."""
    slice_fold: int
    """f > 1: the network runs on the low-field grid, the last input axis the scan's slice axis with f voxels
    per thick slice (see :class:`~diffiqt.nets.diffiqt.DiffusionIQTNet`); 1: on the isotropic grid."""

    @property
    def receptive_field(self) -> int:
        """A safe halo in input voxels per axis: no output voxel depends on input farther away. Chunks that
        start on the :attr:`cell_shape` grid and carry this halo give the whole-volume result exactly."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its receptive field")

    @property
    def cell_shape(self) -> tuple[int, int, int]:
        """Input voxels per axis that head boxes and chunks are aligned to: one patch, the last axis spanning
        ``slice_fold`` voxels per folded voxel."""
        return (self.patch_size, self.patch_size, self.patch_size * self.slice_fold)
