"""The analytic Gaussian model: data ~ N(μ, Σ) in d dimensions, no weights.

For Gaussian data the forward marginal is x_t ~ N(sqrt(ᾱ_t) μ, ᾱ_t Σ + (1-ᾱ_t) I), and the optimal
(MMSE) noise predictor is closed form:

    E[ε | x_t] = sqrt(1-ᾱ_t) (ᾱ_t Σ + (1-ᾱ_t) I)^{-1} (x_t - sqrt(ᾱ_t) μ).

It is evaluated through the eigendecomposition Σ = U diag(λ) Uᵀ (float64, then cast to
float32), so every step costs O(B d²) and nothing depends on the number of timesteps.

Shapes: the rest of the framework works on (B, C, h, w) tensors, so a data point is stored as
(B, d, 1, 1). ``encode_image`` and ``decode`` are the identity on that shape (there are no
images: "x0" is the data point itself). The model is unconditional: ``encode_prompt`` returns
None, prompts are ignored, and ``predict_noise`` skips classifier-free guidance.

Schedule: by default DDPM's linear β from 1e-4 to 0.02 over 1000 training steps (Ho et al.),
with the timesteps of a diffusers DDIM scheduler with "leading" spacing and ``steps_offset`` 1,
and ``set_alpha_to_one`` False (the final ᾱ is ᾱ at timestep 0), the convention of Stable
Diffusion and of the paper's code, so σ_1 > 0 and every step has a noise map. (With
``steps_offset`` 1 the "leading" spacing cannot run num_steps = num_train_timesteps, whose
last timestep would be out of range; use ``steps_offset: 0`` for that.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from framework.backbone import Backbone, resolve_device
from framework.conditioning import Conditioning
from framework.errors import ConfigError, InputError
from framework.random import randn
from framework.registry import BACKBONES

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class GaussianOptions:
    """Options of the ``gaussian`` backbone (defaults: the paper's 2D example, Figure 5)."""

    mean: list[float] = field(default_factory=lambda: [10.0, 10.0])  # μ, d entries
    # Σ: None = identity; a list of d numbers = a diagonal; a list of d lists = the full matrix
    cov: Any = None
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    device: str = "cpu"


def covariance_matrix(cov: Any, d: int) -> Tensor:
    """Σ (d, d) float64 from None (identity), a diagonal list, or a list of lists; checked PSD."""
    if cov is None:
        return torch.eye(d, dtype=torch.float64)
    try:
        c = torch.as_tensor(cov, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"gaussian cov must be a list of {d} numbers (a diagonal) or a {d}x{d} list of lists, got {cov!r}"
        ) from None
    if c.dim() == 0:
        c = c * torch.eye(d, dtype=torch.float64)
    elif c.dim() == 1 and c.shape[0] == d:
        c = torch.diag(c)
    if c.shape != (d, d):
        raise ConfigError(
            f"gaussian cov must be a list of {d} numbers (a diagonal) or a {d}x{d} list of lists "
            f"for a {d}-dimensional mean, got shape {tuple(c.shape)}"
        )
    if not torch.allclose(c, c.T, atol=1e-10):
        raise ConfigError("gaussian cov must be symmetric")
    if torch.linalg.eigvalsh(c).min() < -1e-10:
        raise ConfigError("gaussian cov must be positive semi-definite (it has a negative eigenvalue)")
    return c


@BACKBONES.register("gaussian")
class GaussianBackbone(Backbone):
    """Data ~ N(μ, Σ) with the closed-form optimal noise predictor (see the module docstring)."""

    Options = GaussianOptions
    conditional = False
    prediction_type = "epsilon"
    resolution = 1
    size_multiple = 1

    def __init__(self, options: GaussianOptions | None = None) -> None:
        super().__init__()
        from diffusers import DDIMScheduler

        self.options = options = options or GaussianOptions()
        if not options.mean:
            raise ConfigError("gaussian mean must be a non-empty list of numbers, e.g. [10, 10]")
        if options.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown gaussian beta_schedule {options.beta_schedule!r}; accepted: {', '.join(BETA_SCHEDULES)}"
            )
        if options.num_train_timesteps < 2:
            raise ConfigError(f"gaussian num_train_timesteps must be >= 2, got {options.num_train_timesteps}")
        self.device = resolve_device(options.device)
        self.mean64 = torch.as_tensor(list(options.mean), dtype=torch.float64)  # (d,)
        self.dim = int(self.mean64.shape[0])
        self.cov64 = covariance_matrix(options.cov, self.dim)  # (d, d)
        lam, u = torch.linalg.eigh(self.cov64)
        self.eigvals64 = lam.clamp(min=0)  # (d,)
        self.eigvecs64 = u  # (d, d), columns are eigenvectors
        self.set_scheduler(DDIMScheduler(
            num_train_timesteps=options.num_train_timesteps,
            beta_start=options.beta_start,
            beta_end=options.beta_end,
            beta_schedule=options.beta_schedule,
            clip_sample=False,
            set_alpha_to_one=options.set_alpha_to_one,
            steps_offset=options.steps_offset,
            timestep_spacing="leading",
            prediction_type="epsilon",
        ))
        self._alphas_cumprod64 = self.scheduler.alphas_cumprod.to(torch.float64).clone()

    # ----------------------------------------------------------------- data
    def _check(self, x: Tensor, what: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (self.dim, 1, 1):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"the gaussian backbone's {what} must have shape (B, {self.dim}, 1, 1) "
                f"(one {self.dim}-dimensional point per row), got {shape}"
            )
        return x

    def encode_image(self, images: Tensor) -> Tensor:
        """Identity on (B, d, 1, 1): the data point is its own latent (there are no images)."""
        return self._check(images, "input").to(self.device, torch.float32)

    def decode(self, x0: Tensor) -> Tensor:
        """Identity on (B, d, 1, 1)."""
        return self._check(x0, "x0").to(self.device, torch.float32)

    def encode_prompt(self, prompts: Sequence[str]) -> None:
        """Unconditional model: prompts are ignored (returns None)."""
        return None

    def sample_data(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of the data distribution, (num, d, 1, 1) float32: μ + U sqrt(λ) ξ."""
        xi = randn((num, self.dim), generator, "cpu").to(torch.float64)
        x = self.mean64 + (xi * self.eigvals64.sqrt()) @ self.eigvecs64.T
        return x.to(self.device, torch.float32).reshape(num, self.dim, 1, 1)

    # ----------------------------------------------------------------- the "network"
    def optimal_epsilon(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """E[ε | x_t] = sqrt(1-ᾱ)(ᾱΣ + (1-ᾱ)I)^{-1}(x_t - sqrt(ᾱ)μ), (B, d, 1, 1) float32."""
        if isinstance(t, Tensor) and t.dim() > 0:  # one timestep per row: ᾱ is (B, 1)
            a = self._alphas_cumprod64[t.to("cpu", torch.int64)].reshape(-1, 1)
        else:
            a = self._alphas_cumprod64[int(t)]
        x = self._check(x_t, "x_t").reshape(x_t.shape[0], self.dim).to("cpu", torch.float64)
        r = x - a.sqrt() * self.mean64  # (B, d)
        coeff = (1 - a).sqrt() / (a * self.eigvals64 + (1 - a))  # (d,) or (B, d)
        eps = ((r @ self.eigvecs64) * coeff) @ self.eigvecs64.T
        return eps.to(x_t.device, torch.float32).reshape(x_t.shape)

    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Conditioning | None) -> Tensor:
        """The optimal noise predictor (``cond`` is ignored)."""
        return self.optimal_epsilon(x_t, t)

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "prediction_type": self.prediction_type,
            "dim": self.dim,
            "mean": [float(v) for v in self.mean64],
            "cov": self.cov64.tolist(),
            "beta_schedule": self.options.beta_schedule,
            "num_train_timesteps": self.options.num_train_timesteps,
        }
