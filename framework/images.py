"""Image files in and out.

Any file Pillow reads (PNG, JPEG, WebP, TIFF, BMP, GIF, ...) in any mode is converted to 8-bit
RGB: 16-bit and float images are rescaled by their range, palette images are expanded, and
transparency is composited over white. Sizing policy (``size=None``): center-crop to a square,
then resize (Lanczos) to the model's resolution, as the paper's code does. With ``size=(W, H)``
the image is scaled to cover W×H and center-cropped to it; W and H must be multiples of the
model's ``size_multiple``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from framework.errors import InputError


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            hi = 65535.0
        else:
            lo = float(arr.min())
            arr = arr - lo
            hi = float(arr.max()) or 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a missing or unreadable file is an :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a directory: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path} is too large to decode safely ({exc}); scale it down (for example to 4096 pixels a side) first"
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path} is not an image Pillow can read; accepted: PNG, JPEG, WebP, TIFF, BMP, GIF and "
            "other formats Pillow supports"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path} is a corrupt or truncated image: {exc}") from None


def parse_size(size: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``512`` or ``"512"`` -> (512, 512); ``"768x512"`` -> (768, 512) as (W, H)."""
    if size is None:
        return None
    if isinstance(size, tuple):
        return size
    if isinstance(size, int):
        return (size, size)
    text = str(size).lower().strip()
    try:
        if "x" in text:
            w, h = text.split("x", 1)
            return (int(w), int(h))
        return (int(text), int(text))
    except ValueError:
        raise InputError(f"size must be N or WxH in pixels (e.g. 512 or 768x512), got {size!r}") from None


def fit_image(img: Image.Image, size: tuple[int, int] | None, resolution: int, multiple: int) -> Image.Image:
    """Apply the sizing policy: square center-crop + resize, or cover-and-crop to ``size``."""
    if size is None:
        side = min(img.size)
        img = ImageOps.fit(img, (side, side), method=Image.Resampling.LANCZOS)
        target = (resolution, resolution)
    else:
        target = size
    w, h = target
    if w <= 0 or h <= 0 or w % multiple or h % multiple:
        raise InputError(
            f"image size {w}x{h} is not accepted: width and height must be positive multiples of "
            f"{multiple} for this model"
        )
    if img.size != target:
        img = ImageOps.fit(img, target, method=Image.Resampling.LANCZOS)
    return img


def pil_to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB PIL images."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def load_image_tensor(
    path: str | Path, resolution: int, multiple: int, size: str | tuple[int, int] | None = None
) -> Tensor:
    """Load, convert and size an image file -> (1, 3, H, W) in [-1, 1]."""
    return pil_to_tensor(fit_image(load_image(path), parse_size(size), resolution, multiple))
