"""Train a tiny model on real anatomy, enhance a held-out scan, write it, and check quality; report the uncertainty."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import spearmanr

import tiny_net
from diffiqt import config as configs
from diffiqt.evaluation.metrics import psnr
from diffiqt.imaging.io import save_volume
from diffiqt.inference.enhance import EnhanceOptions, enhance
from diffiqt.models.loading import load_model
from diffiqt.simulation import LowFieldParams, simulate_low_field
from diffiqt.training import pairs
from diffiqt.training.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """80 steps of the tiny diffusion network on the training part of a real MNI crop (as in test_train)."""
    patcher = pytest.MonkeyPatch()
    tiny_net.install(patcher)
    cfg = configs.resolve(
        assignments=tiny_net.TINY_TRAINING
        + (
            "steps=80",
            'network.overrides={"width": 8}',
            "val_every=1000",
            "checkpoint_every=1000",
            "data.val_blocks=4",
            "diffusion.sample_steps=20",
            "optim.lr=1e-3",
        )
    )
    run = tmp_path_factory.mktemp("e2e") / "run"
    train(cfg, run, progress=False)
    _, held_out = pairs.training_and_validation(cfg.data)
    yield run, held_out[0]
    patcher.undo()


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_enhancing_a_held_out_scan_beats_interpolation_and_uncertainty_tracks_error(trained, tmp_path):
    run, sample = trained
    lf = simulate_low_field(sample.t1, sample.tissues, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(11))
    model = load_model(run)
    result = enhance(lf.lf, model, EnhanceOptions(steps=20, samples=4, seed=0))

    written = nib.load(save_volume(result.mean, tmp_path / "enhanced.nii.gz"))
    np.testing.assert_allclose(written.affine, sample.t1.affine, atol=1e-5)
    n = sample.t1.shape[2]
    enhanced, std = result.mean.data[..., :n], result.std.data[..., :n]
    assert enhanced.shape == sample.t1.shape

    mask, truth = sample.mask, sample.t1.data
    scale = float(np.percentile(truth[mask], 99.5))
    ours, interpolated = psnr(enhanced, truth, scale, mask), psnr(lf.lf_on_hf.data, truth, scale, mask)
    rho = spearmanr(std[mask], np.abs(enhanced - truth)[mask]).statistic
    print(
        f"held-out PSNR: enhanced {ours:.2f} dB, cubic interpolation {interpolated:.2f} dB; "
        f"Spearman rho(std, |error|) = {rho:.3f}"
    )
    assert ours > interpolated + 0.5
    # rho is reported, not asserted: this 80-step tiny model gives rho ~ 0.015 (see issue 5's note).
    assert std.min() >= 0 and std.max() > 0
