"""The noise process object against closed forms, and the rule that its arithmetic lives only there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from framework.process import DDPMProcess, NoiseProcess, ProcessSchedule, Schedule, make_schedule

ROOT = Path(__file__).resolve().parents[1]


def _process(prediction_type: str = "epsilon") -> DDPMProcess:
    betas = torch.linspace(1e-4, 0.02, 1000)
    return DDPMProcess(torch.cumprod(1 - betas, 0), 0.9999, prediction_type)


def _schedule(eta: float, n: int = 10) -> Schedule:
    ts = torch.arange(1, 1000, 1000 // n).flip(0)
    return _process().discretize(ts, eta)


def test_ddpm_process_implements_the_interface() -> None:
    s = _schedule(1.0)
    assert isinstance(_process(), NoiseProcess) and isinstance(s, ProcessSchedule)
    assert s.num_steps == 10 and s.timestep(1) == 1 and s.timestep(10) == 901


def test_add_noise_has_the_marginal_mean_and_variance_of_eq_2() -> None:
    """x_i = sqrt(ᾱ_i) x0 + sqrt(1-ᾱ_i) ε: over many draws, mean sqrt(ᾱ_i)·x0, variance 1-ᾱ_i."""
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7)
    for i in (1, 5, 10):
        x = s.add_noise(x0, torch.randn(x0.shape, generator=g), i)
        a = float(s.abar[i - 1])
        assert float(x.mean()) == pytest.approx(a**0.5 * 0.7, abs=5e-3)
        assert float(x.var()) == pytest.approx(1 - a, rel=1e-2)
        a_i, b_i = s.noise_level(i)
        assert a_i**2 + b_i**2 == pytest.approx(1.0)


def test_predict_x0_inverts_the_marginal() -> None:
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(64, generator=g), torch.randn(64, generator=g)
    for i in (1, 6, 10):
        torch.testing.assert_close(s.predict_x0(s.add_noise(x0, eps, i), eps, i), x0, rtol=1e-4, atol=1e-4)


def test_noise_map_reproduces_the_previous_latent_exactly() -> None:
    """Eq. 5 then eq. 3 with the same ε: x_{i-1} is recovered, and the in-place form leaves a
    sequence that the reverse step reproduces bit for bit."""
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(2)
    xts = torch.randn(11, 2, 3, generator=g)
    zs = torch.empty_like(xts[1:])
    eps = torch.randn(11, 2, 3, generator=g)
    for i in range(10, 0, -1):
        z = s.noise_map(xts[i - 1], xts[i], eps[i], i)
        torch.testing.assert_close(s.step(xts[i], eps[i], i, z), xts[i - 1], rtol=1e-5, atol=1e-5)
        s.noise_map_step(xts, zs, i, eps[i])
    for i in range(10, 1, -1):  # after the correction the step is exact
        assert torch.equal(s.step(xts[i], eps[i], i, zs[i - 1]), xts[i - 1])
    zero = torch.empty_like(zs)
    s.noise_map_step(xts.clone(), zero, 1, eps[1], zero_last_noise=True)
    assert torch.equal(zero[0], torch.zeros_like(zero[0]))


def test_deterministic_step_has_no_noise_and_noise_map_is_zero_there() -> None:
    s = _schedule(0.0)
    assert torch.all(s.sigma == 0)
    x, eps = torch.randn(8), torch.randn(8)
    assert torch.equal(s.step(x, eps, 3, torch.randn(8)), s.mu(x, eps, 3))
    assert torch.equal(s.noise_map(torch.randn(8), x, eps, 3), torch.zeros(8))


def test_deterministic_step_and_its_inverses() -> None:
    """The affine pair undoes itself for a fixed ε (to float64 rounding); it is the σ = 0 step
    of eq. 3; DDIM inversion's step is its inverse when ε does not change between the levels."""
    s = _schedule(0.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, generator=g, dtype=torch.float64)
    eps = torch.randn(32, generator=g, dtype=torch.float64)
    for i in (1, 4, 10):
        back = s.deterministic_inverse(s.deterministic_step(x, eps, i), eps, i)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
        xf, ef = x.float(), eps.float()
        torch.testing.assert_close(s.deterministic_step(xf, ef, i), s.mu(xf, ef, i), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.mu(s.inverse_step(xf, ef, i), ef, i), xf, rtol=1e-5, atol=1e-5)


def test_posterior_sample_matches_the_textbook_posterior() -> None:
    """η = 1: q(x_{i-1} | x_i, x0) has the DDPM posterior mean and variance σ_i²."""
    s = _schedule(1.0)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(16, generator=g), torch.randn(16, generator=g)
    i = 5
    a, a_prev = float(s.abar[i - 1]), float(s.abar_prev[i - 1])
    xt = s.add_noise(x0, eps, i)
    alpha = a / a_prev
    mean = (a_prev**0.5 * (1 - alpha) / (1 - a)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a)) * xt
    torch.testing.assert_close(s.posterior_sample(xt, x0, i, torch.zeros(16)), mean, rtol=1e-4, atol=1e-5)
    noise = torch.randn(16, generator=g)
    shifted = s.posterior_sample(xt, x0, i, noise) - s.posterior_sample(xt, x0, i, torch.zeros(16))
    torch.testing.assert_close(shifted, s.sigma_at(i) * noise, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_to_epsilon_and_the_x0_conversions(prediction_type: str) -> None:
    p = _process(prediction_type)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = torch.tensor([10, 500, 900])
    a = p.alphas_cumprod[t].reshape(-1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else x0
    torch.testing.assert_close(p.to_epsilon(out, xt, t), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.x0_from_epsilon(xt, eps, t), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.epsilon_from_x0(xt, x0, t), eps, rtol=1e-4, atol=1e-4)


def test_backbone_schedule_is_its_process_discretised(tiny) -> None:
    s = tiny.schedule(10, 1.0)
    ref = make_schedule(tiny.alphas_cumprod, tiny.scheduler_timesteps(10), tiny.final_alpha_cumprod, 1.0)
    assert isinstance(s, ProcessSchedule)
    assert torch.equal(s.timesteps, ref.timesteps) and torch.equal(s.sigma, ref.sigma)


def _code_identifiers(path: Path) -> set[str]:
    """Every name, attribute and argument of a module (docstrings and comments excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
    return found


def test_only_the_process_module_does_alpha_bar_arithmetic() -> None:
    """No inverter, editor, backbone or core module names ᾱ (``abar``): they ask the process."""
    offenders = []
    for path in sorted([*ROOT.glob("framework/**/*.py"), *ROOT.glob("plugins/**/*.py")]):
        if path == ROOT / "framework" / "process.py":
            continue
        names = [n for n in _code_identifiers(path) if "abar" in n.lower()]
        if names:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(names)}")
    assert not offenders, offenders


def test_guidance_is_written_once() -> None:
    """ε̂ = ε_u + w (ε_c - ε_u) lives in ``framework.backbone.guide``; no other module of the
    framework or its plugins writes it (its (ε_c - ε_u) difference)."""
    from framework.backbone import guide

    eps_u, eps_c = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(guide(eps_u, eps_c, 1.0), eps_c)
    assert torch.equal(guide(eps_u, eps_c, 2.5), eps_u + 2.5 * (eps_c - eps_u))
    per_row = guide(eps_u, eps_c, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(per_row[0], eps_c[0])
    assert torch.equal(per_row[1], eps_u[1] + 3.0 * (eps_c[1] - eps_u[1]))
    writers = []
    for path in sorted([*ROOT.glob("framework/**/*.py"), *ROOT.glob("plugins/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # a subtraction whose right side is a name ending in _u, multiplied by something
            if (
                isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
                and any(
                    isinstance(side, ast.BinOp) and isinstance(side.op, ast.Sub)
                    and isinstance(side.right, ast.Name) and side.right.id.endswith("_u")
                    for side in (node.left, node.right)
                )
            ):
                writers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert writers == [f"framework/backbone.py:{_guide_line()}"], writers


def _guide_line() -> int:
    import inspect

    from framework import backbone

    lines, start = inspect.getsourcelines(backbone.guide)
    return start + next(k for k, line in enumerate(lines) if "return eps_u + w" in line)
