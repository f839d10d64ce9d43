"""A model ready for enhancement: a network, the grid it was trained on and how it is sampled.

:func:`load_model` takes what ``--model`` takes: a shipped model's name (``default`` included; see
:mod:`diffiqt.models.shipped`) or a checkpoint or run folder (:mod:`diffiqt.models.checkpoint`), and
returns a :class:`Model` with the defaults its card or training config records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffiqt.config import DEFAULT_SAMPLER, DEFAULT_STEPS
from diffiqt.diffusion import Denoiser
from diffiqt.models.checkpoint import DEFAULT_VOXEL_MM, load_network, read_checkpoint
from diffiqt.models.shipped import load_shipped, resolve_model

if TYPE_CHECKING:  # diffiqt.nets is imported when a model is loaded, not with this module
    from diffiqt.nets.base import Network


@dataclass
class Model:
    """A network ready for enhancement and the grid it was trained on."""

    net: Network
    voxel_mm: float = DEFAULT_VOXEL_MM
    description: str = ""
    warning: str | None = None  # what a shipped model's card says users must know before trusting it
    residual_sigma: float | None = None  # the Denoiser's preconditioning it was trained with
    steps: int = DEFAULT_STEPS  # sampling steps the model is meant to be used with (its card's or training config's)
    sampler: str = DEFAULT_SAMPLER  # likewise the sampler (a key of diffiqt.diffusion.SAMPLERS)

    def denoiser(self) -> Denoiser:
        """The network joined with the diffusion it was trained with."""
        return Denoiser(self.net, self.residual_sigma)

    @property
    def cell(self) -> int:
        """The network's patch size: the smallest side a scan may have on the model grid."""
        return self.net.patch_size

    @property
    def slice_fold(self) -> int:
        """> 1 for a network on the low-field grid: it takes the scan's slice axis last (see DiffusionIQTNet)."""
        return self.net.slice_fold

    def cell_shape(self, slice_axis: int) -> np.ndarray:
        """Voxels per axis of the scan's model grid that the head box is aligned to (the net's cells, the
        slice axis moved back to where the scan has it)."""
        shape = list(self.net.cell_shape)
        if self.slice_fold > 1:
            shape.insert(slice_axis, shape.pop())
        return np.array(shape)


def load_model(spec: str | Path) -> Model:
    """A shipped model by name ('default' included), or the EMA weights of a checkpoint/run folder.

    ``spec`` is resolved by :func:`diffiqt.models.shipped.resolve_model`: shipped names win over relative
    paths (``./default`` is the folder), and a Path is always a path.
    """
    ref = resolve_model(spec)
    if ref.name is not None:
        net, card = load_shipped(ref.name)
        return Model(
            net,
            float(card["voxel_mm"]),
            f"shipped model {ref.name} (step {card.get('step')})",
            card.get("warning"),
            card.get("residual_sigma"),
            int(card.get("sample_steps", DEFAULT_STEPS)),
            str(card.get("sampler", DEFAULT_SAMPLER)),
        )
    meta = read_checkpoint(ref.path)
    net, cfg = load_network(meta.folder)
    voxel_mm = float(meta.meta.get("voxel_mm", DEFAULT_VOXEL_MM))
    return Model(
        net,
        voxel_mm,
        f"{meta.folder} (step {meta.step})",
        residual_sigma=cfg.diffusion.residual_sigma,
        steps=cfg.diffusion.sample_steps,
        sampler=cfg.diffusion.sampler,
    )
