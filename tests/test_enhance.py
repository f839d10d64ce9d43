"""Whole-volume enhancement: geometry, chunked = whole, uncertainty, and the command's contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffiqt import nets
from diffiqt.anatomy.brains import TissueMaps
from diffiqt.diffusion import Denoiser
from diffiqt.errors import ConfigError
from diffiqt.inference.enhance import EnhanceOptions, enhance, extract, head_box, insert
from diffiqt.inference.tiling import ChunkedDenoiser, chunk_size
from diffiqt.models.loading import Model
from diffiqt.simulation import LowFieldParams, simulate_low_field


@pytest.fixture(scope="module")
def lf_scan(mni):
    """An x8 LF scan of a 40x48x64 piece of the real MNI brain, and its HF truth."""
    lower, upper = (70, 90, 60), (110, 138, 124)
    hf = mni.t1.crop(lower, upper)
    maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()})
    result = simulate_low_field(hf, maps, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0))
    return result.lf, hf


@pytest.fixture(scope="module")
def conv_model():
    """An untrained small network without attention: a short receptive field, so chunking is really tested."""
    torch.manual_seed(0)
    return Model(nets.build_network("small", attention=False, deep_feature=False).eval())


def test_head_box_is_cell_aligned_and_covers_the_head():
    lf = np.zeros((70, 80, 90), np.float32)
    lf[20:50, 10:70, 30:41] = 100.0
    lower, upper = head_box(lf, 32, margin=2)
    assert np.all((upper - lower) % 32 == 0)
    assert np.all(lower <= [18, 8, 28]) and np.all(upper >= [52, 72, 43])
    box = extract(lf, lower, upper)
    back = np.zeros_like(lf)
    insert(back, box, lower)
    np.testing.assert_array_equal(back, lf)


def test_output_is_on_the_isotropic_grid_aligned_with_the_input(lf_scan, conv_model):
    lf, hf = lf_scan
    result = enhance(lf, conv_model, EnhanceOptions(steps=1))
    assert result.mean.shape == (40, 48, 64)  # 8 slices of 8 mm -> 64 slices of 1 mm
    np.testing.assert_allclose(result.mean.affine, hf.affine, atol=1e-9)
    assert result.std is None and np.isfinite(result.mean.data).all()


def test_chunked_evaluation_equals_whole_volume(conv_model):
    """Chunks of 32 along a 192-voxel axis with a 64-voxel halo (>= the receptive field): same output."""
    net = conv_model.net
    assert net.receptive_field <= 64
    denoiser = Denoiser(net)
    chunked = ChunkedDenoiser(denoiser, chunk=32, halo=net.receptive_field, cell=32)
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 1, 192, 32, 32, generator=generator)
    x_t = torch.randn(1, 1, 192, 32, 32, generator=generator)
    with torch.inference_mode():
        whole, pieces = denoiser(cond, x_t, 0.5), chunked(cond, x_t, 0.5)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)
    short = ChunkedDenoiser(denoiser, chunk=32, halo=0, cell=32)  # without a halo the seams show
    with torch.inference_mode():
        assert (short(cond, x_t, 0.5) - whole).abs().max() > 1e-2


def test_chunk_size_fits_the_budget():
    assert chunk_size((96, 96, 96), None, 32) is None
    assert chunk_size((96, 96, 96), 96**3, 32) is None
    assert list(chunk_size((128, 128, 128), 64**3, 32)) == [64, 64, 64]


def test_samples_give_a_nonnegative_image_and_uncertainty_and_seeds_repeat(lf_scan, conv_model):
    lf, _ = lf_scan
    first = enhance(lf, conv_model, EnhanceOptions(steps=1, samples=2, seed=1))
    again = enhance(lf, conv_model, EnhanceOptions(steps=1, samples=2, seed=1))
    other = enhance(lf, conv_model, EnhanceOptions(steps=1, samples=2, seed=2))
    assert first.mean.data.min() == 0  # a magnitude image: the untrained net undershoots, clipped at 0
    assert first.std.data.min() >= 0 and first.std.data.max() > 0
    np.testing.assert_array_equal(first.mean.data, again.mean.data)
    assert not np.array_equal(first.mean.data, other.mean.data)


def test_each_sample_sees_a_mirrored_box_and_is_mirrored_back(lf_scan):
    """The spread covers the network's disagreement between mirror views: a deterministic network that is
    not mirror-symmetric gets a non-zero sd, and one that is (interpolation) gets its own output back."""
    lf, _ = lf_scan
    supervised = Model(nets.build_network("unet", widths=[4, 8]).eval())
    assert enhance(lf, supervised, EnhanceOptions(samples=4)).std.data.max() > 0
    plain = Model(nets.build_network("interpolation"))
    one, four = (enhance(lf, plain, EnhanceOptions(samples=n)) for n in (1, 4))
    np.testing.assert_array_equal(four.mean.data, one.mean.data)
    assert four.std.data.max() == 0


def test_the_model_s_own_sampler_is_used_unless_one_is_given(lf_scan, conv_model):
    lf, _ = lf_scan
    refining = Model(conv_model.net, sampler="refine", steps=2)
    assert enhance(lf, refining, EnhanceOptions()).info["sampler"] == "refine"
    assert enhance(lf, refining, EnhanceOptions(sampler="ddim")).info["sampler"] == "ddim"
    with pytest.raises(ConfigError, match="unknown sampler"):
        enhance(lf, Model(conv_model.net, sampler="bogus"), EnhanceOptions(steps=1))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, conv_model):
    """A real checkpoint folder of the untrained network, as training writes it."""
    from diffiqt.config import TrainConfig
    from diffiqt.models.checkpoint import save_checkpoint
    from diffiqt.nets import network_config

    run = tmp_path_factory.mktemp("run")
    meta = {"network": network_config(conv_model.net), "train": TrainConfig().to_dict()}
    return save_checkpoint(run, 1, meta, conv_model.net, conv_model.net, None)


@pytest.fixture(scope="module")
def lf_file(tmp_path_factory, lf_scan):
    from diffiqt.imaging.io import save_volume

    return save_volume(lf_scan[0], tmp_path_factory.mktemp("scan") / "lf.nii.gz")


def test_enhance_command_writes_mean_std_and_sidecar(tmp_path, checkpoint_dir, lf_file):
    import json

    import nibabel as nib

    from conftest import run_cli

    out = tmp_path / "enhanced.nii.gz"
    result = run_cli(
        "enhance", lf_file, "-o", out, "--model", checkpoint_dir, "--steps", "1", "--samples", "2", "--png"
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["enhanced.json", "enhanced.nii.gz", "enhanced_montage.png", "enhanced_std.nii.gz"]
    img = nib.load(out)
    assert img.shape == (40, 48, 64)
    np.testing.assert_allclose(img.affine[:3, :3], np.eye(3), atol=1e-6)
    assert nib.load(tmp_path / "enhanced_std.nii.gz").get_fdata().min() >= 0
    assert json.loads((tmp_path / "enhanced.json").read_text())["samples"] == 2


def _fails_cleanly(result, words: str) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_enhance_refuses_bad_models_and_inputs(tmp_path, checkpoint_dir, lf_file):
    import json
    import shutil

    import nibabel as nib

    from conftest import run_cli

    out = tmp_path / "out" / "e.nii.gz"
    _fails_cleanly(run_cli("enhance", lf_file, "-o", out, "--model", tmp_path / "nothing"), "not a checkpoint path")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(checkpoint_dir, corrupt)
    (corrupt / "ema.safetensors").write_bytes(b"\x00" * 100)
    _fails_cleanly(run_cli("enhance", lf_file, "-o", out, "--model", corrupt), "corrupt")
    other = tmp_path / "other"
    shutil.copytree(checkpoint_dir, other)
    meta = json.loads((other / "config.json").read_text())
    meta["network"]["widths"][0] *= 2  # a config that no longer matches the weights
    (other / "config.json").write_text(json.dumps(meta))
    _fails_cleanly(run_cli("enhance", lf_file, "-o", out, "--model", other), "do not fit")
    tiny = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 6, 3), 100, np.float32), np.diag([1, 1, 8, 1.0])), tiny)
    _fails_cleanly(run_cli("enhance", tiny, "-o", out, "--model", checkpoint_dir, "--steps", "1"), "too small")
    _fails_cleanly(run_cli("enhance", lf_file, "-o", lf_file, "--model", checkpoint_dir), "refusing to overwrite")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_exported_model_loads_by_name_with_its_hash_checked(tmp_path, checkpoint_dir, conv_model):
    from diffiqt.errors import InputError
    from diffiqt.models.shipped import export_checkpoint, load_shipped

    summary = {"sources": ["mni152"], "warning": "research use only"}
    weights, card = export_checkpoint(checkpoint_dir, "tiny", tmp_path, dtype="float16", default=True, summary=summary)
    net, info = load_shipped("default", tmp_path)
    assert info["dtype"] == "float16" and info["voxel_mm"] == 1.0
    assert info["warning"] == "research use only"  # at the top, where load_model reads it for enhance
    assert "warning" not in info["trained"]  # once, not also among the training facts
    assert info["trained"]["sources"] == ["mni152"]
    for (name, mine), theirs in zip(conv_model.net.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(theirs, mine.half().float(), msg=name)
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(InputError, match="SHA-256"):
        load_shipped("tiny", tmp_path)


def test_export_model_command_writes_a_loadable_model_and_keeps_one_default(tmp_path, checkpoint_dir):
    from conftest import run_cli
    from diffiqt.models.shipped import load_shipped

    result = run_cli("export-model", checkpoint_dir, "--name", "tiny", "--folder", tmp_path, "--default")
    assert result.returncode == 0, result.stderr
    assert load_shipped("default", tmp_path)[1]["step"] > 0
    second = run_cli("export-model", checkpoint_dir, "--name", "other", "--folder", tmp_path, "--default")
    assert second.returncode == 2 and "already the default" in second.stderr
    assert not (tmp_path / "other.json").exists()


def test_the_denoisers_preconditioning_travels_from_training_config_to_checkpoint_and_shipped_card(
    tmp_path, conv_model
):
    from diffiqt.config import TrainConfig
    from diffiqt.models.checkpoint import save_checkpoint
    from diffiqt.models.loading import load_model
    from diffiqt.models.shipped import export_checkpoint
    from diffiqt.nets import network_config

    cfg = TrainConfig()
    cfg.diffusion.residual_sigma = 0.2
    meta = {"network": network_config(conv_model.net), "train": cfg.to_dict()}
    folder = save_checkpoint(tmp_path / "run", 1, meta, conv_model.net, conv_model.net, None)
    assert load_model(folder).denoiser().residual_sigma == 0.2
    _, card = export_checkpoint(folder, "pre", tmp_path, dtype="float32")
    assert json.loads(card.read_text())["residual_sigma"] == 0.2


def test_a_models_own_sampling_steps_are_the_default_and_the_card_can_name_others(tmp_path, conv_model):
    from diffiqt.config import TrainConfig
    from diffiqt.models.checkpoint import save_checkpoint
    from diffiqt.models.loading import load_model
    from diffiqt.models.shipped import export_checkpoint
    from diffiqt.nets import network_config

    cfg = TrainConfig()
    cfg.diffusion.sample_steps = 3
    meta = {"network": network_config(conv_model.net), "train": cfg.to_dict()}
    folder = save_checkpoint(tmp_path / "run", 1, meta, conv_model.net, conv_model.net, None)
    assert load_model(folder).steps == 3
    assert json.loads(export_checkpoint(folder, "a", tmp_path)[1].read_text())["sample_steps"] == 3
    assert json.loads(export_checkpoint(folder, "b", tmp_path, steps=1)[1].read_text())["sample_steps"] == 1
