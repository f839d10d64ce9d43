"""NIfTI IO: exact round trips in any orientation, canonical RAS+ inside, atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from diffiqt.errors import InputError, OutputError
from diffiqt.imaging.io import OutputGroup, Volume, load_volume, save_volume


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LAS": np.diag([-0.9, 1.1, 1.3, 1.0]),
    "LPI": np.diag([-1.0, -1.0, -2.5, 1.0]),
    "oblique": np.block(
        [
            [_rotation(17) @ np.diag([0.8, 1.0, 3.0]), np.array([[10.0], [-20.0], [5.0]])],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
}


@pytest.mark.parametrize("name", AFFINES)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_is_exact(tmp_path, name, suffix):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, size=(7, 9, 5)).astype(np.float32)
    affine = AFFINES[name].copy()
    affine[:3, 3] += [3.0, -4.0, 12.0]
    src = tmp_path / f"in{suffix}"
    nib.save(nib.Nifti1Image(data, affine), src)

    volume = load_volume(src)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    out = save_volume(volume, tmp_path / f"out{suffix}")

    back = nib.load(out)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-5)  # stored as float32 in the header
    assert int(back.header["sform_code"]) > 0 and int(back.header["qform_code"]) > 0


def test_canonical_orientation_keeps_world_positions(tmp_path):
    data = np.zeros((6, 7, 8), dtype=np.float32)
    data[1, 2, 3] = 1.0
    affine = AFFINES["LPI"].copy()
    affine[:3, 3] = [5, 6, 7]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii.gz")
    volume = load_volume(tmp_path / "a.nii.gz")
    hot = np.argwhere(volume.data == 1.0)[0]
    np.testing.assert_allclose(volume.voxel_to_world(hot), affine[:3, :3] @ [1, 2, 3] + affine[:3, 3])


def test_new_grid_is_written_in_ras_with_its_own_affine(tmp_path):
    affine = np.diag([1.0, 1.0, 8.0, 1.0])
    volume = Volume(np.ones((4, 4, 3)), affine)
    out = save_volume(volume, tmp_path / "lf.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine)
    assert img.get_fdata().shape == (4, 4, 3)


def test_singleton_fourth_dimension_is_dropped(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert load_volume(tmp_path / "a.nii.gz").shape == (4, 5, 6)


def test_mgz_is_read(tmp_path):
    nib.save(nib.MGHImage(np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 1, np.eye(4)), tmp_path / "a.mgz")
    assert load_volume(tmp_path / "a.mgz").shape == (3, 4, 5)


def test_output_may_not_overwrite_an_input(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    volume = load_volume(tmp_path / "a.nii.gz")
    with pytest.raises(OutputError, match="input"):
        save_volume(volume, tmp_path / "a.nii.gz", inputs=[tmp_path / "a.nii.gz"])


def test_failed_write_leaves_nothing_behind(tmp_path):
    volume = Volume(np.ones((4, 4, 4)), np.eye(4))
    first = tmp_path / "first.nii.gz"
    with pytest.raises(RuntimeError), OutputGroup() as group:
        group.add(save_volume(volume, first))
        raise RuntimeError("the second output failed")
    assert list(tmp_path.iterdir()) == []


def test_crop_keeps_world_positions():
    volume = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.diag([2.0, 2.0, 2.0, 1.0]))
    crop = volume.crop((2, 3, 4), (6, 7, 8))
    np.testing.assert_allclose(crop.voxel_to_world([0, 0, 0]), volume.voxel_to_world([2, 3, 4]))
    assert crop.data[0, 0, 0] == volume.data[2, 3, 4]


def test_nan_is_refused(tmp_path):
    data = np.ones((4, 5, 6), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        load_volume(tmp_path / "a.nii.gz")
