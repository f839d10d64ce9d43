"""Metrics against known values, on real anatomy where a known answer allows it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffiqt.evaluation import metrics
from diffiqt.preprocess import affine_fit


def test_psnr_of_known_gaussian_noise():
    rng = np.random.default_rng(0)
    target = rng.random((40, 40, 40)).astype(np.float32)
    noisy = target + rng.normal(0, 0.01, target.shape).astype(np.float32)
    assert metrics.psnr(noisy, target, 1.0) == pytest.approx(40.0, abs=0.05)  # 10*log10(1/1e-4)
    assert metrics.psnr(target, target, 1.0) == float("inf")


def test_psnr_inside_a_mask_ignores_outside_errors():
    target = np.zeros((10, 10, 10), np.float32)
    pred = target.copy()
    pred[:5] = 1.0
    mask = np.zeros_like(target, bool)
    mask[5:] = True
    assert metrics.psnr(pred, target, 1.0, mask) == float("inf")


def test_ssim_is_one_for_identical_and_lower_for_blurred(mni_crop):
    t = mni_crop.t1.data / mni_crop.t1.data.max()
    assert metrics.ssim3d(t, t, 1.0) == pytest.approx(1.0, abs=1e-6)
    blurred = ndimage.gaussian_filter(t, 1.5)
    more_blurred = ndimage.gaussian_filter(t, 3.0)
    s1, s2 = metrics.ssim3d(blurred, t, 1.0), metrics.ssim3d(more_blurred, t, 1.0)
    assert 1.0 > s1 > s2


def test_ms_ssim_needs_a_large_enough_volume(mni):
    t = metrics.min_max(metrics.central_region(mni.t1.data))
    assert t.shape == (192, 192, 192)
    assert metrics.ms_ssim3d(t, t, 1.0) == pytest.approx(1.0, abs=1e-5)
    assert metrics.ms_ssim3d(t[:90, :90, :90], t[:90, :90, :90], 1.0) is None


def test_paper_protocol_clips_undershoot_like_strict(mni):
    truth = mni.t1.data
    undershoot = truth.copy()
    undershoot[truth == 0] = np.random.default_rng(0).normal(0, 5, int((truth == 0).sum()))  # noisy background
    clipped = np.maximum(undershoot, 0)
    paper = metrics.paper_protocol(undershoot, truth)
    assert paper["paper_psnr"] == metrics.paper_protocol(clipped, truth)["paper_psnr"]
    # Without the clip the min-max scaling would map the most negative voxel to 0 and lift the background.
    unclipped = metrics.psnr(
        metrics.min_max(metrics.central_region(undershoot)), metrics.min_max(metrics.central_region(truth)), 1.0
    )
    assert paper["paper_psnr"] > unclipped + 3


def test_dice_and_iou_of_known_masks():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:4], b[2:6] = True, True  # 400 voxels each, 200 shared
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.iou(a, b) == pytest.approx(200 / 600)


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_segmentation_agreement_is_perfect_for_the_target_and_drops_with_blur(mni_crop):
    t, mask = mni_crop.t1.data, mni_crop.mask
    same = metrics.segmentation_agreement(t, t, mask)
    assert same["seg_miou"] == pytest.approx(1.0)
    blurred = metrics.segmentation_agreement(ndimage.gaussian_filter(t, 2.0), t, mask)
    assert blurred["seg_miou"] < 0.9


def test_segmentation_of_a_low_contrast_prediction_still_finds_white_matter(mni_crop):
    t, mask = mni_crop.t1.data, mni_crop.mask
    middle = float(np.median(t[mask]))
    flat = np.where(t > middle, middle + 0.2 * (t - middle), t)  # grey/white contrast cut to a fifth
    scores = metrics.segmentation_agreement(1.1 * flat, t, mask)
    assert scores["dice_wm"] > 0.7


def test_affine_fit_matches_numpy_polyfit():
    rng = np.random.default_rng(1)
    pred = rng.normal(300, 40, (20, 20, 20))
    target = 0.7 * pred - 12 + rng.normal(0, 25, pred.shape)
    mask = rng.random(pred.shape) > 0.3
    gain, offset = affine_fit(pred, target, mask)
    expected_gain, expected_offset = np.polyfit(pred[mask], target[mask], 1)
    assert gain == pytest.approx(expected_gain, rel=1e-9) and offset == pytest.approx(expected_offset, rel=1e-9)
    assert affine_fit(np.full_like(pred, 3.0), target, mask) == pytest.approx((0.0, target[mask].mean()))


def test_fit_protocol_forgives_a_global_gain_and_offset_that_strict_counts():
    rng = np.random.default_rng(2)
    target = ndimage.gaussian_filter(rng.random((40, 40, 40)), 2.0) * 100  # smooth, so SSIM is meaningful
    mask = np.zeros(target.shape, bool)
    mask[5:35, 5:35, 5:35] = True
    pred = 2 * target + 5
    fit, strict = metrics.fit_protocol(pred, target, mask), metrics.strict_protocol(pred, target, mask)
    assert fit["fit_psnr"] > 100 and fit["fit_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert strict["psnr"] < 20 and strict["ssim"] < 0.99


def test_fit_never_scores_below_strict_for_a_noisy_prediction_at_the_right_scale(mni_crop):
    t, mask = mni_crop.t1.data, mni_crop.mask
    # Clipped at 0 like a magnitude image: strict's clipping of negatives is then a no-op and the
    # least-squares fit can only lower the masked MSE.
    noisy = np.clip(t + np.random.default_rng(3).normal(0, 10, t.shape), 0, None).astype(np.float32)
    fit, strict = metrics.fit_protocol(noisy, t, mask), metrics.strict_protocol(noisy, t, mask)
    assert fit["fit_psnr"] >= strict["psnr"] - 1e-9
    # gain ~1, offset ~0: little to remove; fit's SSIM compares the two inside the mask (zero outside)
    inside = metrics.strict_protocol(np.where(mask, noisy, 0), np.where(mask, t, 0), mask)
    assert fit["fit_ssim"] == pytest.approx(inside["ssim"], abs=0.02)  # the gain < 1 shrinks the noise a little


def test_evaluate_reports_all_protocols(mni_crop):
    t, mask = mni_crop.t1.data, mni_crop.mask
    noisy = t + np.random.default_rng(0).normal(0, 5, t.shape).astype(np.float32)
    scores = metrics.evaluate(noisy, t, mask)
    for key in ("psnr", "ssim", "fit_psnr", "fit_ssim", "paper_psnr", "paper_ms_ssim", "dice_wm", "seg_miou"):
        assert key in scores
    assert scores["paper_lpips"] is None  # no LPIPS weights offline
    assert 20 < scores["psnr"] < 60


def test_evaluate_command_writes_table_files(tmp_path, mni_crop):
    import json

    import nibabel as nib

    from conftest import run_cli

    t1 = mni_crop.t1
    nib.save(nib.Nifti1Image(t1.data, t1.affine), tmp_path / "target.nii.gz")
    nib.save(nib.Nifti1Image(ndimage.gaussian_filter(t1.data, 1.0), t1.affine), tmp_path / "pred.nii.gz")
    result = run_cli(
        "evaluate",
        "--pred",
        tmp_path / "pred.nii.gz",
        "--target",
        tmp_path / "target.nii.gz",
        "--json",
        tmp_path / "s.json",
        "--csv",
        tmp_path / "s.csv",
        "--png",
        tmp_path / "e.png",
        "--no-segmentation",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "s.json").read_text())
    assert rows[0]["psnr"] > 20 and rows[0]["ms_ssim"] is None  # the 96x112x104 crop is too small for MS-SSIM
    assert rows[0]["fit_psnr"] >= rows[0]["psnr"] and 0 < rows[0]["fit_ssim"] <= 1
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header.startswith("pred,target,psnr") and ",fit_psnr,fit_ssim," in header
    assert "fit_psnr" in result.stderr  # the table goes to the console (stderr)
    assert (tmp_path / "e.png").stat().st_size > 0
    mixed = run_cli("evaluate", "--pred", tmp_path, "--target", tmp_path / "target.nii.gz")
    assert mixed.returncode == 2 and "both be files or both be folders" in mixed.stderr
