"""The Lin et al. 2023 simulator on the real MNI152 brain: geometry, SNR, contrast, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffiqt.anatomy.brains import BrainSample, TissueMaps
from diffiqt.errors import InputError
from diffiqt.imaging.io import Volume
from diffiqt.simulation import LowFieldParams, decimate, slice_profile_blur, simulate_low_field


def _resample(volume: Volume, voxel_mm: float, order: int = 1) -> Volume:
    """``volume`` resampled onto an isotropic grid of ``voxel_mm``, same field of view."""
    scale = volume.voxel_size / voxel_mm
    data = ndimage.zoom(volume.data, scale, order=order)
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / scale
    return Volume(data, affine)


@pytest.fixture(scope="module")
def mni_07mm(mni_crop) -> BrainSample:
    """The MNI crop resampled to the HCP-like 0.7 mm grid of the paper."""
    maps = {k: _resample(v, 0.7) for k, v in mni_crop.tissues.as_dict().items()}
    return BrainSample("mni-0.7mm", _resample(mni_crop.t1, 0.7), TissueMaps(**maps), mni_crop.mask, True)


def test_paper_setting_at_07mm_keeps_every_8th_slice(mni_07mm):
    hf = mni_07mm.t1
    params = LowFieldParams(thickness_mm=4.2, gap_mm=1.4, axis=2)
    result = simulate_low_field(hf, mni_07mm.tissues, params, np.random.default_rng(0))
    n = hf.shape[2]
    assert result.lf.shape == (hf.shape[0], hf.shape[1], len(range(0, n, 8)))
    assert result.info["slice_step_voxels"] == pytest.approx(8.0)
    assert result.info["slice_fwhm_voxels"] == pytest.approx(6.0)
    np.testing.assert_allclose(result.lf.voxel_size, [0.7, 0.7, 5.6], atol=1e-6)
    # slice k of the LF lies where HF slice 8k lay
    for k in (0, 3, result.lf.shape[2] - 1):
        np.testing.assert_allclose(result.lf.voxel_to_world([5, 7, k]), hf.voxel_to_world([5, 7, 8 * k]), atol=1e-6)
    assert result.lf_on_hf.shape == hf.shape
    np.testing.assert_allclose(result.lf_on_hf.affine, hf.affine)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_x8_at_1mm_on_each_axis(mni_crop, axis):
    hf = mni_crop.t1
    params = LowFieldParams.for_factor(8, 1.0, axis=axis)
    assert (params.thickness_mm, params.gap_mm) == (6.0, 2.0)
    result = simulate_low_field(hf, mni_crop.tissues, params, np.random.default_rng(1), upsample=False)
    expected = list(hf.shape)
    expected[axis] = len(range(0, hf.shape[axis], 8))
    assert result.lf.shape == tuple(expected)
    spacing = np.ones(3)
    spacing[axis] = 8
    np.testing.assert_allclose(result.lf.voxel_size, spacing)
    np.testing.assert_allclose(result.lf.affine[:3, 3], hf.affine[:3, 3])


def test_whole_voxel_spacing_equals_plain_slice_keeping(mni_crop):
    blurred = slice_profile_blur(mni_crop.t1.data, 2, 6.0)
    np.testing.assert_array_equal(decimate(blurred, 2, 8.0), blurred[:, :, ::8])


def test_fractional_spacing_places_slices_at_true_positions(mni_crop):
    hf = mni_crop.t1
    result = simulate_low_field(
        hf, mni_crop.tissues, LowFieldParams(4.2, 1.4, axis=2), np.random.default_rng(0), upsample=False
    )
    assert result.info["slice_step_voxels"] == pytest.approx(5.6)
    np.testing.assert_allclose(result.lf.voxel_to_world([0, 0, 5]), hf.voxel_to_world([0, 0, 28.0]), atol=1e-6)
    assert result.lf.shape[2] == int(np.floor((hf.shape[2] - 1) / 5.6)) + 1


def test_bright_voxel_lands_in_the_nearest_lf_slice(mni_crop):
    hf = mni_crop.t1
    data = hf.data.copy()
    i, j, k = 48, 56, 8 * 6 + 3  # 3 voxels above LF slice 6, 5 below slice 7
    data[i, j, k] = 50 * data.max()
    world = hf.voxel_to_world([i, j, k])
    result = simulate_low_field(
        hf.with_data(data),
        mni_crop.tissues,
        LowFieldParams.for_factor(8, 1.0, snr_wm=60, snr_gm=50),
        np.random.default_rng(0),
        upsample=False,
    )
    lf_ijk = np.unravel_index(np.argmax(result.lf.data), result.lf.shape)
    assert lf_ijk == (i, j, 6)
    expected_slice = np.rint(result.lf.world_to_voxel(world)[2])
    assert expected_slice == 6


def _core(mask: np.ndarray) -> np.ndarray:
    """Pure tissue away from partial-volume borders: eroded within the thick-slice plane."""
    return ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1)), iterations=1)


def test_measured_snr_and_contrast_match_the_request(mni):
    """SNR by the two-acquisition difference method (NEMA): sigma = std(LF1 - LF2) / sqrt(2)."""
    params = LowFieldParams.for_factor(8, 1.0, snr_wm=60.0, snr_gm=45.0)
    first = simulate_low_field(mni.t1, mni.tissues, params, np.random.default_rng(1), upsample=False)
    second = simulate_low_field(mni.t1, mni.tissues, params, np.random.default_rng(2), upsample=False)
    step = first.info["slice_step_voxels"]
    decimated = {
        k: decimate(slice_profile_blur(v.data, 2, first.info["slice_fwhm_voxels"]), 2, step)
        for k, v in mni.tissues.as_dict().items()
    }
    wm, gm = _core(decimated["wm"] > 0.9), _core(decimated["gm"] > 0.9)
    assert wm.sum() > 1000 and gm.sum() > 100
    sigma = np.std((first.lf.data - second.lf.data)[wm | gm]) / np.sqrt(2)
    assert sigma == pytest.approx(first.info["sigma"], rel=0.05)
    snr_wm = first.lf.data[wm].mean() / sigma
    snr_gm = first.lf.data[gm].mean() / sigma
    assert snr_wm == pytest.approx(60.0, rel=0.10)
    assert snr_gm == pytest.approx(45.0, rel=0.10)
    assert first.lf.data[wm].mean() / first.lf.data[gm].mean() == pytest.approx(60.0 / 45.0, rel=0.05)


def test_snr_is_drawn_from_the_t1w_prior(mni_crop):
    draws = [
        simulate_low_field(
            mni_crop.t1, mni_crop.tissues, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(s), upsample=False
        ).info
        for s in range(6)
    ]
    wm = np.array([d["snr_wm"] for d in draws])
    assert len(set(wm)) == 6 and np.all((wm > 30) & (wm < 100))


def test_same_seed_same_output_other_seed_differs(mni_crop):
    params = LowFieldParams.for_factor(8, 1.0)

    def run(seed: int) -> np.ndarray:
        return simulate_low_field(mni_crop.t1, mni_crop.tissues, params, np.random.default_rng(seed)).lf_on_hf.data

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_without_tissue_maps_they_are_estimated(mni_crop):
    result = simulate_low_field(
        mni_crop.t1,
        None,
        LowFieldParams.for_factor(8, 1.0, snr_wm=60, snr_gm=50),
        np.random.default_rng(0),
        upsample=False,
    )
    assert result.info["tissue_maps"].startswith("estimated")
    assert result.info["mu_wm"] > result.info["mu_gm"]  # T1w: WM brighter than GM


def test_too_thin_volume_is_refused(mni_crop):
    thin = mni_crop.t1.crop((0, 0, 0), (96, 112, 6))
    with pytest.raises(InputError, match="too few"):
        simulate_low_field(thin, None, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0))


def test_coarser_inplane_voxel_gives_a_coarse_grid_in_the_right_place(mni_crop):
    hf = mni_crop.t1
    params = LowFieldParams.for_factor(8, 1.0, axis=2, inplane_mm=1.5, snr_wm=60.0, snr_gm=50.0)
    result = simulate_low_field(hf, mni_crop.tissues, params, np.random.default_rng(0))
    np.testing.assert_allclose(result.lf.voxel_size, [1.5, 1.5, 8.0], atol=1e-6)
    assert result.lf.shape[:2] == tuple(int(np.floor((n - 1) / 1.5)) + 1 for n in hf.shape[:2])
    # LF voxel (i, j, k) lies where HF voxel (1.5 i, 1.5 j, 8 k) lay, the same world point
    np.testing.assert_allclose(result.lf.voxel_to_world([4, 6, 2]), hf.voxel_to_world([6, 9, 16]), atol=1e-6)
    assert result.lf_on_hf.shape == hf.shape
    assert result.info["inplane_step_voxels"] == {"0": pytest.approx(1.5), "1": pytest.approx(1.5)}


def test_coarser_inplane_voxel_erases_finer_inplane_detail(mni_crop):
    """A 1-voxel checkerboard in-plane is erased by a 2 mm voxel; with the HF's own voxel it survives."""
    hf = mni_crop.t1
    i, j, _ = np.indices(hf.shape)
    pattern = np.where((i + j) % 2 == 0, 1.0, 0.5).astype(np.float32)
    striped = Volume(pattern, hf.affine)
    quiet = dict(snr_wm=1e6, snr_gm=1e6)
    fine = simulate_low_field(
        striped, mni_crop.tissues, LowFieldParams.for_factor(8, 1.0, **quiet), np.random.default_rng(0)
    )
    assert np.ptp(fine.lf_on_hf.data[20:40, 20:40, 16]) > 0.4  # a 1 mm scan keeps the checkerboard
    same = LowFieldParams.for_factor(8, 1.0, inplane_mm=0.7, **quiet)  # finer than the truth: left as it is
    np.testing.assert_array_equal(
        simulate_low_field(striped, mni_crop.tissues, same, np.random.default_rng(0)).lf.data, fine.lf.data
    )
    coarse = LowFieldParams.for_factor(8, 1.0, inplane_mm=2.0, **quiet)
    blurred = simulate_low_field(striped, mni_crop.tissues, coarse, np.random.default_rng(0)).lf_on_hf.data
    assert np.ptp(blurred[20:40, 20:40, 16]) < 0.1 * np.ptp(fine.lf_on_hf.data[20:40, 20:40, 16])


def test_inplane_voxel_must_be_positive():
    with pytest.raises(InputError, match="in-plane"):
        LowFieldParams(inplane_mm=0.0)
