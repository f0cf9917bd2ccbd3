"""``pie_bench``: PIE-Bench's evaluation (Ju et al. 2024, ``evaluation/evaluate.py`` of
cure-lab/PnPInversion), one column per number of its tables, at its tables' scales.

PIE-Bench reads the saved 8-bit PNGs back, so every image is quantised to 8 bits first. Then,
with the benchmark's edit mask (1 = edited region; the dataset plugin ``pie_bench`` decodes it
with the benchmark's one-pixel border rule):

============================================== ======================================== =======
column                                         what PIE-Bench computes                  scale
============================================== ======================================== =======
structure_distance_x1e3                        DINO ViT-B/8 key self-similarity          ×10³
                                               distance, whole image, 0–255 input
                                               (``structure_distance``, convention
                                               ``pie_bench``)
psnr_unedit_part                               PSNR of both images × (1 − mask)          ×1
lpips_unedit_part_x1e3                         LPIPS, SqueezeNet trunk, of the masked    ×10³
                                               images
mse_unedit_part_x1e4                           MSE of the masked images, mean over       ×10⁴
                                               every value
ssim_unedit_part_x1e2                          SSIM of the masked images                 ×10²
clip_similarity_target_image                   CLIP ViT-L/14 score, edit vs target       ×1
                                               prompt (100·max(cos, 0))
clip_similarity_target_image_edit_part         the same on edit × mask                   ×1
============================================== ======================================== =======

The column names are PIE-Bench's metric names with the table's scale as a suffix, so that they
never mix with this project's unscaled columns (``structure_distance``, ``mse_bg``, …). Each
value is one of this project's metrics (``structure_distance``, ``psnr``, ``lpips``, ``mse``,
``ssim``, ``clip_score``), built with PIE-Bench's options; columns that need a mask are empty
without one. Weights: ``dino_model``, ``clip_model``, ``lpips_weights`` as for those metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from plugins.metrics import clip_score, lpips_distance, pixel, structure_distance  # noqa: F401 (registers the parts)
from plugins.metrics.common import check_input, check_on_missing, to_unit

#: column -> (metric, that metric's column, scale)
COLUMNS: dict[str, tuple[str, str, float]] = {
    "structure_distance_x1e3": ("structure_distance", "structure_distance", 1e3),
    "psnr_unedit_part": ("psnr", "psnr_bg", 1.0),
    "lpips_unedit_part_x1e3": ("lpips", "lpips_bg", 1e3),
    "mse_unedit_part_x1e4": ("mse", "mse_bg", 1e4),
    "ssim_unedit_part_x1e2": ("ssim", "ssim_bg", 1e2),
    "clip_similarity_target_image": ("clip_score", "clip_score", 1.0),
    "clip_similarity_target_image_edit_part": ("clip_score", "clip_score_edited", 1.0),
}


@dataclass
class PieBenchOptions:
    """Options of the ``pie_bench`` metric set."""

    dino_model: str = "facebook/dino-vitb8"  # hub id or local ViTModel folder
    dino_resolution: int | None = 224
    clip_model: str = "openai/clip-vit-large-patch14"  # hub id or local CLIP folder
    lpips_weights: str | None = None  # SqueezeNet trunk checkpoint or full LPIPS state_dict
    local_files_only: bool = False
    on_missing: str = "error"  # error | skip (for the network metrics)


def quantise(images: Tensor) -> Tensor:
    """[-1, 1] images -> the same images after an 8-bit PNG round trip, in [-1, 1]."""
    return torch.round(to_unit(images) * 255.0) / 255.0 * 2.0 - 1.0


@METRICS.register("pie_bench")
class PieBenchMetric(Metric):
    """PIE-Bench's table: structure, background PSNR/LPIPS/MSE/SSIM, CLIP whole and edited."""

    Options = PieBenchOptions
    columns = tuple(COLUMNS)

    def __init__(self, options: PieBenchOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        check_on_missing(o.on_missing, "pie_bench")
        net = {"local_files_only": o.local_files_only, "on_missing": o.on_missing}
        self.parts: dict[str, Metric] = {
            "structure_distance": METRICS.build(
                {"name": "structure_distance", "model": o.dino_model, "resolution": o.dino_resolution,
                 "convention": "pie_bench", **net}
            ),
            "psnr": METRICS.build("psnr"),
            "lpips": METRICS.build({"name": "lpips", "net": "squeeze", "weights": o.lpips_weights, **net}),
            "mse": METRICS.build({"name": "mse", "bg_mean": "image"}),
            "ssim": METRICS.build("ssim"),
            "clip_score": METRICS.build({"name": "clip_score", "model": o.clip_model, **net}),
        }

    def setup(self, device: torch.device | str) -> None:
        super().setup(device)
        for part in self.parts.values():
            part.setup(device)

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        check_input(batch, self.registered_name)
        q = replace(batch, source_image=quantise(batch.source_image), edited_images=quantise(batch.edited_images))
        results = {name: part.compute(q) for name, part in self.parts.items()}
        rows: list[dict[str, float | None]] = []
        for k in range(batch.edited_images.shape[0]):
            row: dict[str, float | None] = {}
            for column, (metric, source, scale) in COLUMNS.items():
                value = results[metric][k].get(source)
                row[column] = None if value is None else float(value) * scale
            rows.append(row)
        return rows
