"""The diffusion maths: schedule, loss, Denoiser and the three samplers."""

import math

import pytest
import torch

from diffiqt.diffusion import (
    LOGSNR_MAX,
    LOGSNR_MIN,
    REFINE_START,
    SAMPLERS,
    Denoiser,
    add_noise,
    alpha_sigma,
    diffusion_loss,
    logsnr,
    reconstruction_loss,
    refine_times,
    residual_preconditioning,
)

T = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)


def test_alpha_sigma_preserve_variance():
    alpha, sigma = alpha_sigma(T)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(T), atol=1e-12)
    assert (alpha > 0).all() and (sigma > 0).all()


def test_logsnr_endpoints_are_clamped_finite():
    assert logsnr(0.0).item() == pytest.approx(LOGSNR_MAX, abs=1e-9)
    assert logsnr(1.0).item() == pytest.approx(LOGSNR_MIN, abs=1e-9)
    alpha, sigma = alpha_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert sigma[0] == pytest.approx(math.sqrt(torch.sigmoid(torch.tensor(-15.0)).item()), rel=1e-6)
    assert alpha[1] == pytest.approx(sigma[0].item(), rel=1e-9)


def test_logsnr_is_strictly_decreasing_and_matches_alpha_sigma():
    lam = logsnr(T)
    assert (lam[1:] < lam[:-1]).all()
    alpha, sigma = alpha_sigma(T)
    assert torch.allclose(lam, 2 * torch.log(alpha / sigma), atol=1e-9)
    assert torch.allclose(alpha**2, torch.sigmoid(lam), atol=1e-12)


def test_schedule_is_the_cosine_schedule_away_from_the_clamp():
    alpha, _ = alpha_sigma(T)
    assert torch.allclose(alpha, torch.cos(T * math.pi / 2), atol=1e-3)


def _target_and_cond(shape=(2, 1, 6, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def perfect_denoiser(target):
    return lambda cond, x_t, t, **kw: target.clone()


def test_loss_is_zero_for_a_perfect_denoiser_and_the_noise_energy_for_identity():
    target, cond = _target_and_cond()
    t, noise = torch.tensor([0.3, 0.8]), torch.randn(target.shape)
    assert diffusion_loss(perfect_denoiser(target), target, cond, t, noise).item() == 0.0
    identity = lambda cond, x_t, t, **kw: x_t  # noqa: E731
    expected = torch.mean((add_noise(target, t, noise) - target) ** 2)
    assert diffusion_loss(identity, target, cond, t, noise).item() == pytest.approx(expected.item(), rel=1e-6)
    l1 = diffusion_loss(identity, target, cond, t, noise, kind="l1")
    assert l1.item() == pytest.approx(torch.mean(torch.abs(add_noise(target, t, noise) - target)).item(), rel=1e-6)
    with pytest.raises(ValueError):
        reconstruction_loss(target, target, "huber")


class RecordingNet(torch.nn.Module):
    """Returns channel 0 + w * channel 1 and remembers what it was called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, logsnr, layout="volume"):
        self.seen = (x.detach(), logsnr.detach(), layout)
        return x[:, :1] + self.w * x[:, 1:]


def test_denoiser_joins_condition_and_noisy_image_and_passes_logsnr():
    net = RecordingNet()
    target, cond = _target_and_cond()
    x_t = torch.randn(target.shape)
    out = Denoiser(net)(cond, x_t, 0.25, layout="patches")
    x, lam, layout = net.seen
    assert torch.equal(x, torch.cat([cond, x_t], dim=1)) and layout == "patches"
    assert torch.allclose(lam, logsnr(torch.full((2,), 0.25)))
    assert torch.allclose(out, cond + 0.5 * x_t)


class ZeroNet(torch.nn.Module):
    def forward(self, x, logsnr, layout="volume"):
        return torch.zeros_like(x[:, :1])


@pytest.mark.parametrize("t, expected", [(1.0, "cond"), (0.0, "x_t")])
def test_preconditioned_denoiser_is_interpolation_at_pure_noise_and_the_noisy_image_at_none(t, expected):
    target, cond = _target_and_cond()
    x_t = add_noise(target, torch.full((2,), t), torch.randn(target.shape))
    out = Denoiser(ZeroNet(), residual_sigma=0.2)(cond, x_t, t)
    assert torch.allclose(out, {"cond": cond, "x_t": x_t}[expected], atol=2e-3)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.95])
def test_preconditioning_gives_the_network_a_unit_variance_target(t):
    """EDM's point: (r - c_skip (r + s eps)) / c_out has unit variance for a residual r of std residual_sigma."""
    g = torch.Generator().manual_seed(0)
    r, eps = (
        0.2 * torch.randn(400_000, generator=g, dtype=torch.float64),
        torch.randn(400_000, generator=g, dtype=torch.float64),
    )
    alpha, sigma = alpha_sigma(torch.tensor(t, dtype=torch.float64))
    c_skip, c_out = residual_preconditioning(torch.tensor(t, dtype=torch.float64), 0.2)
    target = (r - c_skip * (r + sigma / alpha * eps)) / c_out
    assert target.var().item() == pytest.approx(1.0, rel=0.01)


def test_preconditioned_prediction_is_cond_plus_scaled_network_output_at_pure_noise():
    net = RecordingNet()
    target, cond = _target_and_cond()
    x_t = torch.randn(target.shape)
    out = Denoiser(net, residual_sigma=0.2)(cond, x_t, 1.0)
    assert torch.allclose(out, cond + 0.2 * (cond + 0.5 * x_t), atol=2e-3)


def test_loss_gradient_reaches_the_network():
    net = RecordingNet()
    target, cond = _target_and_cond()
    loss = diffusion_loss(Denoiser(net), target, cond, torch.tensor([0.5, 0.9]), torch.randn(target.shape))
    loss.backward()
    assert net.w.grad is not None and net.w.grad.abs() > 0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_every_sampler_returns_the_target_exactly_for_a_perfect_denoiser(name, steps):
    target, cond = _target_and_cond()
    out = SAMPLERS[name](perfect_denoiser(target), cond, steps, torch.Generator().manual_seed(1))
    assert torch.equal(out, target)


@pytest.mark.parametrize("name", ["paper", "ancestral"])
def test_stochastic_samplers_keep_the_forward_marginals_for_a_perfect_denoiser(name):
    """With x_hat = x, every intermediate x_s must be distributed as q(x_s | x) = N(alpha_s x, sigma_s^2)."""
    target = torch.full((1, 1, 40, 40, 40), 0.7)
    seen = {}

    def record(i, s, x, x_hat):
        seen[round(s, 6)] = x

    SAMPLERS[name](perfect_denoiser(target), target, 5, torch.Generator().manual_seed(2), callback=record)
    for s in (0.8, 0.6, 0.4, 0.2):
        alpha, sigma = alpha_sigma(torch.tensor(s))
        x = seen[s]
        assert x.mean().item() == pytest.approx(alpha.item() * 0.7, abs=4 * sigma.item() / 253)
        assert x.std().item() == pytest.approx(sigma.item(), rel=0.02)


def test_ancestral_step_is_the_textbook_gaussian_posterior():
    """Mean alpha_{t|s} sigma_s^2/sigma_t^2 x_t + alpha_s sigma_{t|s}^2/sigma_t^2 x, variance sigma_{t|s}^2 sigma_s^2/sigma_t^2."""
    from diffiqt.diffusion import _ancestral_step

    t, s = torch.tensor(0.6), torch.tensor(0.45)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(t), alpha_sigma(s)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    x_t, x = torch.full((200000,), 0.3), torch.full((200000,), 0.9)
    draws = _ancestral_step(x_t, x, t, s, torch.Generator().manual_seed(3))
    mean = a_ts * s_s**2 / s_t**2 * 0.3 + a_s * var_ts / s_t**2 * 0.9
    assert draws.mean().item() == pytest.approx(mean.item(), abs=3e-3)
    assert draws.var().item() == pytest.approx((var_ts * s_s**2 / s_t**2).item(), rel=0.02)


def test_refine_grid_jumps_from_pure_noise_to_its_start_then_descends_evenly():
    times = refine_times(5, 0.4)
    assert times.tolist() == pytest.approx([1.0, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert refine_times(1, 0.4).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError):
        refine_times(5, 0.0)


def test_refine_starts_from_the_one_step_posterior_mean():
    """Its first prediction is the t = 1 mean (what one step returns); later steps see it re-noised to
    REFINE_START: the x_t they get is alpha x_mean + sigma eps, not a fresh draw of noise."""
    net = RecordingNet()
    target, cond = _target_and_cond()
    noise = torch.randn(target.shape)
    one_step = SAMPLERS["paper"](Denoiser(net), cond, 1, noise=noise.clone())
    seen = {}
    SAMPLERS["refine"](
        Denoiser(net),
        cond,
        4,
        torch.Generator().manual_seed(7),
        noise=noise.clone(),
        callback=lambda i, s, x, x_hat: seen.setdefault(i, (s, x, x_hat)),
    )
    s0, x_s0, first = seen[0]
    assert torch.equal(first, one_step)
    assert s0 == pytest.approx(REFINE_START)
    alpha, sigma = alpha_sigma(torch.tensor(REFINE_START))
    residual = (x_s0 - alpha * first) / sigma  # the added noise, standard normal
    assert abs(residual.mean().item()) < 0.1 and residual.std().item() == pytest.approx(1.0, rel=0.1)


def test_ddim_is_deterministic_given_the_starting_noise():
    net = RecordingNet()
    target, cond = _target_and_cond()
    noise = torch.randn(target.shape)
    a = SAMPLERS["ddim"](Denoiser(net), cond, 5, torch.Generator().manual_seed(4), noise=noise.clone())
    b = SAMPLERS["ddim"](Denoiser(net), cond, 5, torch.Generator().manual_seed(5), noise=noise.clone())
    assert torch.equal(a, b)


def test_samplers_are_reproducible_and_batch_several_samples():
    net = RecordingNet()
    _, cond = _target_and_cond(shape=(1, 1, 6, 6, 6))
    batch = cond.repeat(3, 1, 1, 1, 1)
    a = SAMPLERS["paper"](Denoiser(net), batch, 4, torch.Generator().manual_seed(6))
    b = SAMPLERS["paper"](Denoiser(net), batch, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and a.shape == batch.shape
    assert not torch.equal(a[0], a[1])  # each sample in the batch gets its own noise
