"""bench-speed: the authors' sliding-window scheme, the seam measure, the faster Mish, and the command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn
from typer.testing import CliRunner

from diffiqt import nets
from diffiqt.bench import measure, speed, tuning
from diffiqt.bench.schemes import seam_measure
from diffiqt.cli import app
from diffiqt.diffusion import Denoiser, logsnr, sample_paper
from diffiqt.errors import ConfigError
from diffiqt.inference.tiling import BLENDS, SlidingWindowDenoiser
from diffiqt.nets.blocks import mish
from diffiqt.nets.crossbatch import block_to_patches, patches_to_block

TINY = dict(widths=[4, 8, 8], res_blocks=1, embed_dim=16, heads=2, deep_feature_width=16, time_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_net():
    """An untrained DiffusionIQT with every mechanism (cross-batch attention included), a few channels wide."""
    torch.manual_seed(0)
    return nets.build_network("small", **TINY).eval()


class EchoNoisyImage(nn.Module):
    """A stand-in network whose prediction is its noisy-image channel."""

    def forward(self, x, logsnr, layout="volume"):
        return x[:, 1:2]


def window_by_hand(net, cond, noise, corner):
    """x̂ at t = 1 of the 32³ cell at ``corner``: its 96³ zero-padded window as 27 patches, central patch kept."""
    pad = lambda v: F.pad(v, (32,) * 6)  # noqa: E731
    window = (slice(None), slice(None), *(slice(c, c + 96) for c in corner))
    block = torch.cat([pad(cond)[window], pad(noise)[window]], dim=1)
    x_hat = net(block_to_patches(block, 32), logsnr(torch.ones(27)), layout="patches")
    return patches_to_block(x_hat)[:, :, 32:64, 32:64, 32:64]


def test_sliding_windows_with_one_step_equal_each_window_computed_by_hand(tiny_net):
    generator = torch.Generator().manual_seed(0)
    cond, noise = torch.randn(2, 1, 1, 64, 32, 32, generator=generator)
    with torch.inference_mode():
        out = sample_paper(SlidingWindowDenoiser(Denoiser(tiny_net)), cond, steps=1, noise=noise)
        expected = window_by_hand(tiny_net, cond, noise, (32, 0, 0))  # the window of the second cell
    torch.testing.assert_close(out[:, :, 32:64], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", BLENDS)
def test_every_blend_averages_the_windows_back_to_a_consistent_prediction(blend):
    x_t = torch.randn(2, 1, 64, 32, 96, generator=torch.Generator().manual_seed(1))
    denoiser = SlidingWindowDenoiser(Denoiser(EchoNoisyImage()), blend=blend)
    torch.testing.assert_close(denoiser(torch.zeros_like(x_t), x_t, 0.5), x_t)
    assert denoiser.window_count((64, 32, 96)) == 6


def test_seam_measure_is_zero_without_seams_and_positive_at_block_steps():
    rng = np.random.default_rng(0)
    mask = np.ones((96, 96, 96), bool)
    ramp = np.broadcast_to(np.arange(96.0)[:, None, None], mask.shape)
    texture = rng.normal(size=mask.shape)
    blocks = np.kron(rng.normal(size=(3, 3, 3)), np.ones((32, 32, 32))) + 0.1 * texture
    assert abs(seam_measure(ramp, mask)) < 1e-9
    assert abs(seam_measure(texture, mask)) < 0.02
    assert seam_measure(blocks, mask) > 0.5
    assert seam_measure(blocks, mask, origin=(16, 16, 16)) < -0.5  # the borders seen as mid-cell planes


def test_inference_mish_is_f_mish_in_place_and_training_keeps_the_input():
    spread = torch.randn(200_000, generator=torch.Generator().manual_seed(3)) * 4
    values = torch.cat([torch.linspace(-100, 100, 4000), spread])
    x = values.reshape(1, 8, 12, 25, 85).contiguous(memory_format=torch.channels_last_3d)
    expected = F.mish(x)
    result = mish(x.clone())
    torch.testing.assert_close(result, expected, rtol=2e-6, atol=2e-6)
    tracked = x.clone().requires_grad_()
    assert torch.equal(mish(tracked), expected) and torch.equal(tracked.detach(), x)


def test_network_output_is_unchanged_by_the_inference_mish(tiny_net):
    x = torch.randn(1, 2, 64, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        fast = tiny_net(x, torch.tensor([1.0]))
    with torch.enable_grad():
        reference = tiny_net(x, torch.tensor([1.0]))  # parameters require grad: F.mish everywhere
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-5, atol=1e-6)


def test_networks_section_reports_flops_and_the_share_of_the_peak(monkeypatch):
    monkeypatch.setattr(measure, "build_network", lambda name: nets.build_network(name, **TINY))
    text = speed.networks_section(speed.BenchOptions(presets=["small"], repeats=1), torch.device("cpu"), 1e11)
    rows = [line for line in text.splitlines() if line.startswith("| small")]
    assert len(rows) == 2 and "forward + backward" in rows[1] and rows[1].endswith("% |")


def test_enhancement_is_skipped_with_a_reason_when_no_model_loads(tmp_path):
    text = speed.enhancement_sections(speed.BenchOptions(model=str(tmp_path / "missing")))
    assert "Skipped" in text and "untrained:small" in text


def test_caching_the_condition_would_save_under_one_percent():
    assert 0 < tuning.condition_cache_share("paper") < 0.01


def test_bf16_on_cpu_is_refused_before_any_work():
    result = CliRunner().invoke(app, ["bench-speed", "--bf16", "--parts", "networks"])
    assert isinstance(result.exception, ConfigError) and "--bf16 needs --device cuda" in str(result.exception)


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_bench_speed_runs_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "speed.md"
    result = run_cli(
        "bench-speed",
        "--model",
        "untrained:small",
        "--parts",
        "enhance,quality",
        "--steps",
        "1",
        "--region",
        "32",
        "--repeats",
        "1",
        "--samples",
        "2",
        "--windows",
        "1",
        "--sweep-steps",
        "1",
        "--samplers",
        "ddim",
        "--threads",
        "1",
        "--out",
        out,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    for expected in (
        "## Speed",
        "GFLOP/s",
        "(a) whole volume",
        "(b) 96³ windows",
        "(c) 96³ windows",
        "UNTRAINED",
        "Time ratios (measured)",
        "Quality against sampling steps",
    ):
        assert expected in text
