"""The network on the low-field grid: the slice fold, cross-batch exactness on the folded grid, slice-aligned
training blocks, enhancement that turns the scan's slice axis last and back, and the test-brain guard."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffiqt import nets
from diffiqt.anatomy.brains import TissueMaps
from diffiqt.config import DataConfig, resolve, validate
from diffiqt.diffusion import Denoiser
from diffiqt.errors import ConfigError, InputError
from diffiqt.imaging.resample import to_isotropic
from diffiqt.inference.enhance import EnhanceOptions, enhance, head_box, model_grid_mm, slice_axis
from diffiqt.inference.tiling import ChunkedDenoiser, chunk_size
from diffiqt.models.loading import Model
from diffiqt.nets.crossbatch import fold_last_axis, unfold_last_axis
from diffiqt.simulation import LowFieldParams, simulate_low_field
from diffiqt.training.pairs import block_shape, random_corner, simulate_pair, training_and_validation

pytestmark = pytest.mark.usefixtures("one_thread")

# Narrow, with every mechanism, on 8³ cells of the folded grid (8 x 8 x 32 input voxels at fold 4).
FOLDED = {
    "widths": [8, 16],
    "res_blocks": 1,
    "embed_dim": 16,
    "heads": 2,
    "deep_feature_width": 16,
    "time_dim": 16,
    "patch_size": 8,
    "slice_fold": 4,
}


@pytest.fixture(scope="module")
def folded_net():
    torch.manual_seed(0)
    net = nets.build_network("paper", **FOLDED).eval()
    with torch.no_grad():  # random weights everywhere, so that zero-initialised branches do not hide errors
        for parameter in net.parameters():
            parameter.copy_(torch.randn_like(parameter) / max(1, parameter[0].numel()) ** 0.5)
    return net


def test_fold_puts_the_thin_slices_of_one_thick_slice_into_channels_and_unfold_inverts_it():
    x = torch.arange(2 * 3 * 2 * 16, dtype=torch.float32).reshape(1, 2, 3, 2, 16)
    folded = fold_last_axis(x, 8)
    assert folded.shape == (1, 16, 3, 2, 2)
    # channel c·8 + j at folded position k holds input position 8k + j of channel c
    assert torch.equal(folded[0, 1 * 8 + 5, 2, 1, 1], x[0, 1, 2, 1, 8 + 5])
    assert torch.equal(unfold_last_axis(folded, 8), x)
    with pytest.raises(ValueError, match="multiple of the fold"):
        fold_last_axis(x[..., :15], 8)


def test_folded_network_keeps_shapes_and_refuses_what_it_cannot_do(folded_net):
    x = torch.randn(1, 2, 20, 9, 50)
    with torch.no_grad():
        out = folded_net(x, torch.tensor([0.0]))
    assert out.shape == (1, 1, 20, 9, 50)
    assert folded_net.cell_shape == (8, 8, 32)
    with pytest.raises(ValueError, match="volume layout"):
        folded_net(torch.randn(27, 2, 8, 8, 8), torch.zeros(27), layout="patches")
    with pytest.raises(ConfigError, match="cross_batch"):
        nets.build_network("paper", **FOLDED, cross_batch=False)


def test_cross_batch_stays_exact_on_the_folded_grid(folded_net):
    """Chunks carrying the receptive-field halo give the whole volume's result, cell for cell."""
    denoiser = Denoiser(folded_net, residual_sigma=0.2)
    cell = np.array(folded_net.cell_shape)
    cond, x_t = torch.randn(1, 1, 32, 16, 128), torch.randn(1, 1, 32, 16, 128)
    chunked = ChunkedDenoiser(denoiser, chunk=cell * [2, 1, 1], halo=folded_net.receptive_field, cell=cell)
    short = ChunkedDenoiser(denoiser, chunk=cell * [2, 1, 1], halo=0, cell=cell)
    with torch.no_grad():
        whole, pieces, seams = denoiser(cond, x_t, 0.4), chunked(cond, x_t, 0.4), short(cond, x_t, 0.4)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)
    assert (seams - whole).abs().max() > 1e-3  # the test can fail: without a halo the chunks differ


def test_chunks_follow_per_axis_cells_and_fit_the_budget():
    edge = chunk_size((160, 160, 256), 64 * 64 * 128, (16, 16, 128))
    assert np.all(edge % [16, 16, 128] == 0) and np.prod(edge) <= 64 * 64 * 128
    assert chunk_size((64, 64, 128), None, (16, 16, 128)) is None
    with pytest.raises(ConfigError, match="smaller than one"):
        chunk_size((160, 160, 256), 1000, (16, 16, 128))


def test_training_blocks_have_the_slice_axis_last_and_start_on_a_thick_slice(mni_crop):
    cfg = DataConfig(block_size=32, slice_block=64, lf_axis=0, lf_factor=8.0)
    pair = simulate_pair(mni_crop, cfg, np.random.default_rng(0))
    # axis 0 (96 voxels) became the last axis; the other two keep their order
    assert pair.target.shape == (112, 104, 96) and pair.slice_step == 8.0
    rng = np.random.default_rng(1)
    corners = [random_corner(pair, block_shape(cfg), rng) for _ in range(20)]
    assert all(c[-1] % 8 == 0 and c[-1] + 64 <= 96 for c in corners)


def test_other_spacings_reach_a_folded_network_with_fold_voxels_per_thick_slice(mni_crop):
    """x4 of 1 mm for a network folding 8: both images go onto 0.5 mm voxels along the slice axis, the scan's
    thick slices (and the truth where they lie) on every 8th voxel, as enhancement would hand them over."""
    cfg = DataConfig(block_size=32, slice_block=64, lf_axis=0, lf_factor=8.0, lf_factors=[4.0])
    pair = simulate_pair(mni_crop, cfg, np.random.default_rng(0))
    replay = np.random.default_rng(0)
    replay.choice(cfg.lf_factors)  # the draws simulate_pair made before simulating
    params = LowFieldParams.for_factor(4.0, 1.0, axis=0)
    lf = simulate_low_field(mni_crop.t1, mni_crop.tissues, params, replay, upsample=False).lf.data
    assert pair.slice_step == 8.0 and pair.target.shape == (112, 104, 8 * lf.shape[0])
    np.testing.assert_allclose(pair.cond[..., ::8] * pair.scale, np.moveaxis(lf, 0, -1), atol=1e-3)
    np.testing.assert_allclose(pair.target[..., ::8] * pair.scale, np.moveaxis(mni_crop.t1.data[::4], 0, -1), atol=1e-3)
    # between thick slices the truth is interpolated, not repeated: the stretched anatomy is smooth
    assert not np.allclose(pair.target[..., 1::8], pair.target[..., ::8])


@pytest.mark.parametrize("lf_factors", [[], [5.0]])
def test_inplane_voxel_sizes_train_on_the_truths_inplane_grid(mni_crop, lf_factors):
    """A pair drawn at a coarser in-plane voxel: the scan is simulated on that grid and resampled back onto the
    truth's, so the pair keeps its shape and the truth, while the scan loses in-plane detail."""
    base = DataConfig(
        block_size=32, slice_block=64, lf_axis=2, lf_factor=8.0, lf_factors=lf_factors, snr_wm=1e6, snr_gm=1e6
    )
    cfg = replace(base, inplane_mm=[2.0, 2.0])
    sharp, coarse = (
        simulate_pair(mni_crop, base, np.random.default_rng(0)),
        simulate_pair(mni_crop, cfg, np.random.default_rng(0)),
    )
    assert coarse.target.shape == sharp.target.shape and coarse.slice_step == sharp.slice_step == 8.0
    np.testing.assert_allclose(coarse.target * coarse.scale, sharp.target * sharp.scale, atol=1e-4)
    inplane_detail = [float(np.abs(np.diff(p.cond[..., ::8] * p.scale, axis=0)).mean()) for p in (sharp, coarse)]
    assert inplane_detail[1] < 0.9 * inplane_detail[0], inplane_detail  # 0.83 at 2 mm


def test_a_folded_network_trains_on_its_fold_as_the_nominal_factor(folded_net):
    from diffiqt.training.loop import resolve_layout

    cfg = validate(resolve("cpu-lowfield"))
    cfg = replace(cfg, data=replace(cfg.data, block_size=32, slice_block=64))
    assert resolve_layout(folded_net, replace(cfg, data=replace(cfg.data, lf_factor=4.0))) == "volume"
    with pytest.raises(ConfigError, match="set data.lf_factor to 4"):
        resolve_layout(folded_net, cfg)  # the preset's x8 against a network folding 4


def test_enhance_turns_the_slice_axis_last_for_a_folded_network_and_back(mni):
    """A network that reads each folded cell's phases: enhancement must hand it the slice axis last,
    aligned to the thick slices, and put the result back in the scan's orientation."""
    lower, upper = (60, 70, 50), (124, 134, 130)
    hf = mni.t1.crop(lower, upper)
    maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()})
    params = LowFieldParams(thickness_mm=3.0, gap_mm=1.0, axis=0, snr_wm=1e6, snr_gm=1e6)  # x4 sagittal
    lf = simulate_low_field(hf, maps, params, np.random.default_rng(0), upsample=False).lf
    assert slice_axis(lf) == 0

    class PhaseProbe(torch.nn.Module):
        """Returns, at every voxel, the condition of the thick-slice voxel of its folded cell (phase 0)."""

        needs_time, slice_fold, patch_size, cell_shape, receptive_field = True, 4, 8, (8, 8, 32), 0

        def forward(self, x, logsnr, layout="volume"):
            phase0 = fold_last_axis(x[:, :1], 4)[:, :1]
            return phase0.repeat_interleave(4, dim=-1)

    result = enhance(lf, Model(PhaseProbe(), voxel_mm=1.0, steps=1), EnhanceOptions())
    out, cond = result.mean.data, to_isotropic(lf, 1.0).data
    box_lo, box_hi = np.array(result.info["box_lower"]), np.array(result.info["box_upper"])
    assert box_lo[0] % 4 == 0  # the box starts on a thick slice
    inside = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(box_lo, box_hi, cond.shape))
    expected = np.repeat(cond[inside][::4], 4, axis=0)[: out[inside].shape[0]]
    # the output along the scan's own slice axis (0) repeats each thick slice: it was folded along axis 0
    np.testing.assert_allclose(out[inside], expected, rtol=1e-5, atol=1e-4 * np.abs(cond).max())


def test_a_folded_network_gets_fold_voxels_per_thick_slice_whatever_the_spacing(mni):
    """A 6 mm scan for a fold-4 network runs on 1.5 mm voxels along its slice axis, thick slices on the
    folded cells' phase 0, and comes back on the 1 mm isotropic grid."""
    lower, upper = (60, 70, 50), (124, 134, 130)
    hf = mni.t1.crop(lower, upper)
    maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()})
    params = LowFieldParams(thickness_mm=4.5, gap_mm=1.5, axis=0, snr_wm=1e6, snr_gm=1e6)  # 6 mm sagittal
    lf = simulate_low_field(hf, maps, params, np.random.default_rng(0), upsample=False).lf
    seen = []

    class Recorder(torch.nn.Module):
        needs_time, slice_fold, patch_size, cell_shape, receptive_field = True, 4, 8, (8, 8, 32), 0

        def forward(self, x, logsnr, layout="volume"):
            seen.append(x[0, 0].clone())
            return x[:, :1]

    model = Model(Recorder(), voxel_mm=1.0, steps=1)
    np.testing.assert_allclose(model_grid_mm(lf, model), [1.5, 1.0, 1.0])
    result = enhance(lf, model, EnhanceOptions())
    assert result.info["network_grid_mm"] == [1.5, 1.0, 1.0]
    assert result.info["box_lower"][0] % 4 == 0
    grid = to_isotropic(lf, np.array([1.5, 1.0, 1.0]))
    np.testing.assert_allclose(grid.data[::4], lf.data, rtol=1e-4, atol=1e-3 * lf.data.max())  # slices on phase 0
    assert seen[0].shape[-1] % 32 == 0  # the slice axis went last, in whole cells
    iso = to_isotropic(lf, 1.0)
    assert result.mean.shape == iso.shape and np.allclose(result.mean.affine, iso.affine)
    head = iso.data > 0.2 * iso.data.max()
    error = np.abs(result.mean.data - iso.data)[head].mean() / iso.data[head].mean()
    assert error < 0.02  # an identity network gives back the interpolated scan
    assert model_grid_mm(to_isotropic(lf, 1.0), model).tolist() == [1.0, 1.0, 1.0]  # no thick slices: isotropic


def test_head_box_can_start_on_the_slice_phase():
    lf = np.zeros((70, 80, 90), np.float32)
    lf[20:50, 10:70, 33:41] = 100.0
    lower, upper = head_box(lf, np.array([16, 16, 64]), margin=2, phase=(2, 8))
    assert lower[2] % 8 == 0 and np.all((upper - lower) % [16, 16, 64] == 0)
    assert lower[2] <= 31 and upper[2] >= 43


def test_training_refuses_the_test_brains_and_every_preset_keeps_them_out():
    from diffiqt.anatomy.brains import TEST_BRAINS
    from diffiqt.config import list_presets

    for spec in TEST_BRAINS:
        with pytest.raises(InputError, match="test brain"):
            training_and_validation(DataConfig(sources=["mni152"], val_sources=[spec]))
        with pytest.raises(InputError, match="test brain"):
            training_and_validation(DataConfig(sources=[spec]))
    for preset in list_presets():
        cfg = validate(resolve(preset))
        assert not set(TEST_BRAINS) & {*cfg.data.sources, *cfg.data.val_sources}, preset


def test_mean_fraction_draws_blocks_at_t_one():
    from diffiqt.config import DiffusionConfig
    from diffiqt.training.loop import batch_loss

    seen = []

    class Recorder(torch.nn.Module):
        needs_time = True

        def forward(self, x, logsnr, layout="volume"):
            seen.append(logsnr.clone())
            return x[:, :1]

    batch = {"target": torch.zeros(64, 1, 4, 4, 4), "cond": torch.zeros(64, 1, 4, 4, 4)}
    torch.manual_seed(0)
    batch_loss(Recorder(), True, batch, "volume", DiffusionConfig(mean_fraction=0.5))
    at_one = (seen[0] <= -14.99).float().mean()
    assert 0.3 < at_one < 0.7
    seen.clear()
    batch_loss(Recorder(), True, batch, "volume", DiffusionConfig())
    assert (seen[0] <= -14.99).float().mean() < 0.1
