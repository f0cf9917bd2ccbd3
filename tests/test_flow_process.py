"""The flow-matching process against closed forms and against diffusers' Euler scheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from framework.backbone import FlowMatchBackbone
from framework.process import FlowMatchProcess, FlowSchedule, NoiseProcess, ProcessSchedule


def _scheduler(shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def _schedule(eta: float, n: int = 10, shift: float = 3.0) -> FlowSchedule:
    sch = _scheduler(shift)
    sch.set_timesteps(n)
    return FlowMatchProcess(1000).discretize_times(sch.sigmas, eta, timesteps_desc=sch.timesteps)


def test_the_schedule_is_the_schedulers_sigmas_and_timesteps() -> None:
    sch = _scheduler()
    sch.set_timesteps(10)
    s = _schedule(0.5)
    assert isinstance(s, ProcessSchedule) and isinstance(FlowMatchProcess(), NoiseProcess)
    assert s.num_steps == 10
    assert torch.equal(s.timesteps, sch.timesteps.flip(0))
    assert torch.equal(s.t, sch.sigmas[:-1].flip(0)) and float(s.t_prev[0]) == 0.0
    assert torch.equal(s.t_prev[1:], s.t[:-1])
    assert s.t[-1] == 1.0  # the first step starts from pure noise
    assert isinstance(s.timestep(3), float) and s.timestep(3) == float(sch.timesteps[7])
    # from the model timesteps alone (1000·t): the same times up to float32 rounding
    t2 = FlowMatchProcess(1000).discretize(sch.timesteps, 0.5)
    torch.testing.assert_close(t2.t, s.t, rtol=0, atol=1e-6)


def test_marginal_and_clean_prediction() -> None:
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, generator=g), torch.randn(64, generator=g)
    for i in (1, 4, 10):
        t = float(s.t[i - 1])
        assert s.noise_level(i) == (1 - t, t)
        x = s.add_noise(x0, eps, i)
        torch.testing.assert_close(x, (1 - t) * x0 + t * eps)
        v = eps - x0  # the exact velocity of this (x0, ε) pair
        torch.testing.assert_close(s.predict_x0(x, v, i), x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.epsilon(x, v, i), eps, rtol=1e-5, atol=1e-5)
        p = FlowMatchProcess(1000)
        ts = s.timestep(i)
        torch.testing.assert_close(p.to_epsilon(v, x, ts), eps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.x0_from_velocity(x, v, ts), x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.epsilon_from_x0(x, x0, ts), eps, rtol=1e-4, atol=1e-4)
        if t < 1:
            torch.testing.assert_close(p.x0_from_epsilon(x, eps, ts), x0, rtol=1e-4, atol=1e-4)
    # per-row timesteps broadcast over the trailing axes
    x = torch.randn(3, 2, 4, 4, generator=g)
    v = torch.randn(3, 2, 4, 4, generator=g)
    rows = torch.tensor([1000.0, 500.0, 0.0])
    expect = x + torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1) * v
    torch.testing.assert_close(FlowMatchProcess(1000).to_epsilon(v, x, rows), expect)


def test_euler_step_is_mu_at_eta_0_and_diffusers_step() -> None:
    """σ = 0: μ̂ = (1−s)·x̂0 + s·ε̂ = x_t + (s − t)·v, bit for bit diffusers' Euler step."""
    s = _schedule(0.0)
    assert torch.equal(s.sigma, torch.zeros(10))
    sch = _scheduler()
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for k, t in enumerate(sch.timesteps):
        i = 10 - k
        v = torch.randn(x.shape, generator=g)
        mine = s.step(x, v, i)
        theirs = sch.step(v, t, x, return_dict=False)[0]
        assert torch.equal(mine, theirs)
        t_i, t_prev = s.times(i)
        by_parts = (1 - t_prev) * s.predict_x0(x, v, i) + t_prev * s.epsilon(x, v, i)
        torch.testing.assert_close(mine, by_parts, rtol=1e-5, atol=1e-5)
        assert torch.equal(s.deterministic_step(x, v, i), mine)
        x = mine


def test_mu_with_eta_is_the_general_ddim_mean() -> None:
    s = _schedule(0.7)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(100, generator=g), torch.randn(100, generator=g)
    for i in (1, 2, 5, 10):
        t, sp = s.times(i)
        sigma = s.sigma_at(i)
        expect_sigma = 0.7 * sp * (1 - ((1 - t) * sp / ((1 - sp) * t)) ** 2) ** 0.5 if sp > 0 else 0.0
        assert sigma == pytest.approx(expect_sigma, rel=1e-6, abs=1e-9)
        x0_hat, eps_hat = x - t * v, x + (1 - t) * v
        expect = (1 - sp) * x0_hat + (sp**2 - sigma**2) ** 0.5 * eps_hat
        torch.testing.assert_close(s.mu(x, v, i), expect, rtol=1e-5, atol=1e-5)
    assert s.sigma_at(1) == 0.0  # the last step ends at t = 0
    assert s.sigma_at(10) == pytest.approx(0.7 * float(s.t_prev[9]))  # from t = 1: σ = η·s


def test_inverse_step_undoes_the_step_for_a_constant_velocity() -> None:
    s = _schedule(0.0)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(2, 4, 8, 8, generator=g)  # a constant velocity field
    x_n = torch.randn(2, 4, 8, 8, generator=g)
    x = x_n
    for i in range(10, 0, -1):
        x = s.step(x, v, i)
    for i in range(1, 11):
        x = s.inverse_step(x, v, i)
    torch.testing.assert_close(x, x_n, rtol=1e-5, atol=1e-5)
    for i in (1, 7):
        y = torch.randn(2, 4, 8, 8, generator=g)
        back = s.deterministic_inverse(s.deterministic_step(y, v, i), v, i)
        torch.testing.assert_close(back, y, rtol=1e-6, atol=1e-6)


def test_noise_map_then_step_reproduces_the_previous_latent() -> None:
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(4)
    for i in (2, 5, 10):
        x_t, x_prev, v = (torch.randn(3, 4, 4, generator=g) for _ in range(3))
        z = s.noise_map(x_prev, x_t, v, i)
        torch.testing.assert_close(s.step(x_t, v, i, z), x_prev, rtol=1e-5, atol=1e-5)
    # the step to t = 0 has σ_1 = 0; its map is the residual in units of t_1, so that a pass given
    # the maps reproduces x_0 too (without maps, the sampler's last step stays deterministic)
    assert s.sigma_at(1) == 0 and s.map_scale(1) == float(s.t[0]) and s.map_scale(4) == s.sigma_at(4)
    z1 = s.noise_map(x_prev, x_t, v, 1)
    torch.testing.assert_close(z1, (x_prev - s.mu(x_t, v, 1)) / float(s.t[0]))
    torch.testing.assert_close(s.mu(x_t, v, 1) + s.map_scale(1) * z1, x_prev, rtol=1e-5, atol=1e-5)
    assert torch.equal(s.step(x_t, v, 1, z1), s.mu(x_t, v, 1))
    assert _schedule(0.0).map_scale(1) == 0  # η = 0: no maps at all
    xts = torch.randn(11, 2, 3, generator=g)
    zs = torch.empty_like(xts[1:])
    vs = torch.randn(10, 2, 3, generator=g)
    for i in range(10, 0, -1):
        s.noise_map_step(xts, zs, i, vs[i - 1])
    x = xts[10]
    for i in range(10, 0, -1):
        x = s.mu(x, vs[i - 1], i) + s.map_scale(i) * zs[i - 1]
        if i > 1:
            assert torch.equal(x, xts[i - 1])
    torch.testing.assert_close(x, xts[0], rtol=1e-5, atol=1e-5)


def test_sigma_at_eta_1_is_the_forward_chains_posterior() -> None:
    """The forward chain x_s = (1−s)·x0 + s·w1, x_t = ((1−t)/(1−s))·x_s + c·w2 as a joint Gaussian
    (x0 ~ N(0, 1)); conditioning on (x0, x_t) by the Schur complement gives the posterior
    variance and mean, which σ_i (η = 1) and ``posterior_sample`` must equal."""
    s = _schedule(1.0, n=12)
    g = torch.Generator().manual_seed(5)
    for i in range(2, 13):
        t, sp = (float(v) for v in s.times(i))
        r = (1 - t) / (1 - sp)
        c2 = t**2 - r**2 * sp**2
        # (x0, x_s, x_t) = L @ (x0, w1, w2)
        lin = torch.tensor([[1.0, 0, 0], [1 - sp, sp, 0], [r * (1 - sp), r * sp, c2**0.5]], dtype=torch.float64)
        cov = lin @ lin.T
        obs = [0, 2]
        k_so = cov[1, obs]
        k_oo = cov[obs][:, obs]
        post_var = float(cov[1, 1] - k_so @ torch.linalg.solve(k_oo, k_so))
        assert s.sigma_at(i) ** 2 == pytest.approx(post_var, rel=1e-5, abs=1e-9)
        x0, x_t = torch.randn(50, generator=g), torch.randn(50, generator=g)
        weights = torch.linalg.solve(k_oo, k_so).float()
        post_mean = weights[0] * x0 + weights[1] * x_t
        torch.testing.assert_close(s.posterior_sample(x_t, x0, i, torch.zeros(50)), post_mean, rtol=1e-4, atol=1e-5)


class _GaussianFlow(FlowMatchBackbone):
    """Data x0 ~ N(m, diag(c)) in d dimensions; the exact velocity E[ε − x0 | x_t]:
    with r = x − (1−t)·m and Σ_t = (1−t)²·c + t², v = (t − (1−t)·c)·r/Σ_t − m."""

    conditional = False

    def __init__(self, m: list[float], c: list[float], shift: float) -> None:
        super().__init__()
        self.m = torch.tensor(m, dtype=torch.float64).reshape(1, -1, 1, 1)
        self.c = torch.tensor(c, dtype=torch.float64).reshape(1, -1, 1, 1)
        self.set_scheduler(_scheduler(shift))
        self.seen: list[object] = []

    def encode_image(self, images):  # pragma: no cover - not used
        return images

    def decode(self, x0):  # pragma: no cover - not used
        return x0

    def encode_prompt(self, prompts):  # pragma: no cover - not used
        return None

    def model_output(self, x_t, t, cond):
        self.seen.append(t)
        tt = torch.as_tensor(t, dtype=torch.float64) / 1000
        var = (1 - tt) ** 2 * self.c + tt**2
        r = x_t.double() - (1 - tt) * self.m
        return ((tt - (1 - tt) * self.c) * r / var - self.m).float()


def _sample_moments(model: _GaussianFlow, n: int, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x_0 when x_N ~ N(0, 1), exactly: every step is affine in x
    (x -> μ̂(x) + σ·z with v affine in x), so two points per dimension give its slope and offset."""
    s = model.schedule(n, eta)
    d = model.m.shape[1]
    mean, var = torch.zeros(1, d, 1, 1, dtype=torch.float64), torch.ones(1, d, 1, 1, dtype=torch.float64)
    probe = torch.stack([torch.zeros(d), torch.ones(d)]).reshape(2, d, 1, 1)
    for i in range(n, 0, -1):
        out = s.mu(probe, model.predict_noise(probe, s.timestep(i), None), i).double()
        slope, offset = out[1] - out[0], out[0]
        mean = slope * mean + offset
        var = slope**2 * var + s.sigma_at(i) ** 2
    return mean.flatten(), var.flatten()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_an_analytic_gaussian_flow_reaches_its_law(eta: float) -> None:
    """With the exact velocity of Gaussian data, Euler (η = 0) and the stochastic sampler
    (η = 1) end at the data's mean and variance as the steps grow (first-order convergence)."""
    m, c = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.25, 4.0], dtype=torch.float64)
    model = _GaussianFlow(m.tolist(), c.tolist(), shift=1.0)
    errors, variances = [], []
    for n in (20, 80, 320):
        mean, var = _sample_moments(model, n, eta)
        torch.testing.assert_close(mean, m, rtol=0, atol=1e-5)  # the sampler is unbiased in the mean
        variances.append(var)
        errors.append(float(((var - c) / c).abs().max()))
    # first order in the step size: 4x the steps, about a quarter of the variance's error ...
    assert errors[0] > 3 * errors[1] > 9 * errors[2]
    # ... towards the data's variance: Richardson's extrapolation of the last two removes the
    # first-order term and leaves far less than the error at 320 steps
    limit = (4 * variances[2] - variances[1]) / 3
    assert float(((limit - c) / c).abs().max()) < errors[2] / 5
    # the network saw float timesteps 1000·t, one shared by the batch
    assert all(isinstance(t, float) for t in model.seen) and model.seen[0] == 1000.0


def test_flow_backbone_timesteps_stay_float_per_row() -> None:
    model = _GaussianFlow([0.0], [1.0], shift=3.0)
    ts = model.timesteps(4)
    assert ts.dtype == torch.float32 and torch.equal(ts, model.schedule(4, 0.0).timesteps)
    x = torch.zeros(4, 1, 1, 1)
    model.predict_noise(x, ts, None)
    assert model.seen[-1].dtype == torch.float32 and torch.equal(model.seen[-1], ts)
