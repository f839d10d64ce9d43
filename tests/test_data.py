"""The data pipeline on real anatomy (a crop of the MNI152 brain): pairs, blocks, streams, normalisation."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffiqt import preprocess
from diffiqt.anatomy import brains
from diffiqt.config import AugmentConfig, DataConfig
from diffiqt.errors import ConfigError, InputError
from diffiqt.training import pairs

NO_AUGMENT = AugmentConfig(enabled=False)


def small_cfg(**kw) -> DataConfig:
    return replace(
        DataConfig(block_size=24, pool_size=2, refresh_every=2, num_workers=0, val_blocks=2, augment=NO_AUGMENT), **kw
    )


@pytest.fixture(scope="module")
def pair(mni_crop):
    return pairs.simulate_pair(mni_crop, small_cfg(), np.random.default_rng(0))


def test_normalise_is_inverted_by_denormalise_for_arrays_and_tensors():
    x = np.random.default_rng(0).uniform(0, 300, (5, 6, 7)).astype(np.float32)
    assert np.allclose(preprocess.denormalise(preprocess.normalise(x, 123.0), 123.0), x, rtol=1e-6)
    t = torch.from_numpy(x)
    assert torch.allclose(preprocess.denormalise(preprocess.normalise(t, 123.0), 123.0), t, rtol=1e-6)
    assert preprocess.normalise(0.0, 123.0) == 0.0  # background stays zero


def test_scale_comes_from_the_lf_alone_and_maps_bright_tissue_to_one(pair):
    head = pair.cond[pair.mask]
    assert np.percentile(head, preprocess.SCALE_PERCENTILE) == pytest.approx(1.0, abs=1e-4)
    assert 0.5 < np.percentile(pair.target[pair.mask], 99) < 1.5  # HF on the same scale
    lf = pair.cond * pair.scale
    assert preprocess.lf_scale(lf) == pytest.approx(pair.scale, rel=1e-5)  # recomputable at inference


def test_pair_is_consistent_lf_is_a_blurred_hf(pair):
    assert pair.target.shape == pair.cond.shape == pair.mask.shape
    corr = np.corrcoef(pair.target[pair.mask], pair.cond[pair.mask])[0, 1]
    assert corr > 0.8
    # thick slices: the LF varies much less along the slice axis (2) than in-plane
    lf_z, lf_x = np.abs(np.diff(pair.cond, axis=2)).mean(), np.abs(np.diff(pair.cond, axis=0)).mean()
    assert lf_z < 0.6 * lf_x


def test_random_slice_axis_varies_between_pairs(mni_crop):
    """lf_axis=None: each pair gets thick slices along a random axis (axial, coronal or sagittal scans)."""
    flattest = set()
    for seed in range(8):
        cond = pairs.simulate_pair(mni_crop, small_cfg(lf_axis=None), np.random.default_rng(seed)).cond
        flattest.add(int(np.argmin([np.abs(np.diff(cond, axis=a)).mean() for a in range(3)])))
    assert len(flattest) >= 2


def test_foreground_threshold():
    lf = np.zeros((10, 10, 10), np.float32)
    lf[2:8, 2:8, 2:8] = 100.0
    assert preprocess.foreground(lf).sum() == 216


def test_blocks_are_drawn_inside_the_head(pair):
    rng = np.random.default_rng(1)
    for _ in range(20):
        corner = pairs.random_corner(pair, (24, 24, 24), rng)
        target, cond, mask = pairs.cut_block(pair, corner, (24, 24, 24))
        assert target.shape == cond.shape == (24, 24, 24)
        assert mask[12, 12, 12] or mask.mean() > 0.2  # the centre is in the head unless clipped at an edge


def test_small_volumes_are_padded_to_a_block(mni_crop):
    small = brains.crop_sample(mni_crop, (20, 20, 0), (60, 60, 104))
    p = pairs.simulate_pair(small, small_cfg(block_size=48), np.random.default_rng(0))
    assert p.target.shape == (48, 48, 104) and p.cond[45:, :, :].max() == 0.0


def test_pool_refresh_is_round_robin():
    serials = [[pairs.pooled_pair_serial(slot, n, 3) for slot in range(3)] for n in range(5)]
    assert serials == [[0, 1, 2], [3, 1, 2], [3, 4, 2], [3, 4, 5], [6, 4, 5]]


@pytest.fixture(scope="module")
def tiny_brain(mni_crop):
    """A 48x56x64 piece of real anatomy: simulations in a few hundred milliseconds."""
    return brains.crop_sample(mni_crop, (24, 28, 20), (72, 84, 84))


def _batches(stream, n):
    it = iter(pairs.make_loader(stream))
    return [next(it) for _ in range(n)]


def test_stream_is_deterministic_and_resumes_exactly(tiny_brain):
    cfg = small_cfg()
    full = _batches(pairs.BlockStream([tiny_brain], cfg, 2, seed=5), 5)
    again = _batches(pairs.BlockStream([tiny_brain], cfg, 2, seed=5), 5)
    resumed = _batches(pairs.BlockStream([tiny_brain], cfg, 2, seed=5, start_batch=3), 2)
    other_rank = _batches(pairs.BlockStream([tiny_brain], cfg, 2, seed=5, rank=1), 1)
    assert full[0]["target"].shape == (2, 1, 24, 24, 24)
    for a, b in zip(full, again):
        assert torch.equal(a["cond"], b["cond"])
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["cond"], b["cond"])
    assert not torch.equal(full[0]["cond"], other_rank[0]["cond"])


def test_stream_with_worker_processes_resumes_exactly_at_any_batch(tiny_brain):
    cfg = small_cfg(num_workers=2)
    full = _batches(pairs.BlockStream([tiny_brain], cfg, 1, seed=2), 6)
    resumed = _batches(pairs.BlockStream([tiny_brain], cfg, 1, seed=2, start_batch=3), 3)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["cond"], b["cond"])


def test_augmentation_moves_image_and_tissue_maps_together(mni_crop):
    aug = AugmentConfig(degrees=10, scales=0.1, elastic_probability=0.0)
    a = pairs.augment(mni_crop, aug, seed=3)
    b = pairs.augment(mni_crop, aug, seed=3)
    c = pairs.augment(mni_crop, aug, seed=4)
    assert np.array_equal(a.t1.data, b.t1.data)
    assert not np.array_equal(a.t1.data, c.t1.data) and not np.array_equal(a.t1.data, mni_crop.t1.data)
    # after the same warp, white matter is still where the image is bright
    wm, t1 = a.tissues.wm.data > 0.9, a.t1.data
    gm = a.tissues.gm.data > 0.9
    assert t1[wm].mean() > 1.15 * t1[gm].mean()
    assert a.tissues.wm.data.min() >= 0 and a.tissues.wm.data.max() <= 1


def test_augmentation_does_not_touch_the_global_torch_generator(mni_crop):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    pairs.augment(mni_crop, AugmentConfig(elastic_probability=0.0), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_anterior_holdout_is_disjoint_and_holds_a_block(mni_crop):
    train, val = pairs.split_anterior(mni_crop, 0.35, 24)
    assert train.t1.shape[1] + val.t1.shape[1] == mni_crop.t1.shape[1]
    assert val.mask.any(axis=(0, 2)).sum() >= 24
    # world positions: validation lies anterior (+y) of everything used for training
    assert val.t1.voxel_to_world([0, 0, 0])[1] > train.t1.voxel_to_world([0, train.t1.shape[1] - 1, 0])[1]
    with pytest.raises(ConfigError, match="val_sources"):
        pairs.split_anterior(mni_crop, 0.35, 100)


def test_training_and_validation_from_config(mni):
    cfg = small_cfg(crop=[[50, 146], [40, 180], [40, 136]])
    train, val = pairs.training_and_validation(cfg)
    assert len(train) == len(val) == 1
    blocks = pairs.validation_blocks(val, cfg, seed=0)
    assert blocks["target"].shape == (2, 1, 24, 24, 24) and blocks["mask"].dtype == torch.bool


def test_validation_blocks_stay_at_the_nominal_factor_and_voxel(mni_crop):
    """A run that trains on a spread of spacings and in-plane voxels validates on the blocks a run without one
    validates on, so that its curve can be compared with the curve of the run it continues."""
    cfg = small_cfg()
    spread = replace(cfg, lf_factors=[4.0, 5.0], inplane_mm=[1.5, 2.0])
    nominal, drawn = (
        pairs.validation_blocks([mni_crop], cfg, seed=0),
        pairs.validation_blocks([mni_crop], spread, seed=0),
    )
    for key in nominal:
        torch.testing.assert_close(drawn[key], nominal[key])


def test_unknown_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        brains.load_sources([str(tmp_path / "missing.nii.gz")])
