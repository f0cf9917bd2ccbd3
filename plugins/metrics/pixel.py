"""``psnr``, ``ssim``, ``mse``: pixel fidelity of each edit to the input (torchmetrics).

All three work on [0, 1] images (``data_range = 1``). With a mask (1 = edited region) the
``*_bg`` columns give PIE-Bench's background preservation, computed as PIE-Bench does:

- ``psnr_bg``, ``ssim_bg``: PSNR / SSIM of the two images after multiplying both by the
  background mask (the edited region is black in both). PSNR is then over all pixels, so
  psnr_bg = 10·log10(1 / (f_bg · mse_bg)) with f_bg the background fraction.
- ``mse_bg``: by default PIE-Bench's too: the mean squared error of the two masked images over
  all pixels (torchmetrics ``MeanSquaredError`` on ``img * (1 - mask)``), so mse_bg = f_bg · (mean
  over the background) and psnr_bg = 10·log10(1 / mse_bg), consistent with ``psnr_bg``. Option
  ``bg_mean: background`` divides by the number of background values instead (the mean error of
  a background pixel, independent of how large the background is).

PIE-Bench's tables print MSE ×10⁴ and SSIM ×10²; the columns here are unscaled. Identical images
have infinite PSNR; values are capped at ``max_db`` (default 100 dB) so that means stay finite.
These three files share one module because they share their masking and validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framework.errors import ConfigError
from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from plugins.metrics.common import background_mask, check_input, to_unit


def psnr(a: Tensor, b: Tensor, max_db: float | None = 100.0) -> Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [0, 1] (broadcast on B) -> (B,), capped."""
    a, b = torch.broadcast_tensors(a.float(), b.float())
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow import: lazily

    out = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return out.clamp(max=max_db) if max_db is not None else out


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, σ 1.5) of (B, C, H, W) images in [0, 1] -> (B,)."""
    a, b = torch.broadcast_tensors(a.float(), b.float())
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def mse(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-image mean squared error -> (B,); with ``weight`` (1, 1, H, W) the mean over weight = 1."""
    a, b = torch.broadcast_tensors(a.float(), b.float())
    sq = (a - b) ** 2
    if weight is None:
        return sq.mean(dim=(1, 2, 3))
    w = weight.float().expand_as(sq)
    return (sq * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


@dataclass
class PixelOptions:
    """Options of ``ssim`` and ``mse``."""

    background: bool = True  # also fill the *_bg column (needs a mask; None without one)


@dataclass
class MSEOptions(PixelOptions):
    """Options of ``mse``."""

    bg_mean: str = "image"  # image: PIE-Bench (masked images, mean over all pixels) | background


#: accepted values of MSEOptions.bg_mean
BG_MEANS = ("image", "background")


@dataclass
class PSNROptions(PixelOptions):
    """Options of ``psnr``."""

    max_db: float = 100.0  # cap for identical images (infinite PSNR)


class _PixelMetric(Metric):
    """Shared body: whole-image score and PIE-Bench's background score."""

    Options = PixelOptions
    name = ""

    def __init__(self, options: PixelOptions | None = None) -> None:
        super().__init__(options)
        self.columns = (self.name, f"{self.name}_bg") if self.options.background else (self.name,)

    def measure(self, a: Tensor, b: Tensor, bg: Tensor | None) -> Tensor:
        """(1, 3, H, W) vs (K, 3, H, W) in [0, 1]; ``bg`` the background mask or None -> (K,)."""
        raise NotImplementedError

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        check_input(batch, self.registered_name)
        src = to_unit(batch.source_image.detach().cpu())
        edits = to_unit(batch.edited_images.detach().cpu())
        rows: list[dict[str, float | None]] = [{self.name: float(v)} for v in self.measure(src, edits, None)]
        if self.options.background:
            bg = background_mask(batch.mask, tuple(src.shape[-2:]))
            if bg is None or bg.sum() == 0:
                vals: list[float | None] = [None] * len(rows)
            else:
                bg = bg.cpu()
                vals = [float(v) for v in self.measure(src, edits, bg)]
            for r, v in zip(rows, vals):
                r[f"{self.name}_bg"] = v
        return rows


@METRICS.register("psnr")
class PSNRMetric(_PixelMetric):
    """PSNR (dB) of each edit against the input; psnr_bg on the background (PIE-Bench)."""

    Options = PSNROptions
    name = "psnr"
    ranges = {"psnr": (0.0, None), "psnr_bg": (0.0, None)}

    def measure(self, a: Tensor, b: Tensor, bg: Tensor | None) -> Tensor:
        if bg is not None:
            a, b = a * bg, b * bg
        return psnr(a, b, self.options.max_db)


@METRICS.register("ssim")
class SSIMMetric(_PixelMetric):
    """SSIM of each edit against the input; ssim_bg on the background (PIE-Bench)."""

    name = "ssim"
    ranges = {"ssim": (-1.0, 1.0), "ssim_bg": (-1.0, 1.0)}

    def measure(self, a: Tensor, b: Tensor, bg: Tensor | None) -> Tensor:
        if bg is not None:
            a, b = a * bg, b * bg
        return ssim(a, b)


@METRICS.register("mse")
class MSEMetric(_PixelMetric):
    """Mean squared error ([0, 1] pixels) of each edit against the input; mse_bg on the background."""

    Options = MSEOptions
    name = "mse"
    ranges = {"mse": (0.0, 1.0), "mse_bg": (0.0, 1.0)}

    def __init__(self, options: MSEOptions | None = None) -> None:
        super().__init__(options)
        if self.options.bg_mean not in BG_MEANS:
            raise ConfigError(
                f"option bg_mean of metric 'mse' must be one of {', '.join(BG_MEANS)}, got {self.options.bg_mean!r}"
            )

    def measure(self, a: Tensor, b: Tensor, bg: Tensor | None) -> Tensor:
        if bg is None:
            return mse(a, b)
        if self.options.bg_mean == "background":
            return mse(a, b, bg)
        return mse(a * bg, b * bg)  # PIE-Bench: both images masked, mean over every value
