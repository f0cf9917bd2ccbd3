"""Schedule arithmetic against closed forms."""

from __future__ import annotations

import torch

from framework.schedule import make_schedule


def test_tiny_timesteps_are_leading_with_offset(tiny) -> None:
    ts = tiny.timesteps(100)
    assert ts.tolist() == list(range(1, 1000, 10))  # SD: leading spacing, steps_offset 1
    assert tiny.timesteps(50).tolist()[:3] == [1, 21, 41]


def test_eta_one_is_ddpm_posterior_and_eta_zero_is_ddim(tiny) -> None:
    s1 = tiny.schedule(100, 1.0)
    beta = 1 - s1.abar / s1.abar_prev
    posterior_var = (1 - s1.abar_prev) / (1 - s1.abar) * beta
    torch.testing.assert_close(s1.sigma**2, posterior_var)
    assert float(s1.abar_prev[0]) == float(tiny.alphas_cumprod[0])  # SD: set_alpha_to_one False
    s0 = tiny.schedule(100, 0.0)
    assert torch.all(s0.sigma == 0)
    half = tiny.schedule(100, 0.5)
    torch.testing.assert_close(half.sigma, 0.5 * s1.sigma)


def test_mu_with_true_noise_gives_posterior_mean() -> None:
    """With ε̂ equal to the true ε of x_t = sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε and η = 1, μ̂ is the mean of
    q(x_{t-1} | x_t, x0) in its textbook form."""
    betas = torch.linspace(1e-4, 0.02, 1000)
    ac = torch.cumprod(1 - betas, 0)
    ts = torch.arange(0, 1000, 100).flip(0)
    s = make_schedule(ac, ts, 1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, generator=g), torch.randn(5, generator=g)
    for i in (1, 4, 10):
        a, a_prev = float(s.abar[i - 1]), float(s.abar_prev[i - 1])
        alpha = a / a_prev
        xt = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        textbook = (a_prev**0.5 * (1 - alpha) / (1 - a)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a)) * xt
        torch.testing.assert_close(s.mu(xt, eps, i), textbook, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.predict_x0(xt, eps, i), x0, rtol=1e-4, atol=1e-4)
