"""PNG figures: orthogonal-view montages of volumes on a shared world position."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from diffiqt.imaging.io import Volume, atomic_write  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def view_slice(volume: Volume, world_point: np.ndarray, view: str, reference: Volume) -> np.ndarray:
    """A 2D slice of ``volume`` through ``world_point``, sampled on ``reference``'s grid.

    Sampling every volume on one reference grid (nearest neighbour) shows thick
    slices as they are, and keeps all panels of a row at the same anatomy.
    """
    ijk = np.round(reference.world_to_voxel(world_point)).astype(int)
    ijk = np.clip(ijk, 0, np.array(reference.shape) - 1)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    grid = np.meshgrid(*[np.arange(n) for i, n in enumerate(reference.shape) if i != axis], indexing="ij")
    rest = iter(grid)
    coords = [np.full(grid[0].shape, ijk[i]) if i == axis else next(rest) for i in range(3)]
    world = reference.voxel_to_world(np.stack(coords, axis=-1))
    src = volume.world_to_voxel(world)
    plane = ndimage.map_coordinates(volume.data, np.moveaxis(src, -1, 0), order=0, mode="constant", cval=0.0)
    return np.rot90(plane)  # RAS+: show superior/anterior up


def montage(
    panels: list[tuple[str, Volume]],
    path: str | Path,
    *,
    world_point=None,
    title: str | None = None,
    diverging: frozenset[str] | set[str] = frozenset(),
) -> Path:
    """Write a rows=views x columns=panels PNG. All panels are sampled on the first panel's grid.

    ``world_point`` defaults to the centre of the first volume's nonzero region.
    Panels named in ``diverging`` (e.g. error maps) get a symmetric colour map.
    """
    path = Path(path)
    reference = panels[0][1]
    if world_point is None:
        nz = np.argwhere(reference.data > 0)
        centre = nz.mean(axis=0) if len(nz) else (np.array(reference.shape) - 1) / 2
        world_point = reference.voxel_to_world(centre)
    limits = _display_limits(reference.data)
    fig, axes = plt.subplots(len(VIEWS), len(panels), figsize=(2.6 * len(panels), 2.6 * len(VIEWS)), squeeze=False)
    for col, (name, volume) in enumerate(panels):
        for row, view in enumerate(VIEWS):
            ax = axes[row][col]
            plane = view_slice(volume, np.asarray(world_point), view, reference)
            if name in diverging:
                bound = float(np.percentile(np.abs(volume.data), 99.5)) or 1.0
                ax.imshow(plane, cmap="coolwarm", vmin=-bound, vmax=bound)
            else:
                ax.imshow(plane, cmap="gray", vmin=limits[0], vmax=limits[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.set_ylabel(view, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _display_limits(data: np.ndarray) -> tuple[float, float]:
    values = data[data > 0]
    if values.size == 0:
        return float(data.min()), float(data.max()) or 1.0
    return 0.0, float(np.percentile(values, 99.5))
