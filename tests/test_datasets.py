"""Real brains available offline and users' folders."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from diffiqt.anatomy import brains
from diffiqt.errors import InputError


def test_mni152_has_consistent_tissue_maps(mni):
    assert mni.t1.shape == (197, 233, 189)
    np.testing.assert_allclose(mni.t1.voxel_size, 1.0)
    total = sum(v.data for v in mni.tissues.as_dict().values())
    assert 0.0 <= total.min() and total.max() <= 1.0 + 1e-5
    assert total[mni.mask].mean() > 0.95  # the maps account for (almost) all of the brain
    wm, gm = mni.tissues.wm.data > 0.9, mni.tissues.gm.data > 0.9
    assert mni.t1.data[wm].mean() > mni.t1.data[gm].mean()  # T1w contrast


@pytest.mark.skipif(not brains.colin27_available(), reason="Debian's mricron-data (Colin27) is not installed")
def test_colin27_is_a_whole_head():
    head = brains.colin27()
    assert not head.skull_stripped and head.t1.shape == (181, 217, 181)
    brain = head.tissues.gm.data + head.tissues.wm.data + head.tissues.csf.data > 0.5
    scalp = head.mask & ~brain
    assert scalp.sum() > 0.3 * brain.sum()  # skull and scalp are present
    assert head.t1.data[scalp].mean() > 10


def test_user_folder_reads_fast_maps_and_skips_them_as_volumes(tmp_path, mni_crop):
    t1 = mni_crop.t1
    nib.save(nib.Nifti1Image(t1.data, t1.affine), tmp_path / "sub-01_T1w.nii.gz")
    for name, index in brains.FAST_PVE_INDEX.items():
        tissue = getattr(mni_crop.tissues, name)
        nib.save(nib.Nifti1Image(tissue.data, t1.affine), tmp_path / f"sub-01_T1w_pve_{index}.nii.gz")
    assert [p.name for p in brains.list_user_folder(tmp_path)] == ["sub-01_T1w.nii.gz"]
    sample = brains.load_user_volume(tmp_path / "sub-01_T1w.nii.gz")
    np.testing.assert_allclose(sample.tissues.wm.data, mni_crop.tissues.wm.data)


def test_tissue_map_on_another_grid_is_refused(tmp_path, mni_crop):
    t1 = mni_crop.t1
    nib.save(nib.Nifti1Image(t1.data, t1.affine), tmp_path / "s.nii.gz")
    for index in range(3):
        nib.save(nib.Nifti1Image(t1.data[:-1], t1.affine), tmp_path / f"s_pve_{index}.nii.gz")
    with pytest.raises(InputError, match="not on the grid"):
        brains.load_user_volume(tmp_path / "s.nii.gz")


def test_empty_folder_and_unknown_bundle_are_refused(tmp_path):
    with pytest.raises(InputError, match="no NIfTI"):
        brains.list_user_folder(tmp_path)
    with pytest.raises(InputError, match="unknown bundled brain"):
        brains.load_bundled("nobody")


def test_simulate_folder_mode_writes_one_lf_per_volume(tmp_path, mni_crop):
    source = tmp_path / "hf"
    source.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(mni_crop.t1.data, mni_crop.t1.affine), source / f"{name}.nii.gz")
    result = run_cli("simulate", source, "-o", tmp_path / "lf", "--factor", "8", "--no-upsample")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "lf").iterdir())
    assert written == ["a_lf.json", "a_lf.nii.gz", "b_lf.json", "b_lf.nii.gz"]
    lf = nib.load(tmp_path / "lf" / "a_lf.nii.gz")
    assert lf.shape == (96, 112, 13)
    np.testing.assert_allclose(lf.affine[:3, 2], mni_crop.t1.affine[:3, 2] * 8)
