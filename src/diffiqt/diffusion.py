"""Continuous-time variance-preserving diffusion (Kingma et al. 2021) with the cosine schedule.

Time runs over t in [0, 1]: t = 0 is the clean image, t = 1 pure Gaussian noise.
The forward process is ``x_t = alpha_t * x + sigma_t * eps`` with
``alpha_t**2 + sigma_t**2 = 1`` and the cosine schedule of Nichol & Dhariwal
(2021) written in continuous time: ``alpha_t = cos(phi(t))``,
``sigma_t = sin(phi(t))``, so ``logsnr(t) = -2 log tan(phi(t))``.

Endpoints: the plain cosine (phi = pi t / 2) has an infinite log-SNR at t = 0
and t = 1. The angle is therefore mapped linearly onto
[phi_min, phi_max] so that logsnr(0) = LOGSNR_MAX = +15 and logsnr(1) =
LOGSNR_MIN = -15: at t = 0 a noise of sigma_0 = 5.5e-4 remains, at t = 1 a
signal of alpha_1 = 5.5e-4 (images are normalised to about [-1, 1], so both
are far below anything visible). This clamp plays the role of Nichol &
Dhariwal's offset s = 0.008.

The network predicts the clean image (x-parameterisation). It never sees t:
:class:`Denoiser` turns t into log-SNR, joins the condition and the noisy image
on the channel axis and calls the network. Optionally (``residual_sigma``) the
Denoiser preconditions the network as Karras et al. (2022, "EDM") do, on the
residual x - cond: at low noise the prediction is then mostly the noisy image
itself, so small errors of the network no longer build up along a sampling chain.
The loss stays the paper's MSE on x. Samplers are plain functions with
one signature (see :data:`SAMPLERS`); they work on any batch layout, e.g. a
batch of 27 patches of one block (pass ``layout="patches"``) or whole volumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import torch
from torch import Tensor, nn

from diffiqt.config import DEFAULT_STEPS, SamplerName

LOGSNR_MIN = -15.0
LOGSNR_MAX = 15.0
_PHI_MIN = math.atan(math.exp(-0.5 * LOGSNR_MAX))
_PHI_MAX = math.atan(math.exp(-0.5 * LOGSNR_MIN))


def _angle(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64 if not torch.is_tensor(t) else None)
    return _PHI_MIN + t * (_PHI_MAX - _PHI_MIN)


def logsnr(t: Tensor | float) -> Tensor:
    """log(alpha_t^2 / sigma_t^2), decreasing from LOGSNR_MAX at t=0 to LOGSNR_MIN at t=1; same shape as t."""
    return -2.0 * torch.log(torch.tan(_angle(t)))


def alpha_sigma(t: Tensor | float) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t), both in (0, 1) with alpha^2 + sigma^2 = 1; same shape as t."""
    phi = _angle(t)
    return torch.cos(phi), torch.sin(phi)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Values [B] reshaped to [B, 1, 1, ...] to broadcast against ``like`` [B, ...]."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = alpha_t x + sigma_t eps. x, noise: [B, C, ...]; t: [B]."""
    alpha, sigma = alpha_sigma(t)
    return _per_sample(alpha, x) * x + _per_sample(sigma, x) * noise


def residual_preconditioning(t: Tensor, residual_sigma: float) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of EDM's preconditioning for a residual of standard deviation ``residual_sigma``.

    With s = sigma_t / alpha_t the noise level of x_t / alpha_t, c_skip = r^2 / (s^2 + r^2) and
    c_out = s r / sqrt(s^2 + r^2): the network's target (x - c_skip x_t / alpha_t) / c_out then has
    unit variance at every t. Same shape as t.
    """
    s2 = torch.exp(-logsnr(t))  # s^2 = sigma^2 / alpha^2
    r2 = residual_sigma**2
    return r2 / (s2 + r2), torch.sqrt(s2 * r2 / (s2 + r2))


class Denoiser(nn.Module):
    """Joins a network and the diffusion: x_hat = net([cond, x_t], logsnr(t)).

    The network takes [B, 2, D, H, W] (channel 0 the LF condition, channel 1
    the noisy image) and log-SNR [B], and returns the clean image [B, 1, D, H, W].
    Extra keyword arguments (e.g. ``layout="patches"``) go to the network.

    With ``residual_sigma`` (the standard deviation of x - cond, about 0.1 at x8 in
    normalised units) the network's output F is a correction instead:
    x_hat = cond + c_skip (x_t / alpha_t - cond) + c_out F (:func:`residual_preconditioning`).
    At t = 1 this is cond + r F (interpolation when F = 0), at t = 0 the noisy image.
    """

    def __init__(self, net: nn.Module, residual_sigma: float | None = None):
        super().__init__()
        self.net = net
        self.residual_sigma = residual_sigma

    def forward(self, cond: Tensor, x_t: Tensor, t: Tensor | float, **net_kwargs) -> Tensor:
        """cond, x_t: [B, 1, D, H, W]; t: [B] or a scalar. Returns x_hat [B, 1, D, H, W]."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        out = self.net(torch.cat([cond, x_t], dim=1), logsnr(t), **net_kwargs)
        if self.residual_sigma is None:
            return out
        c_skip, c_out = residual_preconditioning(t, self.residual_sigma)
        alpha, _ = alpha_sigma(t)
        residual = x_t / _per_sample(alpha, x_t) - cond
        return cond + _per_sample(c_skip, x_t) * residual + _per_sample(c_out, x_t) * out


def reconstruction_loss(prediction: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Mean squared ("mse", the paper's) or absolute ("l1") error over all voxels; a scalar."""
    if kind == "mse":
        return torch.mean((prediction.float() - target.float()) ** 2)
    if kind == "l1":
        return torch.mean(torch.abs(prediction.float() - target.float()))
    raise ValueError(f"unknown loss {kind!r}; choose mse or l1")


def diffusion_loss(
    denoiser: Callable, target: Tensor, cond: Tensor, t: Tensor, noise: Tensor, kind: str = "mse", **net_kwargs
) -> Tensor:
    """The paper's Algorithm 1: || x - x_hat(alpha_t x + sigma_t eps, x_c, t) ||^2, averaged.

    target, cond, noise: [B, 1, D, H, W]; t: [B] drawn from U(0, 1) by the caller
    (equal within each group of patches that must share one log-SNR).
    """
    x_t = add_noise(target, t, noise)
    return reconstruction_loss(denoiser(cond, x_t, t, **net_kwargs), target, kind)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _paper_step(x_t, x_hat, t, s, generator):
    """Algorithm 2: forget x_t and re-noise the prediction to level s."""
    alpha_s, sigma_s = alpha_sigma(s)
    return alpha_s * x_hat + sigma_s * _randn(x_hat, generator)


def _ancestral_step(x_t, x_hat, t, s, generator):
    """Draw x_s from the Gaussian posterior q(x_s | x_t, x = x_hat).

    With c = 1 - SNR_t / SNR_s (computed as -expm1 for accuracy):
    mean = alpha_s ((1 - c) x_t / alpha_t + c x_hat), variance = c sigma_s^2.
    """
    alpha_t, _ = alpha_sigma(t)
    alpha_s, sigma_s = alpha_sigma(s)
    c = -torch.expm1(logsnr(t) - logsnr(s))
    mean = alpha_s * ((1 - c) * x_t / alpha_t + c * x_hat)
    return mean + torch.sqrt(c) * sigma_s * _randn(x_hat, generator)


def _ddim_step(x_t, x_hat, t, s, generator):
    """Deterministic DDIM: keep the implied noise eps_hat = (x_t - alpha_t x_hat) / sigma_t."""
    alpha_t, sigma_t = alpha_sigma(t)
    alpha_s, sigma_s = alpha_sigma(s)
    return alpha_s * x_hat + sigma_s * (x_t - alpha_t * x_hat) / sigma_t


def uniform_times(steps: int) -> Tensor:
    """The time grid 1 = t_0 > t_1 > ... > t_steps = 0, evenly spaced (the paper's)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def refine_times(steps: int, start: float) -> Tensor:
    """1, then ``start`` = t_1 > ... > t_steps = 0 evenly spaced: one jump from pure noise to ``start``.

    The first step predicts the posterior mean from the condition alone (x_1 carries no signal);
    the rest is a short chain that refines that mean from noise level ``start``. With one step the
    result is the posterior mean itself.
    """
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    if steps == 1:
        return uniform_times(1)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.linspace(start, 0.0, steps, dtype=torch.float64)])


def _sample(step_fn, denoiser, cond, times, generator, callback, noise, net_kwargs) -> Tensor:
    """Shared loop over a decreasing time grid ``times`` from 1 to 0 (len = steps + 1).

    The last step returns the prediction x_hat itself (Algorithm 2 with eps = 0
    and alpha_0 = 1; the clamped schedule would otherwise scale it by 1 - 1.5e-7).
    """
    steps = len(times) - 1
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = noise if noise is not None else _randn(cond, generator)
    for i in range(steps):
        t, s = times[i], times[i + 1]
        x_hat = denoiser(cond, x, float(t), **net_kwargs)
        x = x_hat if i == steps - 1 else step_fn(x, x_hat, t.to(x.dtype), s.to(x.dtype), generator)
        if callback is not None:
            callback(i, float(s), x, x_hat)
    return x


def sample_paper(
    denoiser: Callable,
    cond: Tensor,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    noise: Tensor | None = None,
    **net_kwargs,
) -> Tensor:
    """The paper's Algorithm 2: x_s = alpha_s x_hat(x_t) + sigma_s eps with fresh eps at every step.

    cond: [B, 1, D, H, W] (any batch layout the network accepts). ``noise`` is the
    starting x_1 (default: drawn from ``generator``); ``generator`` also draws the
    per-step noise. ``callback(i, s, x_s, x_hat)`` is called after each step.
    Returns x_0 [B, 1, D, H, W]. Several samples of one input: repeat ``cond``
    along the batch axis.
    """
    return _sample(_paper_step, denoiser, cond, uniform_times(steps), generator, callback, noise, net_kwargs)


def sample_ancestral(
    denoiser: Callable,
    cond: Tensor,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    noise: Tensor | None = None,
    **net_kwargs,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x_hat); arguments as :func:`sample_paper`."""
    return _sample(_ancestral_step, denoiser, cond, uniform_times(steps), generator, callback, noise, net_kwargs)


def sample_ddim(
    denoiser: Callable,
    cond: Tensor,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    noise: Tensor | None = None,
    **net_kwargs,
) -> Tensor:
    """Deterministic DDIM (randomness only in the starting noise); arguments as :func:`sample_paper`."""
    return _sample(_ddim_step, denoiser, cond, uniform_times(steps), generator, callback, noise, net_kwargs)


def time_of_noise(noise: float) -> float:
    """The time t at which sigma_t / alpha_t = ``noise`` (the inverse of the schedule's noise-to-signal ratio)."""
    return (math.atan(noise) - _PHI_MIN) / (_PHI_MAX - _PHI_MIN)


# The refinement starts where the noise (sigma_t / alpha_t) is 0.03 in normalised units (t ~ 0.019): chosen on
# the validation head (synthseg-20, x8 axial, central 128³, t1w-x8-lowfield-cpu-v5, 20 steps) as the largest start
# whose single sample is not below cubic interpolation under the fit protocol: from 0.1 (the residual's spread,
# the earlier start) -1.11 dB, 0.05 -0.41 dB, 0.03 +0.03 dB, against the one-step mean's +0.44. A sample
# re-noised further keeps noise the chain does not remove. Held-out figures: docs/model-card.md.
REFINE_NOISE = 0.03
REFINE_START = time_of_noise(REFINE_NOISE)


def sample_refine(
    denoiser: Callable,
    cond: Tensor,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    noise: Tensor | None = None,
    **net_kwargs,
) -> Tensor:
    """The posterior mean, refined: ancestral steps on :func:`refine_times` (a jump from t = 1 to
    :data:`REFINE_START`, then evenly to 0). A sample stays near the mean, which a model trained for
    the mean at t = 1 (``diffusion.mean_fraction``) predicts best; arguments as :func:`sample_paper`."""
    return _sample(
        _ancestral_step, denoiser, cond, refine_times(steps, REFINE_START), generator, callback, noise, net_kwargs
    )


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "paper": sample_paper,
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "refine": sample_refine,
}
assert tuple(SAMPLERS) == get_args(SamplerName), "SamplerName must name exactly the SAMPLERS"
