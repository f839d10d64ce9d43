"""The linear IQT baseline: exact least squares, the forward's phase convention and padding, and a real gain
over cubic interpolation on held-out MNI152 anatomy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffiqt.anatomy.brains import crop_sample
from diffiqt.config import AugmentConfig, DataConfig
from diffiqt.errors import ConfigError
from diffiqt.evaluation.metrics import psnr
from diffiqt.nets.linear_iqt import LinearIQT, NormalEquations
from diffiqt.training.loop import fit_linear_iqt, integral_factor, slice_last_pair
from diffiqt.training.pairs import split_anterior, trim_to_head

pytestmark = pytest.mark.usefixtures("one_thread")

F8 = 8


def reference_filter(
    cond: np.ndarray, weight: np.ndarray, bias: np.ndarray, factor: int, radius: int = 2, before: int = 1
) -> np.ndarray:
    """The filter's definition written out with shifted copies: out[x, y, k·f+j] = b_j +
    Σ w_j[a, b, c] · lf0[x+a-r, y+b-r, k+c-before], lf0 = cond[:, :, ::f] and zero beyond the volume."""
    x, y, z = cond.shape
    lf0 = cond[:, :, ::factor].astype(np.float64)
    k = lf0.shape[2]
    depth = weight.shape[-1]
    padded = np.pad(lf0, [(radius, radius), (radius, radius), (before, depth - 1 - before)])
    out = np.zeros((x, y, k, factor)) + bias
    side = 2 * radius + 1
    for a in range(side):
        for b in range(side):
            for c in range(depth):
                out += padded[a : a + x, b : b + y, c : c + k, None] * weight[:, 0, a, b, c]
    return out.reshape(x, y, k * factor)[:, :, :z]


def random_filter(rng: np.random.Generator, factor: int = F8) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(factor, 1, 5, 5, 4)), rng.normal(size=factor)


def test_fit_recovers_a_known_linear_filter_exactly():
    rng = np.random.default_rng(0)
    weight, bias = random_filter(rng)
    pairs = []
    for shape in [(12, 11, 61), (9, 13, 48)]:  # 61: the last axis is not a multiple of 8 (padded in the fit too)
        cond = rng.uniform(0.0, 1.0, size=shape)
        mask = rng.random(shape) < 0.7
        pairs.append((cond, reference_filter(cond, weight, bias, F8), mask))
    net = LinearIQT.fit(pairs, F8)
    assert net.fit_info["pairs"] == 2
    np.testing.assert_allclose(net.weight.double().numpy(), weight, atol=1e-6)
    np.testing.assert_allclose(net.bias.double().numpy(), bias, atol=1e-6)
    # ... also from a random subset of the voxels (an exact model stays exact)
    sub = LinearIQT.fit(pairs, F8, max_voxels=300, seed=3)
    assert sub.fit_info["voxels"] == 600
    np.testing.assert_allclose(sub.weight.double().numpy(), weight, atol=1e-6)


def test_forward_applies_the_filter_with_the_phase_convention():
    rng = np.random.default_rng(1)
    weight, bias = random_filter(rng)
    net = LinearIQT(F8)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(weight))
        net.bias.copy_(torch.from_numpy(bias))
    weight, bias = net.weight.double().numpy(), net.bias.double().numpy()  # as stored (float32)
    cond = rng.uniform(0.0, 1.0, size=(10, 9, 64))
    out = net(torch.from_numpy(cond).double()[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, reference_filter(cond, weight, bias, F8), atol=1e-10)


def test_forward_keeps_the_shape_and_pads_the_last_axis_at_its_far_end():
    rng = np.random.default_rng(2)
    net = LinearIQT(F8)
    weight, bias = random_filter(rng)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(weight))
        net.bias.copy_(torch.from_numpy(bias))
    x = torch.rand(2, 1, 7, 6, 50)
    out = net(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.cat([x, torch.zeros(2, 1, 7, 6, 6)], dim=-1)  # 50 -> 56, zeros at the far end
    torch.testing.assert_close(out, net(padded)[..., :50])
    np.testing.assert_allclose(
        out[1, 0].double().numpy(), reference_filter(x[1, 0].double().numpy(), weight, bias, F8), atol=1e-5
    )
    # A multiple of f is not padded; the halo and the chunk grid keep the slice phase.
    assert net(padded).shape == padded.shape
    assert net.receptive_field == 16 and net.cell_shape[2] % F8 == 0
    assert (net.needs_time, net.in_channels, net.cross_batch, net.slice_fold) == (False, 1, False, F8)


def test_unfitted_filter_is_linear_interpolation_between_thick_slices():
    lf0 = torch.tensor([1.0, 3.0, 7.0])
    x = torch.zeros(1, 1, 5, 5, 24)
    x[..., ::8] = lf0
    out = LinearIQT(F8)(x)[0, 0, 2, 2]
    expected = np.interp(np.arange(24), [0, 8, 16, 24], [1.0, 3.0, 7.0, 0.0])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from diffiqt.models.checkpoint import state_tensors

    net = LinearIQT(F8)
    with torch.no_grad():
        net.weight.normal_()
        net.bias.normal_()
    save_file(state_tensors(net), tmp_path / "w.safetensors")
    other = LinearIQT(F8)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = torch.rand(1, 1, 8, 8, 32)
    torch.testing.assert_close(other(x), net(x))
    assert set(net.state_dict()) == {"weight", "bias"}


def test_factor_must_be_whole():
    assert integral_factor(DataConfig(lf_factor=8.0)) == 8
    with pytest.raises(ConfigError, match="whole-voxel"):
        integral_factor(DataConfig(lf_factor=7.5))
    with pytest.raises(ConfigError, match="no mask voxel"):
        NormalEquations(F8, (5, 5, 4), 1).solve()


@pytest.fixture(scope="module")
def mni_halves(mni):
    """Posterior 65% (training) and anterior 35% (held out) of the MNI head, each trimmed with a background
    margin (the filter, like the networks, sees zeros beyond the volume; a crop through the brain would put
    tissue against that zero border)."""
    return tuple(trim_to_head(s) for s in split_anterior(mni, 0.35, 32))


def _cfg(**kw) -> DataConfig:
    """x8 axial, no augmentation, SNRs fixed at the T1w prior's mean: the held-out pair has the contrast change
    the filter was fitted on (with SNRs drawn per pair it only learns their average change)."""
    return DataConfig(
        lf_factor=8.0, lf_axis=2, block_size=32, snr_wm=64.5, snr_gm=54.14, augment=AugmentConfig(enabled=False), **kw
    )


def test_fit_beats_cubic_on_held_out_mni_anatomy(mni_halves):
    train, held = mni_halves
    cfg = _cfg()
    net = fit_linear_iqt([train], cfg, pairs=3, seed=0)
    assert net.fit_info["pairs"] == 3 and net.fit_info["axes"] == [2, 2, 2]
    cond, target, mask = slice_last_pair([held], cfg, [12345], axis=2)
    with torch.no_grad():
        pred = net(torch.from_numpy(np.ascontiguousarray(cond))[None, None])[0, 0].numpy()
    peak = float(target[mask].max())
    gain = psnr(pred, target, peak, mask) - psnr(cond, target, peak, mask)
    assert gain > 0.7, gain  # measured: +1.40 dB


def test_random_slice_axis_per_pair(mni_crop):
    small = crop_sample(mni_crop, (16, 24, 20), (80, 88, 84))  # 64³ of real anatomy
    cfg = replace(_cfg(), lf_axis=None)
    net = fit_linear_iqt([small], cfg, pairs=3, seed=1)
    assert len(net.fit_info["axes"]) == 3 and set(net.fit_info["axes"]) <= {0, 1, 2}
    assert torch.isfinite(net.weight).all() and torch.isfinite(net.bias).all()
