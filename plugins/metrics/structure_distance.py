"""``structure_distance``: DINO ViT self-similarity distance (Tumanyan et al. 2022), as in PIE-Bench.

For an image, take the keys of the last transformer layer of a DINO ViT (all tokens, CLS
included, heads concatenated: (T, heads·d)) and form their self-similarity matrix
S[i, j] = cos(k_i, k_j) ((T, T)). The distance between input and edit is the mean squared
difference of their two matrices, ``mean((S_src - S_edit)²)``; lower = structure preserved.
PIE-Bench uses ``dino_vitb8`` (here ``facebook/dino-vitb8`` through transformers' ``ViTModel``),
images resized to 224 and normalised with ImageNet statistics, and prints the value ×10³.

Input range (option ``convention``): ImageNet normalisation expects pixels in [0, 1], and that is
what ``standard`` (the default) feeds. PIE-Bench's evaluation code feeds the 8-bit pixel values
(0–255, never divided by 255) through the same normalisation, so its inputs are about 255/0.23
≈ 1100 instead of about ±2. Its published structure distances are on that scale of input; to
compare with them use ``convention: pie_bench`` (0–255 inputs, the image quantised to 8 bits as
it is when read back from a PNG). The two conventions give different numbers for the same pair.

``model`` takes a hub id or a local folder with a ``ViTModel`` saved by ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from framework.errors import ConfigError
from framework.metrics import MetricInput
from framework.registry import METRICS
from plugins.metrics.common import NetworkMetric, chunks, load_hf, to_unit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def last_key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key projection (Linear) of the last layer of a transformers ViTModel (v4 or v5 layout)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = model.encoder.layer
    attention = layers[-1].attention
    for path in (("k_proj",), ("attention", "key"), ("key",)):
        module = attention
        try:
            for part in path:
                module = getattr(module, part)
        except AttributeError:
            continue
        return module
    raise TypeError(f"cannot find the key projection in {type(attention).__name__}")


def self_similarity(keys: Tensor) -> Tensor:
    """(B, T, D) keys -> (B, T, T) cosine self-similarity."""
    k = F.normalize(keys.float(), dim=-1)
    return k @ k.transpose(-1, -2)


@dataclass
class StructureOptions:
    """Options of the ``structure_distance`` metric."""

    model: str = "facebook/dino-vitb8"  # hub id or local ViTModel folder
    resolution: int | None = 224  # input side for the ViT (None: the model's image_size)
    batch_size: int = 8
    local_files_only: bool = False
    on_missing: str = "error"  # error | skip
    convention: str = "standard"  # standard: [0, 1] pixels | pie_bench: 0-255 pixels (PIE-Bench's code)


#: accepted values of StructureOptions.convention
CONVENTIONS = ("standard", "pie_bench")


@METRICS.register("structure_distance")
class StructureDistanceMetric(NetworkMetric):
    """DINO-ViT key self-similarity distance between input and edit (lower = structure preserved)."""

    Options = StructureOptions
    ranges = {"structure_distance": (0.0, None)}

    def __init__(self, options: StructureOptions | None = None) -> None:
        super().__init__(options)
        if self.options.convention not in CONVENTIONS:
            raise ConfigError(
                f"option convention of metric {self.registered_name!r} must be one of "
                f"{', '.join(CONVENTIONS)}, got {self.options.convention!r}"
            )
        self.columns = ("structure_distance",)
        self.model = None

    def load(self, device: torch.device) -> None:
        from transformers import ViTModel

        o = self.options
        model = load_hf(
            ViTModel.from_pretrained,
            o.model,
            metric=self.registered_name,
            option="model",
            what="a DINO ViT",
            local_files_only=o.local_files_only,
            add_pooling_layer=False,
        )
        self.model = model.to(device).eval().requires_grad_(False)

    def keys(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, T, D) last-layer keys (T = 1 + patches)."""
        side = self.options.resolution or int(self.model.config.image_size)
        x = to_unit(images).to(self.device)
        if self.options.convention == "pie_bench":
            x = torch.round(x * 255.0)  # 8-bit pixel values, not divided by 255 (PIE-Bench)
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.model.dtype)
        captured: list[Tensor] = []
        handle = last_key_projection(self.model).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self.model(pixel_values=x, interpolate_pos_encoding=side != int(self.model.config.image_size))
        finally:
            handle.remove()
        return captured[-1].float()

    def distances(self, a: Tensor, b: Tensor) -> Tensor:
        """Structure distance of (1 or B, 3, H, W) vs (B, 3, H, W) in [-1, 1] -> (B,)."""
        n = max(a.shape[0], b.shape[0])
        shared = self_similarity(self.keys(a)) if a.shape[0] == 1 else None  # the source, once
        a = a.expand(n, *a.shape[1:])
        b = b.expand(n, *b.shape[1:])
        out = []
        for s in chunks(n, self.options.batch_size):
            sa = shared if shared is not None else self_similarity(self.keys(a[s]))
            sb = self_similarity(self.keys(b[s]))
            out.append(((sa - sb) ** 2).mean(dim=(1, 2)).cpu())
        return torch.cat(out)

    def score(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """(1, 3, H, W) source vs (K, 3, H, W) edits -> K rows."""
        vals = self.distances(batch.source_image.detach().float(), batch.edited_images.detach().float())
        return [{"structure_distance": float(v)} for v in vals]
