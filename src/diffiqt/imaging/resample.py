"""Resampling between a scan's own grid and the model's isotropic grid.

A low-field scan has thick slices in some direction and any orientation. The
model works on an isotropic grid of ``voxel_mm`` that keeps the scan's axis
directions (so a thick-slice axis is interpolated along that axis alone, exactly
as the simulator's upsampling made the training conditions) and covers the
scan's field of view: each axis gets round(n * spacing / voxel_mm) samples,
starting at the centre of the scan's first voxel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffiqt.imaging.io import Volume


def isotropic_grid(volume: Volume, voxel_mm: float | np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine and shape of the ``voxel_mm`` grid covering ``volume``'s field of view (``voxel_mm``: one
    size, or one per axis of ``volume``)."""
    scale = voxel_mm / volume.voxel_size  # new spacing in units of the old one, per axis
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * scale
    shape = tuple(max(1, int(round(n / s))) for n, s in zip(volume.shape, scale))
    return affine, shape  # type: ignore[return-value]


def resample(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], order: int = 3) -> Volume:
    """``volume`` sampled on the grid (``affine``, ``shape``): cubic splines, edge values beyond the field of view."""
    target_to_source = np.linalg.inv(volume.affine) @ affine
    matrix, offset = target_to_source[:3, :3], target_to_source[:3, 3]
    if np.allclose(matrix, np.diag(np.diag(matrix))):
        matrix = np.diag(matrix)  # axis-aligned: scipy's faster separable path
    data = ndimage.affine_transform(volume.data, matrix, offset=offset, output_shape=shape, order=order, mode="nearest")
    return Volume(data.astype(np.float32), affine)


def to_isotropic(volume: Volume, voxel_mm: float | np.ndarray, order: int = 3) -> Volume:
    """``volume`` resampled onto its isotropic ``voxel_mm`` grid (see :func:`isotropic_grid`; with one size per
    axis the grid keeps the same axes and start, but is no longer isotropic)."""
    affine, shape = isotropic_grid(volume, voxel_mm)
    if shape == volume.shape and np.allclose(affine, volume.affine):
        return volume
    return resample(volume, affine, shape, order=order)


def mask_extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lower, upper) voxel corners of the bounding box of a non-empty mask (the one place it is computed)."""
    where = np.argwhere(mask)
    if not len(where):
        raise ValueError("the mask is empty: it has no bounding box")
    return where.min(axis=0), where.max(axis=0) + 1


def shared_extent(*shapes: tuple[int, ...]) -> tuple[slice, ...]:
    """Index of the extent common to arrays whose grids share voxel 0 and spacing but not their length, such
    as the model grid of a thick-slice scan (a slice or two longer or shorter) and the high-field grid."""
    return tuple(slice(0, min(sizes)) for sizes in zip(*shapes))


def onto_shape(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` cut or zero-padded at the far end of each axis to ``shape`` (grids sharing voxel 0)."""
    out = np.zeros(shape, dtype=values.dtype)
    common = shared_extent(values.shape, shape)
    out[common] = values[common]
    return out


def to_sitk(volume: Volume):
    """A SimpleITK image with ``volume``'s data and geometry (imported here: SimpleITK is optional).

    RAS millimetres serve as ITK's physical frame: only transforms between such images and grids made
    the same way are used, so the frame need not be ITK's LPS.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.data.transpose(2, 1, 0)))  # ITK's [k, j, i]
    spacing = volume.voxel_size
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in volume.affine[:3, 3]])
    image.SetDirection([float(d) for d in (volume.affine[:3, :3] / spacing).ravel()])
    return image
