"""The noise process of a model family as an object: the one home of its arithmetic.

Two levels:

* :class:`NoiseProcess`: the family over the model's own time axis (its training timesteps).
  It converts the network's output at timestep(s) t to the noise prediction ε
  (:meth:`~NoiseProcess.to_epsilon`) and discretises itself for N inference steps and a
  stochasticity η (:meth:`~NoiseProcess.discretize`).
* :class:`ProcessSchedule`: the process at N steps in paper indexing. Steps are numbered
  i = 1..N: step i takes x_i to x_{i-1} at model timestep ``timesteps[i-1]``. Every inverter
  and editor does its arithmetic through these methods; none writes the process' coefficients
  itself.

The interface is written in terms of ε (the noise a latent holds) and x̂0 (the clean
prediction), which every family has. The prediction the methods take as ``eps`` is what
the process' :meth:`NoiseProcess.to_prediction` returns: ε for DDPM, the velocity for flow
matching (see below); inverters and editors only pass it from the backbone to the schedule.
The contract of a :class:`ProcessSchedule`:

* forward marginal (eq. 2): x_i = a_i·x0 + b_i·ε with ``(a_i, b_i) = noise_level(i)``;
  :meth:`add_noise` computes it;
* clean prediction (eq. 4): :meth:`predict_x0` inverts the marginal for a given ε;
* the reverse step (eq. 3): x_{i-1} = μ̂_i(x_i, ε) + σ_i·z (:meth:`mu`, :attr:`sigma`,
  :meth:`step`); σ_i = 0 at every step is the process' deterministic sampler;
* the noise map of a step (eq. 5): z_i = (x_{i-1} − μ̂_i)/σ_i (:meth:`noise_map`), and its
  in-place form along a stored sequence (:meth:`noise_map_step`), which also resets
  x_{i-1} := μ̂_i + σ_i z_i so the reverse pass reproduces the sequence to float precision;
* the posterior of the forward chain given x0 (:meth:`posterior_sample`, CycleDiffusion);
* the deterministic step's inverse as DDIM inversion takes it: ε evaluated at x_{i-1}, then
  x_i = a_i·x̂0 + b_i·ε with x̂0 predicted at step i-1's level (:meth:`inverse_step`);
* the deterministic step as an affine map of x for a fixed ε, and its exact inverse
  (:meth:`deterministic_step`, :meth:`deterministic_inverse`: EDICT's coupled updates).

DDPM/DDIM (:class:`DDPMProcess`, :class:`Schedule`): a_i = sqrt(ᾱ_i), b_i = sqrt(1−ᾱ_i),

    x̂0   = (x_i − sqrt(1−ᾱ_i) ε) / sqrt(ᾱ_i)
    σ_i  = η sqrt((1−ᾱ_prev)/(1−ᾱ_i) · (1−ᾱ_i/ᾱ_prev))
    μ̂_i  = sqrt(ᾱ_prev) x̂0 + sqrt(1−ᾱ_prev−σ_i²) ε

which is DDIM's formula for every η in [0, 1] (η = 1 is DDPM's posterior variance, η = 0
DDIM); ᾱ_prev of step 1 is the scheduler's ``final_alpha_cumprod``. All of it in float32.

Flow matching (:class:`FlowMatchProcess`, :class:`FlowSchedule`: SD3, FLUX, ``digits_flow``),
with t in [0, 1] (t = 1 pure noise), t_i the time of step i and s = t_{i-1}:

* marginal x_i = (1−t_i)·x0 + t_i·ε, so ``noise_level(i) = (1−t_i, t_i)``; the model's timestep
  input is 1000·t (a float: ``timesteps`` are float32), and t_i are the sigmas of diffusers'
  ``FlowMatchEulerDiscreteScheduler`` for N steps (shifted, then a final 0);
* the network predicts the velocity v = ε − x0, so ε = x_t + (1−t)·v and x0 = x_t − t·v.
  The prediction a flow schedule's methods take in ε's place is v itself
  (:meth:`NoiseProcess.to_prediction`): the first step starts at t_N = 1, where x_t = ε carries
  nothing of x0 and the ε form x̂0 = (x_t − t·ε)/(1−t) divides by zero, whereas x̂0 = x_t − t·v
  is exact. Classifier-free guidance is affine, so guiding v or ε is the same;
  :meth:`FlowMatchProcess.to_epsilon` gives ε where one is wanted;
* the stochastic sampler is DDIM's for general marginals (a_t, b_t): the forward chain
  x_t = (a_t/a_s)·x_s + sqrt(b_t² − (a_t/a_s)²·b_s²)·w (w standard normal) has, given x0 and x_t,
  the Gaussian posterior with variance b_s²·(1 − (a_t·b_s/(a_s·b_t))²) (the conditional of the
  joint Gaussian of (x_s, x_t) given x0); with a = 1−t, b = t

      σ_i  = η · s · sqrt(1 − ((1−t)·s / ((1−s)·t))²)
      μ̂_i  = (1−s)·x̂0 + sqrt(s² − σ_i²)·ε̂,   x̂0 = x_t − t·v̂,  ε̂ = x_t + (1−t)·v̂

  η = 1 is the forward chain's posterior (its mean is (1−s)·x0 + sqrt(s² − σ²)·ε for the ε
  that x_t holds given x0), η = 0 the deterministic step, which for flows is the Euler step
  μ̂ = x_t + (s − t)·v̂ (expand (1−s)(x_t − t·v) + s(x_t + (1−t)·v)). μ̂ is computed as
  x_t + (s − t)·v̂ + (sqrt(s² − σ²) − s)·ε̂, so that η = 0 is diffusers' Euler step to the bit.
  At t = 1 (the first step) σ = η·s: x_t holds no information about x_s beyond x0;
* noise maps (eq. 5) and :meth:`~ProcessSchedule.noise_map_step` are the shared ones, with one
  difference: the last step goes to t_0 = 0, where σ_1 = 0 for every η (x_0's posterior given x0
  is a point), so DDPM's trick of a small final σ_1 absorbing the residual is not available.
  There :meth:`~FlowSchedule.map_scale` is t_1 (η > 0): z_1 = (x_0 − μ̂_1)/t_1, the residual in
  units of the step's noise level, and a reverse pass given the maps adds t_1·z_1, so the
  edit-friendly sequence is reproduced to float precision down to x_0; sampling without maps
  (fresh noise) keeps the last step deterministic;
* ``posterior_sample`` draws the chain with ε = (x_t − (1−t)·x0)/t;
* ``inverse_step`` is the Euler step backwards, x_t = x_s + (t − s)·v with v evaluated at x_s
  (DDIM inversion); ``deterministic_step``/``deterministic_inverse`` are x_s = x_t + (s − t)·v and
  x_t = x_s − (s − t)·v, affine in x for a fixed v (EDICT).
Loops, inverters and editors run unchanged on either process.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from framework.errors import InputError


# ----------------------------------------------------------------------------- the interface
class ProcessSchedule(abc.ABC):
    """A noise process discretised for ``num_steps`` inference steps (see the module docstring
    for the contract every implementation keeps)."""

    timesteps: Tensor  # (N,) ascending: timesteps[i-1] is the model timestep of step i (int64; float32 for flows)
    eta: float

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    @abc.abstractmethod
    def sigma(self) -> Tensor:
        """(N,) float32: σ_i of the reverse step i at index i-1 (all 0 for a deterministic one)."""

    def sigma_at(self, i: int) -> float:
        """σ_i as a Python float."""
        return float(self.sigma[i - 1])

    def map_scale(self, i: int) -> float:
        """The scale of step i's noise map (eq. 5 divides by it, a reverse pass given the maps
        multiplies by it): σ_i, 0 meaning the step has no map. A process may give a
        deterministic step a map that carries its residual (see :class:`FlowSchedule`)."""
        return self.sigma_at(i)

    def timestep(self, i: int) -> int | float:
        """The model timestep of step i: an int for integer timesteps (DDPM), a float for a
        flow's 1000·t."""
        return self.timesteps[i - 1].item()

    @abc.abstractmethod
    def noise_level(self, i: int) -> tuple[float, float]:
        """(a_i, b_i) with x_i = a_i·x0 + b_i·ε: the forward marginal at step i (eq. 2, 6)."""

    def add_noise(self, x0: Tensor, noise: Tensor, i: int) -> Tensor:
        """x_i = a_i·x0 + b_i·noise (eq. 2 with the given noise)."""
        a, b = self.noise_level(i)
        return a * x0 + b * noise

    @abc.abstractmethod
    def predict_x0(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x̂0 of x_i for the noise prediction ε (eq. 4's P(f_i(x_i)))."""

    @abc.abstractmethod
    def mu(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """μ̂_i(x_i, ε): the deterministic part of the reverse step i (eq. 3)."""

    def step(self, x_t: Tensor, eps: Tensor, i: int, z: Tensor | None = None) -> Tensor:
        """The reverse step i: μ̂_i + σ_i·z (μ̂_i where σ_i = 0 or no z is given)."""
        mu = self.mu(x_t, eps, i)
        sigma = self.sigma_at(i)
        if sigma == 0 or z is None:
            return mu
        return mu + sigma * z

    def noise_map(self, x_prev: Tensor, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """Eq. 5: z_i = (x_{i-1} − μ̂_i(x_i, ε)) / σ_i (zeros where σ_i = 0), σ_i being
        :meth:`map_scale`."""
        mu = self.mu(x_t, eps, i)
        sigma = self.map_scale(i)
        if sigma == 0:
            return torch.zeros_like(mu)
        return (x_prev - mu) / sigma

    def noise_map_step(self, xts: Tensor, zs: Tensor, i: int, eps: Tensor, zero_last_noise: bool = False) -> None:
        """Eq. 5 at step i, in place along a stored sequence ``xts`` (n+1, B, ...): z_i into
        ``zs[i-1]`` (0 where σ_i = 0, or at i = 1 with ``zero_last_noise``), then
        x_{i-1} := μ̂_i + σ_i z_i (i > 1), so that the reverse pass fed with the maps reproduces
        the sequence to float precision (σ_i: :meth:`map_scale`)."""
        mu = self.mu(xts[i], eps, i)
        sigma = self.map_scale(i)
        if sigma == 0 or (i == 1 and zero_last_noise):
            zs[i - 1] = 0
        else:
            zs[i - 1] = (xts[i - 1] - mu) / sigma
        if i > 1:
            xts[i - 1] = mu + sigma * zs[i - 1]

    @abc.abstractmethod
    def posterior_sample(self, x_t: Tensor, x0: Tensor, i: int, noise: Tensor) -> Tensor:
        """x_{i-1} drawn from the forward chain's posterior given x_i and x0, with ``noise``
        the standard normal draw: the step's mean for the ε that x_i holds given x0, plus
        σ_i·noise."""

    @abc.abstractmethod
    def inverse_step(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """DDIM inversion's step i: x_{i-1} -> x_i with ε evaluated at x_{i-1} (approximate:
        the reverse step evaluates ε at x_i)."""

    @abc.abstractmethod
    def deterministic_step(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """The deterministic reverse step i (x_i -> x_{i-1}) written as an affine map of x for
        a fixed ε, in the form whose :meth:`deterministic_inverse` undoes it exactly in exact
        arithmetic (EDICT)."""

    @abc.abstractmethod
    def deterministic_inverse(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """The inverse of :meth:`deterministic_step` for the same ε: x_{i-1} -> x_i."""


class NoiseProcess(abc.ABC):
    """A model family's noise process over its training timesteps."""

    prediction_type: str
    #: whether the model's timesteps are floats (flows: 1000·t) rather than integers
    float_timesteps: bool = False

    def to_prediction(self, out: Tensor, x_t: Tensor, t: int | float | Tensor) -> Tensor:
        """The network's output as the prediction this process' schedules take in ε's place
        (float32): ε itself, unless a process says otherwise (flows: the velocity)."""
        return self.to_epsilon(out, x_t, t)

    @abc.abstractmethod
    def discretize(self, timesteps_desc: Tensor, eta: float) -> ProcessSchedule:
        """The process at the given inference timesteps (descending, diffusers order) and η."""

    @abc.abstractmethod
    def to_epsilon(self, out: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """The network's output at timestep(s) t (an int, or (B,) one per row) as ε, float32."""

    @abc.abstractmethod
    def x0_from_epsilon(self, x_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """x̂0 of x_t at model timestep(s) t for the noise ε."""

    @abc.abstractmethod
    def epsilon_from_x0(self, x_t: Tensor, x0: Tensor, t: int | Tensor) -> Tensor:
        """The ε that x_t holds at model timestep(s) t given x0."""


# ----------------------------------------------------------------------------- DDPM / DDIM
@dataclass(frozen=True)
class Schedule(ProcessSchedule):
    """The DDPM/DDIM process at ``num_steps`` inference steps (index i-1 is step i)."""

    timesteps: Tensor  # (N,) int64, ascending: timesteps[i-1] is the model timestep of step i
    abar: Tensor  # (N,) float32, ᾱ at step i
    abar_prev: Tensor  # (N,) float32, ᾱ at step i-1 (final_alpha_cumprod for i = 1)
    eta: float

    @cached_property
    def sigma(self) -> Tensor:
        """(N,) σ_i = η sqrt((1-ᾱ_prev)/(1-ᾱ_i)·(1-ᾱ_i/ᾱ_prev)), computed once per schedule."""
        var = (1 - self.abar_prev) / (1 - self.abar) * (1 - self.abar / self.abar_prev)
        return self.eta * var.clamp(min=0).sqrt()

    def coefficients(self, i: int) -> tuple[float, float, float, float]:
        """(ᾱ_i, ᾱ_prev, σ_i, timestep) of step ``i`` (1-based) as Python floats."""
        return (
            float(self.abar[i - 1]),
            float(self.abar_prev[i - 1]),
            float(self.sigma[i - 1]),
            int(self.timesteps[i - 1]),
        )

    def predict_x0(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x̂0 = (x_i - sqrt(1-ᾱ_i) ε) / sqrt(ᾱ_i), the clean prediction P(f_t(x_t)) of eq. 4."""
        a = float(self.abar[i - 1])
        return (x_t - (1 - a) ** 0.5 * eps) / a**0.5

    def _mean(self, x0: Tensor, eps: Tensor, i: int) -> Tensor:
        """sqrt(ᾱ_prev) x0 + sqrt(1-ᾱ_prev-σ_i²) ε."""
        _, a_prev, sigma, _ = self.coefficients(i)
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5
        return a_prev**0.5 * x0 + direction * eps

    def mu(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """μ̂_i(x_i): the deterministic part of the reverse step i (float32)."""
        return self._mean(self.predict_x0(x_t, eps, i), eps, i)

    def noise_level(self, i: int) -> tuple[float, float]:
        """(sqrt(ᾱ_i), sqrt(1-ᾱ_i)): x_i = sqrt(ᾱ_i) x0 + sqrt(1-ᾱ_i) ε for step i (eq. 2, 6)."""
        a = float(self.abar[i - 1])
        return a**0.5, (1 - a) ** 0.5

    def posterior_sample(self, x_t: Tensor, x0: Tensor, i: int, noise: Tensor) -> Tensor:
        """q(x_{i-1} | x_i, x0) of DDIM's η family: sqrt(ᾱ_prev) x0 + sqrt(1-ᾱ_prev-σ_i²) ε_i
        + σ_i·noise with ε_i = (x_i - sqrt(ᾱ_i) x0) / sqrt(1-ᾱ_i)."""
        a = float(self.abar[i - 1])
        eps = (x_t - a**0.5 * x0) / (1 - a) ** 0.5
        return self._mean(x0, eps, i) + self.sigma_at(i) * noise

    def inverse_step(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """x̂0 = (x_{i-1} - sqrt(1-ᾱ_prev) ε) / sqrt(ᾱ_prev), x_i = sqrt(ᾱ_i) x̂0 + sqrt(1-ᾱ_i) ε
        (diffusers' ``DDIMInverseScheduler``)."""
        a_prev = float(self.abar_prev[i - 1])
        x0_pred = (x_prev - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        return self.add_noise(x0_pred, eps, i)

    def _affine(self, i: int) -> tuple[float, float, float]:
        """(q = sqrt(ᾱ_i/ᾱ_prev), sqrt(1-ᾱ_i), sqrt(1-ᾱ_prev)) of step i."""
        a, a_prev = float(self.abar[i - 1]), float(self.abar_prev[i - 1])
        return (a / a_prev) ** 0.5, (1 - a) ** 0.5, (1 - a_prev) ** 0.5

    def deterministic_step(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x_{i-1} = x_i/q − sqrt(1-ᾱ_i) ε/q + sqrt(1-ᾱ_prev) ε (DDIM, σ = 0)."""
        q, b, b_prev = self._affine(i)
        return x_t / q - b * eps / q + b_prev * eps

    def deterministic_inverse(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """x_i = q x_{i-1} + sqrt(1-ᾱ_i) ε − q sqrt(1-ᾱ_prev) ε."""
        q, b, b_prev = self._affine(i)
        return q * x_prev + b * eps - q * b_prev * eps


#: the DDPM family's discretisation under its descriptive name
DDPMSchedule = Schedule


class DDPMProcess(NoiseProcess):
    """The DDPM/DDIM family: ᾱ per training timestep (float32, (T,)), the ᾱ before the first
    step (``final_alpha_cumprod``), and the network's prediction type (``epsilon``,
    ``v_prediction`` or ``sample``)."""

    def __init__(self, alphas_cumprod: Tensor, final_alpha_cumprod: float, prediction_type: str = "epsilon") -> None:
        self.alphas_cumprod = alphas_cumprod
        self.final_alpha_cumprod = float(final_alpha_cumprod)
        self.prediction_type = prediction_type

    def discretize(self, timesteps_desc: Tensor, eta: float) -> Schedule:
        return make_schedule(self.alphas_cumprod, timesteps_desc, self.final_alpha_cumprod, eta)

    def abar_at(self, t: int | Tensor, like: Tensor) -> Tensor:
        """ᾱ_t as float32 on ``like``'s device: 0-d for an int t, (B, 1, ..., 1) for (B,) rows."""
        if isinstance(t, Tensor) and t.dim() > 0:
            a = self.alphas_cumprod[t.to("cpu", torch.int64)]
            return a.to(like.device, torch.float32).reshape(-1, *([1] * (like.dim() - 1)))
        return self.alphas_cumprod[int(t)].to(like.device, torch.float32)

    def to_epsilon(self, out: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """ε from the network output: as it is, from v (sqrt(ᾱ) v + sqrt(1-ᾱ) x_t) or from x0."""
        out = out.float()
        if self.prediction_type == "epsilon":
            return out
        a = self.abar_at(t, out)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x_t
        if self.prediction_type == "sample":
            return (x_t - a.sqrt() * out) / (1 - a).sqrt()
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def x0_from_epsilon(self, x_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """(x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)."""
        a = self.abar_at(t, eps)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def epsilon_from_x0(self, x_t: Tensor, x0: Tensor, t: int | Tensor) -> Tensor:
        """(x_t - sqrt(ᾱ_t) x0) / sqrt(1-ᾱ_t)."""
        a = self.abar_at(t, x0)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def make_schedule(
    alphas_cumprod: Tensor,
    timesteps_desc: Tensor,
    final_alpha_cumprod: float,
    eta: float,
) -> Schedule:
    """Build a :class:`Schedule` from a scheduler's ᾱ table and its (descending) timesteps."""
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must be in [0, 1], got {eta}")
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    ts = timesteps_desc.detach().to("cpu", torch.int64).flip(0)
    abar = ac[ts]
    abar_prev = torch.cat([torch.tensor([float(final_alpha_cumprod)], dtype=torch.float64), abar[:-1]])
    return Schedule(
        timesteps=ts,
        abar=abar.to(torch.float32),
        abar_prev=abar_prev.to(torch.float32),
        eta=float(eta),
    )



# ----------------------------------------------------------------------------- flow matching
@dataclass(frozen=True)
class FlowSchedule(ProcessSchedule):
    """The flow-matching process at ``num_steps`` inference steps (index i-1 is step i).

    Its methods take the velocity v̂ where the interface says ``eps`` (see the module
    docstring); ``t[i-1]`` is t_i and ``t_prev[i-1]`` is s = t_{i-1} (0 for step 1)."""

    timesteps: Tensor  # (N,) float32, ascending: 1000·t_i, the model's timestep input at step i
    t: Tensor  # (N,) float32, t_i in (0, 1]
    t_prev: Tensor  # (N,) float32, t_{i-1} (0 for i = 1)
    eta: float

    @cached_property
    def sigma(self) -> Tensor:
        """(N,) σ_i = η·s·sqrt(1 − ((1−t)·s/((1−s)·t))²), computed once (in float64)."""
        t, s = self.t.double(), self.t_prev.double()
        ratio = torch.where(s > 0, (1 - t) * s / ((1 - s) * t), torch.zeros_like(s))
        return (self.eta * s * (1 - ratio**2).clamp(min=0).sqrt()).to(torch.float32)

    def map_scale(self, i: int) -> float:
        """σ_i; at the step to t = 0 (σ = 0: x_0's posterior given x0 is a point) with η > 0,
        t_i instead: that step's map is its residual x_0 − μ̂_1 in units of its noise level, so a
        reverse pass given the maps reproduces x_0 too (sampling without maps adds nothing there)."""
        sigma = self.sigma_at(i)
        if sigma == 0 and self.eta > 0 and float(self.t_prev[i - 1]) == 0:
            return float(self.t[i - 1])
        return sigma

    def times(self, i: int) -> tuple[float, float]:
        """(t_i, t_{i-1}) of step ``i`` (1-based) as Python floats."""
        return float(self.t[i - 1]), float(self.t_prev[i - 1])

    def noise_level(self, i: int) -> tuple[float, float]:
        """(1 − t_i, t_i): x_i = (1−t_i)·x0 + t_i·ε."""
        t = float(self.t[i - 1])
        return 1 - t, t

    def predict_x0(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x̂0 = x_i − t_i·v̂ (``eps`` is the velocity v̂)."""
        return x_t - float(self.t[i - 1]) * eps

    def epsilon(self, x_t: Tensor, v: Tensor, i: int) -> Tensor:
        """ε̂ = x_i + (1 − t_i)·v̂: the noise that x_i holds for the velocity v̂."""
        return x_t + (1 - float(self.t[i - 1])) * v

    def _direction(self, i: int) -> float:
        """sqrt(s² − σ_i²), the coefficient of ε̂ in μ̂_i."""
        s, sigma = float(self.t_prev[i - 1]), self.sigma_at(i)
        return max(s * s - sigma * sigma, 0.0) ** 0.5

    def mu(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """μ̂_i = (1−s)·x̂0 + sqrt(s² − σ_i²)·ε̂, computed as the Euler step x_i + (s − t)·v̂ plus
        (sqrt(s² − σ_i²) − s)·ε̂ (the second term only where σ_i > 0)."""
        t, s = self.times(i)
        out = x_t + (s - t) * eps
        if self.sigma_at(i) == 0:
            return out
        return out + (self._direction(i) - s) * self.epsilon(x_t, eps, i)

    def posterior_sample(self, x_t: Tensor, x0: Tensor, i: int, noise: Tensor) -> Tensor:
        """q(x_{i-1} | x_i, x0) of the η family: (1−s)·x0 + sqrt(s² − σ_i²)·ε_i + σ_i·noise with
        ε_i = (x_i − (1−t)·x0)/t (at η = 1 the forward chain's posterior)."""
        t, s = self.times(i)
        eps = (x_t - (1 - t) * x0) / t
        return (1 - s) * x0 + self._direction(i) * eps + self.sigma_at(i) * noise

    def inverse_step(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """The Euler step backwards: x_i = x_{i-1} + (t − s)·v̂, v̂ evaluated at x_{i-1}."""
        t, s = self.times(i)
        return x_prev + (t - s) * eps

    def deterministic_step(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x_{i-1} = x_i + (s − t)·v̂ (Euler, σ = 0)."""
        t, s = self.times(i)
        return x_t + (s - t) * eps

    def deterministic_inverse(self, x_prev: Tensor, eps: Tensor, i: int) -> Tensor:
        """x_i = x_{i-1} − (s − t)·v̂."""
        t, s = self.times(i)
        return x_prev - (s - t) * eps


class FlowMatchProcess(NoiseProcess):
    """Rectified flow: x_t = (1−t)·x0 + t·ε, t in [0, 1], a network predicting v = ε − x0 at the
    timestep input ``num_train_timesteps``·t (diffusers' ``FlowMatchEulerDiscreteScheduler``;
    1000 for SD3). Its schedules take the velocity in ε's place (:meth:`to_prediction`)."""

    prediction_type = "velocity"
    float_timesteps = True

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        self.num_train_timesteps = int(num_train_timesteps)

    # -- time
    def time_at(self, t: int | float | Tensor, like: Tensor) -> Tensor:
        """t = timestep / num_train_timesteps as float32 on ``like``'s device: 0-d for one
        timestep, (B, 1, ..., 1) for (B,) rows."""
        if isinstance(t, Tensor):
            tt = t.to(like.device, torch.float32) / self.num_train_timesteps
            return tt.reshape(-1, *([1] * (like.dim() - 1))) if tt.dim() > 0 else tt
        return torch.tensor(float(t) / self.num_train_timesteps, dtype=torch.float32, device=like.device)

    # -- the network's output
    def to_prediction(self, out: Tensor, x_t: Tensor, t: int | float | Tensor) -> Tensor:
        """The velocity, as the network gives it (float32)."""
        return out.float()

    def to_epsilon(self, out: Tensor, x_t: Tensor, t: int | float | Tensor) -> Tensor:
        """ε = x_t + (1 − t)·v from the velocity output."""
        return x_t.float() + (1 - self.time_at(t, x_t)) * out.float()

    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t: int | float | Tensor) -> Tensor:
        """x0 = x_t − t·v."""
        return x_t - self.time_at(t, x_t) * v

    def x0_from_epsilon(self, x_t: Tensor, eps: Tensor, t: int | float | Tensor) -> Tensor:
        """(x_t − t·ε)/(1 − t) (undefined at t = 1)."""
        tt = self.time_at(t, eps)
        return (x_t - tt * eps) / (1 - tt)

    def epsilon_from_x0(self, x_t: Tensor, x0: Tensor, t: int | float | Tensor) -> Tensor:
        """(x_t − (1−t)·x0)/t."""
        tt = self.time_at(t, x0)
        return (x_t - (1 - tt) * x0) / tt

    # -- training
    @staticmethod
    def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1−t)·x0 + t·noise for t in [0, 1] (a number, or (B,) one per row)."""
        if isinstance(t, Tensor) and t.dim() > 0:
            t = t.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
        """The regression target of the network: v = noise − x0."""
        return noise - x0

    # -- discretisation
    def discretize(self, timesteps_desc: Tensor, eta: float) -> FlowSchedule:
        """The process at the given model timesteps (descending, 1000·t), ending at t = 0."""
        ts = timesteps_desc.detach().to("cpu", torch.float32)
        return self.discretize_times(ts / self.num_train_timesteps, eta, timesteps_desc=ts)

    def discretize_times(self, times_desc: Tensor, eta: float, timesteps_desc: Tensor | None = None) -> FlowSchedule:
        """The process at the times t (descending, diffusers' ``sigmas``; N values, or N + 1
        with the final 0), with the model timesteps ``timesteps_desc`` (default 1000·t)."""
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"eta must be in [0, 1], got {eta}")
        times = times_desc.detach().to("cpu", torch.float32)
        if timesteps_desc is None:
            n = times.shape[0] - 1 if times.shape[0] > 1 and float(times[-1]) == 0 else times.shape[0]
            timesteps_desc = times[:n] * self.num_train_timesteps
        ts = timesteps_desc.detach().to("cpu", torch.float32)
        n = ts.shape[0]
        if times.shape[0] == n:
            times = torch.cat([times, times.new_zeros(1)])
        if times.shape[0] != n + 1 or not bool((times[:-1] > 0).all() and (times <= 1).all()):
            raise InputError(f"flow times must be {n} or {n + 1} values in (0, 1] (then 0), got {times.tolist()}")
        asc = times.flip(0)  # t_0 = 0, t_1, ..., t_N
        return FlowSchedule(timesteps=ts.flip(0).clone(), t=asc[1:].clone(), t_prev=asc[:-1].clone(), eta=float(eta))


def check_steps(num_steps: int, skip: int) -> None:
    """Reject step counts that cannot run: ``num_steps >= 1`` and ``0 <= skip < num_steps``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"num_steps (--steps) must be an integer >= 1, got {num_steps!r}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InputError(f"skip (--skip) must be an integer >= 0, got {skip!r}")
    if skip >= num_steps:
        raise InputError(
            f"skip (--skip) must be smaller than the number of steps: got skip={skip} with "
            f"num_steps={num_steps}; accepted: 0 <= skip <= {num_steps - 1}"
        )
