"""``reconstruction``: PSNR of the source-prompt reconstruction against the input.

The runner, seeing ``needs_reconstruction``, also regenerates each item with its *source* prompt
from the same inversion and fills ``MetricInput.reconstruction`` ((1, 3, H, W) in [-1, 1]). For
the edit-friendly inversion this is exact up to the VAE round trip. The value is per item and is
repeated on each of its K rows. PSNR on [0, 1] images, capped at ``max_db`` (identical images
have infinite PSNR).
"""

from __future__ import annotations

from dataclasses import dataclass

from framework.errors import InputError
from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from plugins.metrics.common import check_input, to_unit
from plugins.metrics.pixel import psnr


@dataclass
class ReconstructionOptions:
    """Options of the ``reconstruction`` metric."""

    max_db: float = 100.0  # cap for a perfect reconstruction


@METRICS.register("reconstruction")
class ReconstructionMetric(Metric):
    """PSNR (dB) of the source-prompt reconstruction against the input (higher = more faithful)."""

    Options = ReconstructionOptions
    needs_reconstruction = True
    columns = ("reconstruction_psnr",)
    ranges = {"reconstruction_psnr": (0.0, None)}

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """One value per item, repeated on each of the K rows."""
        check_input(batch, self.registered_name)
        rec = batch.reconstruction
        if rec is None:
            raise InputError("metric 'reconstruction' needs MetricInput.reconstruction (1, 3, H, W)")
        src = batch.source_image
        if rec.ndim == 3:
            rec = rec.unsqueeze(0)
        if rec.shape != src.shape:
            raise InputError(
                f"metric 'reconstruction': reconstruction {tuple(rec.shape)} must match the input {tuple(src.shape)}"
            )
        value = float(psnr(to_unit(src.detach().cpu()), to_unit(rec.detach().cpu()), self.options.max_db)[0])
        return [{"reconstruction_psnr": value} for _ in range(batch.edited_images.shape[0])]
