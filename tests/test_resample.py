"""The model grid: isotropic, same axes and field of view, thick slices interpolated along their axis only."""

from __future__ import annotations

import numpy as np
import pytest

from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import isotropic_grid, mask_extent, onto_shape, shared_extent, to_isotropic
from diffiqt.simulation import LowFieldParams, simulate_low_field


def test_thick_slice_scan_goes_back_onto_the_hf_grid(mni_crop):
    """An LF scan simulated from a 1 mm brain comes back on exactly that brain's grid and values."""
    hf = mni_crop.t1
    result = simulate_low_field(hf, mni_crop.tissues, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0))
    back = to_isotropic(result.lf, 1.0)
    n = hf.shape[2]
    assert back.shape[:2] == hf.shape[:2] and back.shape[2] == result.lf.shape[2] * 8 >= n
    np.testing.assert_allclose(back.affine, hf.affine, atol=1e-9)
    np.testing.assert_allclose(back.data[:, :, :n], result.lf_on_hf.data, atol=1e-3)


def test_oblique_grid_keeps_axis_directions_and_origin():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 5.0])
    affine[:3, 3] = [-10, 20, 30]
    volume = Volume(np.random.default_rng(0).random((40, 40, 8)), affine)
    new_affine, shape = isotropic_grid(volume, 1.0)
    assert shape == (36, 36, 40)
    np.testing.assert_allclose(Volume(np.zeros(shape), new_affine).voxel_size, 1.0)
    np.testing.assert_allclose(new_affine[:3, 3], affine[:3, 3])
    directions = new_affine[:3, :3] / np.linalg.norm(new_affine[:3, :3], axis=0)
    np.testing.assert_allclose(directions, rotation, atol=1e-12)


def test_shared_extent_and_onto_shape_align_grids_at_voxel_zero():
    values = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    assert shared_extent(values.shape, (4, 3, 4)) == (slice(0, 2), slice(0, 3), slice(0, 4))
    placed = onto_shape(values, (4, 3, 4))
    assert placed.shape == (4, 3, 4)
    np.testing.assert_array_equal(placed[:2, :, :4], values[:, :, :4])  # shared part kept in place
    assert not placed[2:].any()  # missing part padded with zeros


def test_mask_extent_is_the_half_open_bounding_box_and_refuses_an_empty_mask():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 2:7, 4] = True
    lower, upper = mask_extent(mask)
    assert lower.tolist() == [1, 2, 4] and upper.tolist() == [3, 7, 5]
    with pytest.raises(ValueError, match="empty"):
        mask_extent(np.zeros((2, 2, 2), bool))
