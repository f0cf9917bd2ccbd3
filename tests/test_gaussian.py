"""The analytic Gaussian backbone: its noise predictor against closed forms, its options, and
the samplers run with it reproducing N(μ, Σ)."""

from __future__ import annotations

import math

import pytest
import torch

from framework.backbone import load_backbone
from framework.errors import ConfigError, InputError
from framework.random import randn
from framework.sampling import reverse_process

MEAN = [10.0, -3.0, 1.5]
COV = [[2.0, 0.6, -0.3], [0.6, 0.5, 0.1], [-0.3, 0.1, 1.2]]


@pytest.fixture(scope="module")
def gauss3():
    return load_backbone({"name": "gaussian", "mean": MEAN, "cov": COV}, device="cpu")


def test_defaults_are_the_papers_2d_example():
    g = load_backbone("gaussian", device="cpu")
    assert g.dim == 2 and g.conditional is False
    assert torch.equal(g.mean64, torch.tensor([10.0, 10.0], dtype=torch.float64))
    assert torch.equal(g.cov64, torch.eye(2, dtype=torch.float64))
    # DDPM's linear schedule, leading timesteps with steps_offset 1
    betas = 1 - g.alphas_cumprod[1:] / g.alphas_cumprod[:-1]
    assert math.isclose(float(1 - g.alphas_cumprod[0]), 1e-4, rel_tol=1e-3)  # float32
    assert math.isclose(float(betas[-1]), 0.02, rel_tol=1e-3)
    assert g.timesteps(10).tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert math.isclose(g.final_alpha_cumprod, float(g.alphas_cumprod[0]))


@pytest.mark.parametrize("t", [1, 50, 300, 999])
def test_epsilon_is_tweedie_score(gauss3, t):
    """ε̂ = -sqrt(1-ᾱ) ∇ log p_t(x_t) (Tweedie), the score taken by autograd of the marginal density."""
    a = gauss3.alphas_cumprod.double()[t]
    mean = torch.tensor(MEAN, dtype=torch.float64)
    cov = torch.tensor(COV, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(
        a.sqrt() * mean, a * cov + (1 - a) * torch.eye(3, dtype=torch.float64)
    )
    x = marginal.sample((16,)).requires_grad_(True)
    (score,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
    expected = -(1 - a).sqrt() * score
    got = gauss3.predict_noise(x.detach().float().reshape(16, 3, 1, 1), t, None).reshape(16, 3).double()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_epsilon_matches_posterior_mean_of_x0(gauss3):
    """Another way: E[x0|x_t] by Gaussian conditioning, then ε = (x_t - sqrt(ᾱ) E[x0|x_t]) / sqrt(1-ᾱ)."""
    t = 400
    a = gauss3.alphas_cumprod.double()[t]
    mean = torch.tensor(MEAN, dtype=torch.float64)
    cov = torch.tensor(COV, dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + a.sqrt() * mean
    cross = a.sqrt() * cov  # Cov(x0, x_t)
    var_t = a * cov + (1 - a) * torch.eye(3, dtype=torch.float64)
    x0_post = mean + torch.linalg.solve(var_t, (x - a.sqrt() * mean).T).T @ cross.T
    expected = (x - a.sqrt() * x0_post) / (1 - a).sqrt()
    got = gauss3.model_output(x.float().reshape(8, 3, 1, 1), t, None).reshape(8, 3).double()
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_samplers_reproduce_the_data_distribution(gauss3, eta):
    """DDPM (η=1) and DDIM (η=0) with the optimal predictor: sample mean/cov = μ/Σ within error."""
    B, N = 20000, 500
    gen = torch.Generator().manual_seed(0)
    schedule = gauss3.schedule(N, eta)
    t_top = int(schedule.timesteps[-1])
    a = gauss3.alphas_cumprod.double()[t_top]
    mean = torch.tensor(MEAN, dtype=torch.float64)
    cov = torch.tensor(COV, dtype=torch.float64)
    # start from the exact marginal at the top timestep (x_T ~ N(0, I) would add the prior's bias)
    chol = torch.linalg.cholesky(a * cov + (1 - a) * torch.eye(3, dtype=torch.float64))
    x_top = a.sqrt() * mean + randn((B, 3), gen).double() @ chol.T
    x0 = reverse_process(gauss3, x_top.float().reshape(B, 3, 1, 1), schedule, N, None, None, 1.0, generator=gen)
    x0 = x0.reshape(B, 3).double()
    se_mean = (cov.diagonal() / B).sqrt()
    assert ((x0.mean(0) - mean).abs() < 5 * se_mean).all(), x0.mean(0)
    emp = torch.cov(x0.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / B).sqrt()
    assert ((emp - cov).abs() < 5 * se_cov + 0.01).all(), emp


def test_options_and_errors():
    diag = load_backbone({"name": "gaussian", "mean": [0.0, 1.0, 2.0], "cov": [1.0, 4.0, 9.0]}, device="cpu")
    assert torch.equal(diag.cov64, torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)))
    preset = load_backbone("gaussian", device="cpu", mean=[1.0, 2.0, 3.0, 4.0])
    assert preset.dim == 4
    with pytest.raises(ConfigError, match="cov"):
        load_backbone({"name": "gaussian", "mean": [0.0, 0.0], "cov": [1.0, 2.0, 3.0]}, device="cpu")
    with pytest.raises(ConfigError, match="positive semi-definite"):
        load_backbone({"name": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 2.0], [2.0, 1.0]]}, device="cpu")
    with pytest.raises(ConfigError, match="symmetric"):
        load_backbone({"name": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 0.5], [0.0, 1.0]]}, device="cpu")
    with pytest.raises(ConfigError, match="beta_schedule"):
        load_backbone({"name": "gaussian", "beta_schedule": "cosine"}, device="cpu")
    with pytest.raises(ConfigError, match="unknown option"):
        load_backbone({"name": "gaussian", "means": [0.0]}, device="cpu")
    with pytest.raises(InputError, match="num_steps"):
        preset.timesteps(1000)  # leading spacing + steps_offset 1 would reach timestep 1000


def test_identity_encoding_unconditional_and_cfg_skipped(gauss3):
    x = gauss3.sample_data(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 1, 1)
    assert torch.equal(gauss3.encode_image(x), x) and torch.equal(gauss3.decode(x), x)
    with pytest.raises(InputError, match=r"\(B, 3, 1, 1\)"):
        gauss3.encode_image(torch.zeros(1, 3, 8, 8))
    assert gauss3.encode_prompt(["a cat"]) is None and gauss3.null_condition() is None
    nfe = gauss3.nfe
    plain = gauss3.predict_noise(x, 200, None)
    guided = gauss3.predict_noise(x, 200, gauss3.encode_prompt(["a"]), gauss3.null_condition(), 7.5)
    assert torch.equal(plain, guided)
    assert gauss3.nfe == nfe + 2  # one pass each, no doubled CFG batch


def test_sample_data_statistics(gauss3):
    x = gauss3.sample_data(20000, torch.Generator().manual_seed(1)).reshape(-1, 3).double()
    cov = torch.tensor(COV, dtype=torch.float64)
    assert torch.allclose(x.mean(0), torch.tensor(MEAN, dtype=torch.float64), atol=0.05)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)
