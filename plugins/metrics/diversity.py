"""``diversity``: mean pairwise LPIPS between edits of one item and target made with different seeds.

The paper's diversity measure (Section 5: edit-friendly noise maps are sampled anew per seed in
the skipped steps and give varied edits): for each target prompt, the S edits in
``MetricInput.samples`` ((K, S, 3, H, W), one per seed; the runner fills it for methods with
``seeds: S``) are compared pairwise with LPIPS and the S·(S-1)/2 distances averaged. Higher =
more diverse. Fewer than two samples give ``None`` (diversity is undefined).

Same LPIPS network and weight options as the ``lpips`` metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations

import torch

from framework.errors import InputError
from framework.metrics import MetricInput
from framework.registry import METRICS
from plugins.metrics.common import NetworkMetric
from plugins.metrics.lpips_distance import load_lpips, lpips_distance

log = logging.getLogger(__name__)


@dataclass
class DiversityOptions:
    """Options of the ``diversity`` metric."""

    net: str = "alex"  # alex | vgg | squeeze
    weights: str | None = None  # local trunk checkpoint or full LPIPS state_dict
    batch_size: int = 16
    local_files_only: bool = False
    on_missing: str = "error"  # error | skip


@METRICS.register("diversity")
class DiversityMetric(NetworkMetric):
    """Mean pairwise LPIPS between the S seeds' edits of each target (higher = more diverse)."""

    Options = DiversityOptions
    needs_samples = True
    ranges = {"diversity": (0.0, None)}

    def __init__(self, options: DiversityOptions | None = None) -> None:
        super().__init__(options)
        self.columns = ("diversity",)
        self.model: torch.nn.Module | None = None

    def load(self, device: torch.device) -> None:
        o = self.options
        self.model = load_lpips(o.net, o.weights, self.registered_name, o.local_files_only).to(device)

    def score(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """samples (K, S, 3, H, W) -> K rows of mean pairwise LPIPS."""
        k = batch.edited_images.shape[0]
        samples = batch.samples
        if samples is None:
            raise InputError(
                "metric 'diversity' needs MetricInput.samples (K, S, 3, H, W): give the method seeds: S >= 2"
            )
        if samples.ndim != 5 or samples.shape[0] != k or samples.shape[2] != 3:
            raise InputError(
                f"metric 'diversity': samples must be (K={k}, S, 3, H, W), got {tuple(samples.shape)}"
            )
        s = samples.shape[1]
        if s < 2:
            log.warning("metric 'diversity' needs at least 2 seeds per target, got %d: left empty", s)
            return [{"diversity": None} for _ in range(k)]
        pairs = list(combinations(range(s), 2))
        i = torch.tensor([p[0] for p in pairs])
        j = torch.tensor([p[1] for p in pairs])
        a = samples[:, i].reshape(-1, *samples.shape[2:])  # (K·P, 3, H, W)
        b = samples[:, j].reshape(-1, *samples.shape[2:])
        d = lpips_distance(self.model, a.float(), b.float(), self.options.batch_size).view(k, len(pairs))
        return [{"diversity": float(v)} for v in d.mean(dim=1)]
