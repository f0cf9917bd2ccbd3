"""Helpers shared by the Plug-and-Play and Zero-Shot tests: a hand-built deterministic (DDIM)
inversion and a backbone proxy that fails on a chosen network call."""

from __future__ import annotations

from typing import Any

import torch

from framework.inversion import Inversion


def ddim_inversion(backbone: Any, x0: torch.Tensor, prompt: str, num_steps: int, guidance: float) -> Inversion:
    """Plain DDIM inversion (η = 0, no noise maps): x_i from x_{i-1} with ε̂(x_{i-1}, t_i)."""
    schedule = backbone.schedule(num_steps, 0.0)
    cond = backbone.encode_prompt([prompt])
    uncond = backbone.null_condition()
    xs = [x0.float()]
    x = x0.float()
    with torch.no_grad():
        for i in range(1, num_steps + 1):
            t = int(schedule.timesteps[i - 1])
            eps = backbone.predict_noise(x, t, cond, uncond, guidance)
            a, a_prev = float(schedule.abar[i - 1]), float(schedule.abar_prev[i - 1])
            x0_pred = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
            x = a**0.5 * x0_pred + (1 - a) ** 0.5 * eps
            xs.append(x)
    return Inversion(
        xts=torch.stack(xs),
        zs=None,
        timesteps=schedule.timesteps,
        num_steps=num_steps,
        skip=0,
        eta=0.0,
        method="ddim_test",
        source_prompt=[prompt],
        guidance_scale=guidance,
    )


class FailingBackbone:
    """Delegates to a real backbone; ``predict_noise`` raises on call number ``fail_at``
    (optionally only when gradients are enabled)."""

    def __init__(self, backbone: Any, fail_at: int, only_with_grad: bool = False) -> None:
        self._backbone = backbone
        self._fail_at = fail_at
        self._only_with_grad = only_with_grad
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backbone, name)

    def predict_noise(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self._only_with_grad or torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self._fail_at:
                raise RuntimeError("injected failure")
        return self._backbone.predict_noise(*args, **kwargs)
