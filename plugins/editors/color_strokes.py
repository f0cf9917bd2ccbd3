"""Color manipulation in the edit-friendly noise space (section 3.2, Figure 8 of the paper).

Given a binary mask B and a color image M, the noise maps of the steps i in
[start_step, end_step] (the paper's [T1, T2]; steps are 1-based, step N the noisiest) are
replaced during regeneration by

    z_i ← z_i + s · B ⊙ (M − P(f_i(x_i)))

where P(f_i(x_i)) is the clean image predicted at step i (eq. 4, ``ProcessSchedule.predict_x0``) and
s the strength. The difference between the wanted colors and the current prediction is pushed
into the noise of that step, so the region drifts toward M while the texture the noise maps
imprint is kept. Outside [start_step, end_step] and outside the mask the maps are unchanged, so
strength 0 reproduces the input exactly.

Inputs: a mask file and a colors file, or one strokes image whose non-transparent pixels give
both (alpha > 0 is the mask, their RGB the colors); or, from code, tensors passed to the
constructor. Files are fitted to the image like the input photo (cover and center-crop).
Pixel-space models use B and M directly; for latent models the mask is resized to the latent
grid and the colors are painted onto the decoded image and encoded by the VAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from framework.errors import InputError
from framework.inversion import Inversion
from framework.process import ProcessSchedule
from framework.registry import EDITORS
from framework.sampling import (
    Editor,
    NoiseFn,
    NoiseHook,
    check_single_image,
    denoise,
    inversion_guidance,
    prompt_free_conditioning,
)
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class ColorStrokesOptions:
    """Options of the ``color_strokes`` editor."""

    strength: float = 1.0  # s
    start_step: int = 5  # T1: the least noisy step modified (1-based; step N is the noisiest)
    end_step: int = 30  # T2: the noisiest step modified (clamped to the edit's first step)
    strokes: str | None = None  # an RGBA image: non-transparent pixels are the mask, their RGB the colors
    mask: str | None = None  # a mask image (white / nonzero = edit), with ``colors``
    colors: str | None = None  # a color image M, with ``mask``
    guidance_scale: float | None = None  # conditional backbones; None: the inversion's
    clip_prediction: bool = True  # pixel models: clamp P(f_i(x_i)) to the image range [-1, 1]


# ----------------------------------------------------------------------------- stroke inputs
def _read(path: str, what: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        with Image.open(p) as img:
            img.load()
            return ImageOps.exif_transpose(img) or img.copy()
    except Exception as exc:  # Pillow raises many types
        raise InputError(f"{what} file {path} is not an image Pillow can read: {exc}") from None


def load_stroke_files(
    size: tuple[int, int],
    strokes: str | None = None,
    mask: str | None = None,
    colors: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Read strokes (or mask + colors) fitted to ``size`` = (W, H).

    Returns the mask (1, 1, H, W) in {0, 1} and the colors (1, 3, H, W) in [-1, 1].
    """
    if strokes is not None and (mask is not None or colors is not None):
        raise InputError("give either strokes=FILE or mask=FILE with colors=FILE, not both")
    if strokes is not None:
        img = _read(strokes, "strokes")
        if "A" not in img.getbands() and "transparency" not in img.info:
            raise InputError(
                f"strokes image {strokes} has no transparency (mode {img.mode}); draw the strokes on a "
                "transparent RGBA PNG, or give mask=FILE and colors=FILE"
            )
        rgba = ImageOps.fit(img.convert("RGBA"), size, method=Image.Resampling.NEAREST)
        arr = np.asarray(rgba, dtype=np.float32)
        b = (arr[..., 3] > 0).astype(np.float32)
        m = arr[..., :3] / 127.5 - 1.0
    elif mask is not None and colors is not None:
        mimg = ImageOps.fit(_read(mask, "mask").convert("L"), size, method=Image.Resampling.NEAREST)
        b = (np.asarray(mimg, dtype=np.float32) > 127).astype(np.float32)
        cimg = ImageOps.fit(_read(colors, "colors").convert("RGB"), size, method=Image.Resampling.LANCZOS)
        m = np.asarray(cimg, dtype=np.float32) / 127.5 - 1.0
    else:
        raise InputError(
            "color strokes need strokes=FILE (an RGBA image) or both mask=FILE and colors=FILE "
            "(e.g. editor.strokes=strokes.png)"
        )
    if not b.any():
        raise InputError("the stroke mask is empty: no pixel is marked for editing")
    return torch.from_numpy(b)[None, None], torch.from_numpy(m).permute(2, 0, 1)[None].contiguous()


def check_stroke_tensors(mask: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """Validate in-memory strokes: mask (1|H,W …) -> (1, 1, H, W) binary, colors -> (1, 3, H, W)."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[None]
    if colors.dim() == 3:
        colors = colors[None]
    if mask.dim() != 4 or mask.shape[:2] != (1, 1):
        raise InputError(f"mask must have shape (H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
    if colors.dim() != 4 or colors.shape[:2] != (1, 3) or colors.shape[-2:] != mask.shape[-2:]:
        raise InputError(
            f"colors must have shape (1, 3, H, W) matching the mask's {tuple(mask.shape[-2:])}, "
            f"got {tuple(colors.shape)}"
        )
    return (mask > 0.5).float(), colors.float()


def is_pixel_space(backbone: Backbone) -> bool:
    """Whether the backbone's x0 is the image itself (``pixel_space`` attribute of pixel models)."""
    return bool(getattr(backbone, "pixel_space", False))


def image_size(backbone: Backbone, x0: Tensor) -> tuple[int, int]:
    """(W, H) of the image whose x0 (…, h, w) is given (latents are 1/vae_scale of it)."""
    f = int(getattr(backbone, "vae_scale", 1))
    return int(x0.shape[-1]) * f, int(x0.shape[-2]) * f


def to_model_space(backbone: Backbone, x0: Tensor, mask: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """Image-space strokes -> (B, M) on x0's grid, (1, 1, h, w) and (1, C, h, w), float32.

    Pixel models: as given (a 1-channel model takes the RGB mean). Latent models: the mask is
    area-resized to the latent grid and kept where at least half covered (any coverage if that
    leaves it empty); M is the VAE encoding of the decoded image with the strokes painted on.
    """
    device = x0.device
    mask = mask.to(device)
    colors = colors.to(device)
    h, w = x0.shape[-2:]
    if mask.shape[-2:] == (h, w) and is_pixel_space(backbone):
        m = colors.mean(1, keepdim=True) if x0.shape[1] == 1 else colors
        return mask, m
    image = backbone.decode(x0[:1]).to(device)
    if image.shape[-2:] != mask.shape[-2:]:
        raise InputError(
            f"the strokes are {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}"
        )
    painted = mask * colors + (1 - mask) * image
    m = backbone.encode_image(painted).float()
    area = F.interpolate(mask, size=(h, w), mode="area")
    small = (area >= 0.5).float()
    if not small.any():
        small = (area > 0).float()
    return small, m


# ----------------------------------------------------------------------------- the editors
class StrokesEditor(Editor):
    """An editor driven by color strokes: from files in its options, or tensors given here
    (``mask`` (1, 1, H, W) in {0, 1} and ``colors`` (1, 3, H, W) in [-1, 1], image space)."""

    needs_prompts = False

    def __init__(self, options: Any = None, mask: Tensor | None = None, colors: Tensor | None = None) -> None:
        super().__init__(options)
        if (mask is None) != (colors is None):
            raise InputError("give both mask and colors tensors, or neither")
        self.strokes = None if mask is None else check_stroke_tensors(mask, colors)  # type: ignore[arg-type]


@EDITORS.register("color_strokes")
class ColorStrokesEditor(StrokesEditor):
    """Recolor a masked region by adding s·B⊙(M − x̂0) to the noise maps of steps [T1, T2]."""

    Options = ColorStrokesOptions

    def image_strokes(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The strokes in image space: mask (1, 1, H, W), colors (1, 3, H, W) for (W, H) = size."""
        if self.strokes is not None:
            mask, colors = self.strokes
            if (mask.shape[-1], mask.shape[-2]) != size:
                raise InputError(
                    f"the stroke tensors are {mask.shape[-1]}x{mask.shape[-2]} but the image is "
                    f"{size[0]}x{size[1]}"
                )
            return mask, colors
        o = self.options
        return load_stroke_files(size, o.strokes, o.mask, o.colors)

    def steps_range(self, first_step: int) -> tuple[int, int]:
        """The modified steps (lo, hi), 1 <= lo <= hi <= first_step, from start_step/end_step."""
        o = self.options
        if o.start_step < 1 or o.end_step < o.start_step:
            raise InputError(
                f"color strokes need 1 <= start_step <= end_step, got start_step={o.start_step}, "
                f"end_step={o.end_step}"
            )
        if o.start_step > first_step:
            raise InputError(
                f"start_step={o.start_step} is above the edit's first step {first_step} "
                f"(num_steps - skip); accepted: 1..{first_step}"
            )
        return o.start_step, min(o.end_step, first_step)

    def noise_function(
        self, schedule: ProcessSchedule, mask: Tensor, colors: Tensor, lo: int, hi: int, clip: bool = False
    ) -> NoiseFn:
        """noise_fn(i, x_i, eps, z) -> z + s·B⊙(M − x̂0(x_i, eps)) for lo <= i <= hi, else z.

        ``clip`` clamps x̂0 to [-1, 1] (pixel models, whose x0 is the image).
        """
        s = float(self.options.strength)

        def noise_fn(i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
            if not lo <= i <= hi or s == 0:
                return z
            x0_pred = schedule.predict_x0(x, eps, i)
            if clip:
                x0_pred = x0_pred.clamp(-1, 1)
            return z + s * mask * (colors - x0_pred)

        return noise_fn

    @torch.no_grad()
    def edit(
        self,
        backbone: Backbone,
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = DEFAULT_SKIP,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(K, C, h, w) latents, K = one per target prompt (1 if none, unconditional)."""
        check_single_image(inversion)
        if inversion.zs is None:
            raise InputError(
                f"color strokes modify noise maps, but the {inversion.method} inversion has none; "
                "use a DDPM inverter (ddpm_edit_friendly, cycle_diffusion)"
            )
        start = inversion.check_skip(skip)
        lo, hi = self.steps_range(start)
        schedule = inversion.schedule(backbone)
        g = inversion.guidance_scale if self.options.guidance_scale is None else self.options.guidance_scale
        k, cond, _ = prompt_free_conditioning(backbone, target_prompts, g)
        x0 = inversion.x0.to(backbone.device)
        mask, colors = to_model_space(backbone, x0, *self.image_strokes(image_size(backbone, x0)))
        clip = self.options.clip_prediction and is_pixel_space(backbone)
        rule = inversion.regeneration(backbone, start, k, generator=generator)
        guidance = inversion_guidance(backbone, inversion, cond, g if cond is not None else 1.0)
        hook = NoiseHook(self.noise_function(schedule, mask, colors, lo, hi, clip))
        return denoise(backbone, rule, start, guidance, [hook], desc="color strokes")
