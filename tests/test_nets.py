"""Networks: registry and configs, shapes, channel shuffle, time conditioning, ESRGAN losses, model-info."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import run_cli
from diffiqt.cli import app
from diffiqt.errors import ConfigError
from diffiqt.nets import build_network, count_parameters, list_networks, network_config, paper_parameters_m
from diffiqt.nets.blocks import ChannelShuffleDown, ChannelShuffleUp, ResBlock, pixel_shuffle_3d, pixel_unshuffle_3d
from diffiqt.nets.esrgan import (
    ESRGANDiscriminator3d,
    esrgan_generator_loss,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)
from test_nets_crossbatch import randomized

CONTRACT = (
    "name",
    "needs_time",
    "in_channels",
    "cross_batch",
    "patch_size",
    "slice_fold",
    "cell_shape",
    "receptive_field",
    "config",
)


def _meta(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return build_network(name, **overrides)


def test_registry_names_and_contract():
    assert list_networks() == [
        "paper", "no-crossbatch", "no-deepfeature-no-crossbatch", "small", "lowfield-small", "unet", "resunet", "esrgan",
        "interpolation", "linear-iqt",
    ]  # fmt: skip
    for name in list_networks():
        net = _meta(name)
        assert all(hasattr(net, attribute) for attribute in CONTRACT), name
        assert net.name == name and net.patch_size == (16 if name == "lowfield-small" else 32)
        assert len(net.cell_shape) == 3 and net.cell_shape[-1] % net.slice_fold == 0
        assert net.in_channels == (2 if net.needs_time else 1)


def test_config_rebuilds_the_same_architecture_through_json():
    net = _meta("paper", cross_batch=False, widths=(32, 32, 64))
    config = json.loads(json.dumps(network_config(net)))
    rebuilt = _meta(**config)
    assert rebuilt.config == net.config and rebuilt.cross_batch is False
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_unknown_names_and_settings_are_config_errors():
    with pytest.raises(ConfigError, match="unknown network 'vnet'"):
        build_network("vnet")
    with pytest.raises(ConfigError, match="no setting depth"):
        build_network("unet", depth=5)
    with pytest.raises(ConfigError, match="patch_size 20 does not fit"):
        build_network("small", patch_size=20)


@pytest.mark.parametrize("name", [n for n in list_networks() if paper_parameters_m(n) is not None])
def test_parameter_counts_are_within_ten_percent_of_the_paper(name):
    assert count_parameters(_meta(name)) / 1e6 == pytest.approx(paper_parameters_m(name), rel=0.10)


@pytest.mark.parametrize("name", list_networks())
def test_every_network_returns_the_input_shape(name):
    """Off-grid sizes too: each network pads to its grid and crops back (shapes traced on the meta device)."""
    net = _meta(name)
    shape = (2, net.in_channels, 20, 9, 45)
    x = torch.zeros(shape, device="meta")
    out = net(x, torch.zeros(2, device="meta")) if net.needs_time else net(x)
    assert out.shape == (2, 1, 20, 9, 45)


def test_interpolation_returns_the_condition():
    x = torch.randn(2, 1, 5, 6, 7)
    assert torch.equal(build_network("interpolation")(x), x)


@pytest.mark.parametrize(
    "name, settings",
    [("small", {}), ("unet", {"widths": [4, 8]}), ("esrgan", {"channels": 4, "growth": 4, "blocks": 1})],
)
def test_condition_skip_starts_as_the_identity_on_the_condition_and_learns_a_correction(name, settings):
    net = build_network(name, condition_skip=True, **settings)
    x = torch.randn(1, net.in_channels, 32, 32, 32)
    args = (torch.zeros(1),) if net.needs_time else ()
    assert torch.equal(net(x, *args), x[:, :1])  # zero-initialised last layer: x̂ = condition
    net(x, *args).square().mean().backward()
    last = [p for p in net.parameters() if p.ndim > 1][-1]
    assert last.grad.abs().sum() > 0  # ... but the last layer still receives gradients
    assert not torch.equal(build_network(name, **settings)(x, *args), x[:, :1])


def test_pixel_shuffle_and_unshuffle_are_exact_inverses():
    x = torch.randn(2, 3, 4, 6, 8)
    unshuffled = pixel_unshuffle_3d(x)
    assert unshuffled.shape == (2, 24, 2, 3, 4)
    assert torch.equal(pixel_shuffle_3d(unshuffled), x)
    assert torch.equal(pixel_unshuffle_3d(pixel_shuffle_3d(unshuffled)), unshuffled)
    # Channel c·8 + (i·2 + j)·2 + k holds the voxel at offset (i, j, k) of each 2³ cube.
    assert torch.equal(unshuffled[:, 1 * 8 + 5], x[:, 1, 1::2, 0::2, 1::2])


def test_channel_shuffle_modules_are_shuffle_plus_1x1_conv():
    """The fused stride-2 forms compute exactly the literal pixel-(un)shuffle and 1×1 convolution."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 4, 8)
    down, up = ChannelShuffleDown(4, 5), ChannelShuffleUp(4, 5)
    torch.testing.assert_close(down(x), down.proj(pixel_unshuffle_3d(x)))
    torch.testing.assert_close(up(x), pixel_shuffle_3d(up.proj(x)))


def test_time_embedding_reaches_every_resnet_block():
    net = randomized(build_network("paper", widths=[8, 16, 32], res_blocks=2, embed_dim=32, heads=4,
                                   deep_feature_width=32, time_dim=16, patch_size=16)).train()  # fmt: skip
    logsnr = torch.tensor([0.7], requires_grad=True)
    net(torch.randn(1, 2, 16, 16, 16), logsnr).square().mean().backward()
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 3 * 2 + 1  # encoder and decoder levels, and the deep-feature module
    for block in blocks:
        assert block.time.weight.grad.abs().sum() > 0
    assert logsnr.grad.abs() > 0


def test_small_preset_forward_and_backward_on_a_27_patch_batch():
    torch.manual_seed(0)
    net = build_network("small").train()
    x, logsnr = torch.randn(27, 2, 32, 32, 32), torch.full((27,), -1.0)
    out = net(x, logsnr, layout="patches")
    assert out.shape == (27, 1, 32, 32, 32)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_esrgan_discriminator_and_relativistic_losses():
    torch.manual_seed(0)
    discriminator = ESRGANDiscriminator3d()
    real, fake = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    fake_logits = discriminator(fake)
    assert fake_logits.shape == (2,)
    confident_real, confident_fake = torch.tensor([9.0, 8.0]), torch.tensor([-9.0, -8.0])
    assert relativistic_discriminator_loss(confident_real, confident_fake) < 1e-3
    assert relativistic_generator_loss(confident_real, confident_fake) > 10
    real_logits = torch.randn(2, requires_grad=True)
    esrgan_generator_loss(fake, real, real_logits, fake_logits).backward()
    assert fake.grad.abs().sum() > 0 and real_logits.grad is None  # the generator step leaves D's real view alone


def test_model_info_prints_counts_and_lists_all_networks():
    one = CliRunner().invoke(app, ["model-info", "no-crossbatch"])
    assert one.exit_code == 0, one.output
    assert "13.0M" in one.output and "13.6M" in one.output and "GFLOP" in one.output
    listing = CliRunner().invoke(app, ["model-info"])
    assert listing.exit_code == 0, listing.output
    assert all(name in listing.output for name in ("paper", "resunet", "interpolation"))


def test_model_info_of_an_unknown_network_is_a_one_line_error():
    unknown = run_cli("model-info", "vnet")
    assert unknown.returncode == 2 and "unknown network 'vnet'" in unknown.stderr and "Traceback" not in unknown.stderr
