"""The model shipped inside the package: it loads with its hash checked and enhances real anatomy on CPU."""

import json

import numpy as np
import pytest

from conftest import run_cli
from diffiqt.anatomy import brains
from diffiqt.models.shipped import WEIGHTS_DIR, load_shipped, sha256, shipped_models


def test_exactly_one_default_model_is_shipped_and_its_card_matches_its_weights():
    cards = shipped_models()
    defaults = [name for name, card in cards.items() if card.get("default")]
    assert len(defaults) == 1
    card = cards[defaults[0]]
    assert sha256(WEIGHTS_DIR / f"{defaults[0]}.safetensors") == card["sha256"]
    assert card["trained"]["held_out"] and card["trained"]["sources"]
    assert not set(card["trained"]["held_out"]) & set(card["trained"]["sources"])


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_shipped_model_enhances_a_real_crop_on_cpu(mni_crop):
    """Loading and the whole enhancement path on a crop of real anatomy: at the model's own setting a finite
    volume in the input's world space that follows the anatomy, and a sampled run (3 steps, 2 samples)
    with an uncertainty map. Quality against interpolation is the model card's business
    (scripts/model_card.py), not this test's; its multi-step samples are known to be noisier than its
    one-step mean (docs/model-card.md), so they are held to being finite and spread, not to the anatomy."""
    from diffiqt.imaging.resample import shared_extent
    from diffiqt.inference.enhance import EnhanceOptions, enhance
    from diffiqt.models.loading import load_model
    from diffiqt.simulation import LowFieldParams, simulate_low_field

    model = load_model("default")
    assert model.warning  # its card's caveat reaches the user
    params = LowFieldParams.for_factor(8, 1.0, axis=2)
    lf = simulate_low_field(mni_crop.t1, mni_crop.tissues, params, np.random.default_rng(3), upsample=False).lf
    result = enhance(lf, model, EnhanceOptions(seed=1))
    assert np.isfinite(result.mean.data).all()
    np.testing.assert_allclose(result.mean.affine[:3, 3], mni_crop.t1.affine[:3, 3], atol=1e-4)  # same world space
    common = shared_extent(result.mean.shape, mni_crop.t1.shape)
    mask = mni_crop.mask[common]
    assert np.corrcoef(result.mean.data[common][mask], mni_crop.t1.data[common][mask])[0, 1] > 0.8
    sampled = enhance(lf, model, EnhanceOptions(steps=3, samples=2, seed=1))
    assert sampled.std is not None and np.isfinite(sampled.std.data).all() and sampled.std.data.max() > 0


def test_a_changed_weights_file_is_refused(tmp_path):
    from diffiqt.errors import InputError

    name = next(n for n, card in shipped_models().items() if card.get("default"))
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"{name}{suffix}").write_bytes((WEIGHTS_DIR / f"{name}{suffix}").read_bytes())
    weights = tmp_path / f"{name}.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x01\x02\x03\x04")
    with pytest.raises(InputError, match="SHA-256"):
        load_shipped("default", tmp_path)


@pytest.mark.skipif(not brains.colin27_available(), reason="Debian's mricron-data (Colin27) is not installed")
@pytest.mark.slow  # a long end-to-end run: make test-all
def test_demo_enhances_a_held_out_brain_with_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out, "--slab-mm", "32", "--steps", "2", "--samples", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for name in ("hf", "lf", "lf_cubic", "enhanced", "enhanced_std"):
        assert (out / f"{name}.nii.gz").is_file()
    assert (out / "montage.png").stat().st_size > 10_000
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"cubic", "enhanced"} and metrics["enhanced"]["psnr"] > 10
    assert -1 <= metrics["enhanced"]["uncertainty_error_spearman"] <= 1
