"""Multi-scan fusion: the weights, the intensity match, the registration, the simulator's case, the command."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffiqt.errors import InputError
from diffiqt.imaging.io import Volume
from diffiqt.inference.fusion import FusionOptions, ScanEstimate, check_scans, fourier_weights, fuse, register_rigid

pytestmark = pytest.mark.usefixtures("one_thread")


def thick(truth: np.ndarray, axis: int, step: int) -> Volume:
    """Every ``step``-th slice of ``truth`` along ``axis`` (after a slice-profile blur): a thick-slice scan."""
    blurred = ndimage.gaussian_filter1d(truth, 0.75 * step / 2.3548, axis=axis)
    affine = np.eye(4)
    affine[axis, axis] = step
    return Volume(np.take(blurred, np.arange(0, truth.shape[axis], step), axis=axis), affine)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """A 48³ volume with detail in every direction (smoothed noise) over a bright block: a stand-in head."""
    rng = np.random.default_rng(0)
    detail = ndimage.gaussian_filter(rng.standard_normal((48, 48, 48)), 1.5)
    head = np.zeros((48, 48, 48), np.float32)
    head[6:42, 6:42, 6:42] = 1
    return (100 * ndimage.gaussian_filter(head, 1.0) * (1 + 3 * detail)).astype(np.float32)


def estimate(scan: Volume, truth: np.ndarray, gain: float = 1.0, offset: float = 0.0) -> ScanEstimate:
    """A stand-in for the model's output: the scan cubically upsampled (blurred along its slice axis)."""
    from diffiqt.imaging.resample import to_isotropic

    up = to_isotropic(scan, 1.0)
    return ScanEstimate(scan, up.with_data(gain * up.data + offset))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    inner = (slice(4, 40),) * 3
    return float(np.sqrt(np.mean((a[inner] - b[inner]) ** 2)))


def test_each_frequency_is_weighted_toward_the_scans_that_resolve_it():
    axial, coronal = (np.array([0.0, 0, 1]), 8.0), (np.array([0.0, 1, 0]), 8.0)
    weights = fourier_weights((32, 32, 32), np.eye(4), [axial, coronal])
    np.testing.assert_allclose(weights[0] + weights[1], 1.0, atol=1e-6)
    assert weights[0][0, 0, 0] == pytest.approx(0.5)  # the mean: both resolve it, their noise averages
    assert weights[0][0, 0, 12] < 0.01 and weights[1][0, 0, 12] > 0.99  # fine along z: only coronal has it
    assert weights[0][12, 12, 12] == pytest.approx(0.5)  # neither resolves it: the mean again


def test_fourier_fusion_of_two_orthogonal_scans_beats_each_and_their_mean_and_undoes_their_units(truth):
    axial = estimate(thick(truth, 2, 4), truth)
    coronal = estimate(thick(truth, 1, 4), truth, gain=3.0, offset=50.0)  # another scan, other units
    fourier = fuse([axial, coronal], FusionOptions("fourier", register=False))
    mean = fuse([axial, coronal], FusionOptions("mean", register=False))
    gain, offset = fourier.info["intensity_gain_offset"][1]
    assert gain == pytest.approx(1 / 3, rel=0.1) and offset == pytest.approx(-50 / 3, abs=5)
    singles = [rmse(axial.mean.data, truth), rmse((coronal.mean.data - 50) / 3, truth)]
    assert rmse(mean.mean.data, truth) < min(singles)
    assert rmse(fourier.mean.data, truth) < 0.8 * rmse(mean.mean.data, truth), (singles, rmse(mean.mean.data, truth))
    assert fourier.mean.shape == axial.mean.shape and np.allclose(fourier.mean.affine, axial.mean.affine)
    assert fourier.std.data.min() >= 0 and fourier.std.data[truth > 50].mean() > 0  # where the scans disagree


def test_registration_undoes_a_head_movement_between_scans(truth):
    pytest.importorskip("SimpleITK")
    from diffiqt.evaluation.heldout import head_motion

    reference = Volume(truth, np.eye(4))
    motion = head_motion(3.0, 2.0, centre=np.array([23.5, 23.5, 23.5]))
    moving = Volume(
        ndimage.affine_transform(truth, np.linalg.inv(motion)[:3, :3], np.linalg.inv(motion)[:3, 3], order=3), np.eye(4)
    )  # the content moved by ``motion``, the grid unchanged
    found = register_rigid(reference, moving)
    point = np.array([30.0, 15.0, 20.0, 1.0])
    assert np.linalg.norm((found @ point)[:3] - (motion @ point)[:3]) < 0.5  # mm, against 2-3 mm moved


def test_scans_that_cannot_be_fused_are_refused_in_one_line():
    scan = Volume(np.ones((32, 32, 4), np.float32), np.diag([1.0, 1, 8, 1]))
    far = Volume(scan.data, scan.affine @ np.array([[1, 0, 0, 200], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(InputError, match="at least 2 scans"):
        check_scans([scan])
    with pytest.raises(InputError, match="not scans of one session"):
        check_scans([scan, far])
    check_scans([scan, scan])


@pytest.mark.slow  # whole MNI152 simulations, ~15 s: make test-all
def test_the_multi_scan_case_scans_one_brain_along_each_axis_with_its_own_noise_and_motion():
    from diffiqt.evaluation.heldout import multi_scan_case

    still = multi_scan_case("mni152", axes=(2, 1), seed=5)
    assert [int(np.argmax(s.voxel_size)) for s in still.scans] == [2, 1]
    assert still.scans[0] is still.case.lf and still.case.simulation["seed"] == 5
    moved = multi_scan_case("mni152", axes=(2, 1), seed=5, motion={1: (3.0, 2.0)})
    np.testing.assert_array_equal(moved.scans[0].data, still.scans[0].data)
    np.testing.assert_array_equal(moved.scans[1].affine, still.scans[1].affine)  # the scanner does not know
    assert not np.allclose(moved.scans[1].data, still.scans[1].data, atol=1.0)
    with pytest.raises(InputError, match="reference"):
        multi_scan_case("mni152", axes=(2, 1), motion={0: (1.0, 0.0)})


def test_the_enhance_command_fuses_several_scans_and_refuses_bad_sets(tmp_path):
    import json

    from typer.testing import CliRunner

    from conftest import run_cli
    from diffiqt.cli import app
    from diffiqt.imaging.io import load_volume, save_volume

    rng = np.random.default_rng(1)
    head = np.zeros((64, 64, 64), np.float32)
    head[8:56, 8:56, 8:56] = 100 + 10 * ndimage.gaussian_filter(rng.standard_normal((48, 48, 48)), 2)
    files = [save_volume(thick(head, axis, 8), tmp_path / f"{name}.nii.gz") for axis, name in ((2, "ax"), (1, "cor"))]
    far_affine = np.diag([8.0, 1, 1, 1])
    far_affine[0, 3] = 500.0  # half a metre away: another session's or subject's field of view
    far = save_volume(Volume(thick(head, 0, 8).data, far_affine), tmp_path / "far.nii.gz")
    out = tmp_path / "fused.nii.gz"
    result = run_cli("enhance", *files, far, "-o", out, "--model", checkpoint(tmp_path), "--steps", "1")
    assert result.returncode == 2 and "not scans of one session" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    for scans, words in (([files[0], files[0]], "twice"), ([files[0], tmp_path], "not folders")):
        refused = CliRunner().invoke(app, ["enhance", *map(str, scans), "-o", str(out)])
        assert isinstance(refused.exception, InputError) and words in str(refused.exception)
    result = run_cli("enhance", *files, "-o", out, "--model", checkpoint(tmp_path), "--steps", "1", "--no-register")
    assert result.returncode == 0, result.stderr
    fused, std = load_volume(out), load_volume(tmp_path / "fused_std.nii.gz", check_content=False)
    assert fused.shape == (64, 64, 64) and std.shape == fused.shape and std.data.min() >= 0
    sidecar = json.loads((tmp_path / "fused.json").read_text())
    assert sidecar["method"] == "fourier" and sidecar["scans"] == 2 and sidecar["register"] is False


def checkpoint(folder):
    """A checkpoint of an untrained small network (made once per folder)."""
    import torch

    from diffiqt import nets
    from diffiqt.config import TrainConfig
    from diffiqt.models.checkpoint import save_checkpoint

    run = folder / "run"
    if not run.exists():
        torch.manual_seed(0)
        net = nets.build_network("small", attention=False, deep_feature=False).eval()
        meta = {"network": nets.network_config(net), "train": TrainConfig().to_dict()}
        save_checkpoint(run, 1, meta, net, net, None)
    return run
