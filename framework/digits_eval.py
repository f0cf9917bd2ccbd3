"""Reading coloured digits back: generation from prompts, and the attribute classifier.

:func:`generate` samples a text-conditional backbone with DDIM (η = 0) and classifier-free
guidance. :class:`DigitClassifier` predicts (digit, fg colour, bg colour) of an image:

- colours: the palette pair whose mixes lie nearest the pixels, the background being the end
  most pixels are nearer (:func:`read_colours`);
- digit: a scikit-learn RBF support-vector classifier on the image's intensity map
  a = ‖pixel − bg‖ / ‖fg − bg‖ (the rendering inverted, clipped to [0, 1]), downsampled to 8×8,
  trained on rendered images of the training split only (index < 1500), in random colours.

Its held-out accuracy (indices 1500..1796, rendered in random colours) is measured by
:func:`DigitClassifier.heldout_accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from framework import digits as D
from framework.schema import DEFAULT_NUM_STEPS, DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone


@torch.no_grad()
def generate(
    backbone: Backbone,
    prompts: Sequence[str],
    seed: int = 0,
    guidance_scale: float = 3.0,
    num_steps: int = 50,
    batch_size: int = 64,
) -> Tensor:
    """DDIM samples (η = 0) of ``prompts``: (K, 3, R, R) in [-1, 1]; x_T drawn per prompt from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    r = backbone.resolution
    c = getattr(backbone, "channels", 3)
    x_T = torch.randn((len(prompts), c, r, r), generator=g)
    schedule = backbone.schedule(num_steps, 0.0)
    uncond = backbone.null_condition()
    out = []
    for s in range(0, len(prompts), batch_size):
        x = x_T[s:s + batch_size].to(backbone.device)
        cond = backbone.encode_prompt(list(prompts[s:s + batch_size]))
        for i in range(num_steps, 0, -1):
            t = schedule.timestep(i)
            eps = backbone.predict_noise(x, t, cond, uncond, guidance_scale)
            x = schedule.mu(x, eps, i)
        out.append(backbone.decode(x).cpu())
    return torch.cat(out)


def to_unit(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> [0, 1] float32 on the CPU."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def nearest_colour(images: Tensor) -> Tensor:
    """Index (B, H, W) of each pixel's nearest palette colour; images in [-1, 1]."""
    x = to_unit(images).permute(0, 2, 3, 1)  # (B, H, W, 3)
    d = ((x[..., None, :] - D.palette_tensor()) ** 2).sum(-1)  # (B, H, W, 6)
    return d.argmin(-1)


def read_colours(images: Tensor) -> tuple[Tensor, Tensor]:
    """(fg, bg) palette indices (B,), (B,) of images (B, 3, H, W) in [-1, 1].

    The colour pair is the one whose segment (the mixes a·c1 + (1 − a)·c2 the rendering makes)
    lies nearest the pixels (sum of distances); the background is the end of that pair that
    more pixels are nearer.
    """
    x = to_unit(images).flatten(2).transpose(1, 2)  # (B, P, 3)
    pal = D.palette_tensor()
    pairs = torch.tensor([(i, j) for i in range(len(D.COLORS)) for j in range(i + 1, len(D.COLORS))])
    c1 = pal[pairs[:, 0]][None, :, None]  # (1, Q, 1, 3)
    c2 = pal[pairs[:, 1]][None, :, None]
    d = c1 - c2
    a = (((x[:, None] - c2) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)  # (B, Q, P): weight of c1
    resid = (x[:, None] - (c2 + a[..., None] * d)).norm(dim=-1).sum(-1)  # (B, Q)
    best = resid.argmin(1)
    a_best = a[torch.arange(len(best)), best]  # (B, P)
    c1_is_bg = (a_best > 0.5).float().mean(1) > 0.5
    p = pairs[best]
    bg = torch.where(c1_is_bg, p[:, 0], p[:, 1])
    fg = torch.where(c1_is_bg, p[:, 1], p[:, 0])
    return fg, bg


def intensity_map(images: Tensor, fg: Tensor, bg: Tensor) -> Tensor:
    """a = projection of each pixel onto the fg − bg segment, in [0, 1]: (B, H, W)."""
    x = to_unit(images)
    pal = D.palette_tensor()
    f = pal[fg][:, :, None, None]
    b = pal[bg][:, :, None, None]
    num = ((x - b) * (f - b)).sum(1)
    den = ((f - b) ** 2).sum(1).clamp_min(1e-6)
    return (num / den).clamp(0, 1)


def digit_mask(images: Tensor, fg: Tensor, bg: Tensor) -> Tensor:
    """(B, H, W) bool: pixels nearer colour ``fg`` than colour ``bg``."""
    x = to_unit(images)
    pal = D.palette_tensor()
    df = ((x - pal[fg][:, :, None, None]) ** 2).sum(1)
    db = ((x - pal[bg][:, :, None, None]) ** 2).sum(1)
    return df < db


def _features(a: Tensor) -> np.ndarray:
    """Intensity maps (B, H, W) -> (B, 64) features (8×8 area-averaged)."""
    return F.adaptive_avg_pool2d(a[:, None], 8).flatten(1).numpy().astype(np.float64)


class DigitClassifier:
    """Predicts (digit, fg, bg) of coloured digit images (see the module docstring)."""

    def __init__(self, resolution: int = 16, seed: int = 0) -> None:
        from sklearn.svm import SVC

        self.resolution = resolution
        g = torch.Generator().manual_seed(seed)
        idx = D.split_indices("train")
        # each training digit in two random colourings (variety of fg/bg contrast)
        reps = torch.tensor(idx * 2)
        fg, bg = D.random_colourings(len(reps), g)
        pal = D.palette_tensor()
        imgs = D.render(D.intensities(reps, resolution), pal[fg], pal[bg])
        feats = _features(intensity_map(imgs, fg, bg))
        self.model = SVC(C=5.0, gamma="scale")
        self.model.fit(feats, D.labels(reps).numpy())

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """{"digit", "fg", "bg"}: (B,) int64 each, for images (B, 3, H, W) in [-1, 1]."""
        fg, bg = read_colours(images)
        a = intensity_map(images, fg, bg)
        if a.shape[-1] != self.resolution:
            a = F.interpolate(a[:, None], size=(self.resolution,) * 2, mode="bilinear", align_corners=False)[:, 0]
        digit = torch.from_numpy(self.model.predict(_features(a))).long()
        return {"digit": digit, "fg": fg, "bg": bg}

    def heldout_accuracy(self, seed: int = 1) -> dict[str, float]:
        """Accuracy of digit, fg, bg (and all three) on the held-out split in random colours."""
        g = torch.Generator().manual_seed(seed)
        idx = D.split_indices("heldout")
        fg, bg = D.random_colourings(len(idx), g)
        pal = D.palette_tensor()
        imgs = D.render(D.intensities(idx, self.resolution), pal[fg], pal[bg])
        p = self.predict(imgs)
        y = D.labels(idx)
        ok = {"digit": p["digit"] == y, "fg": p["fg"] == fg, "bg": p["bg"] == bg}
        ok["all"] = ok["digit"] & ok["fg"] & ok["bg"]
        return {k: float(v.float().mean()) for k, v in ok.items()}


@lru_cache(maxsize=4)
def classifier(resolution: int = 16) -> DigitClassifier:
    """The shared classifier for ``resolution`` (trained once per process, about a second)."""
    return DigitClassifier(resolution)


# --------------------------------------------------------------------- edits on held-out digits
def edit_cases(n: int, kind: str = "fg", seed: int = 0, resolution: int = 16) -> list[tuple[Tensor, str, str]]:
    """``n`` held-out edit cases (image (1, 3, R, R) in [-1, 1], source prompt, target prompt) that
    change ``kind`` (fg, bg or digit), round-robin over the digits as the ``digits`` dataset."""
    out = []
    for index in D.pick_indices(0)[:n]:
        digit, fg, bg, targets, _ = D.item_spec(index, seed, [kind])
        out.append((D.render_indices([index], [fg], [bg], resolution), D.prompt(digit, fg, bg), targets[0]))
    return out


def run_edits(
    backbone: Backbone,
    inverter: Any,
    editor: Any,
    cases: Sequence[tuple[Tensor, str, str]],
    num_steps: int = DEFAULT_NUM_STEPS,
    skip: int = DEFAULT_SKIP,
    seed: int = 0,
) -> Tensor:
    """Invert and edit each case (one target each): edited images (n, 3, R, R) in [-1, 1]."""
    from framework.edit import invert_and_edit

    imgs = []
    for k, (image, source, target) in enumerate(cases):
        res = invert_and_edit(backbone, inverter, editor, image, source, [target],
                              num_steps=num_steps, skip=skip, seed=seed + k)
        imgs.append(res.images.cpu())
    return torch.cat(imgs)


def edit_rates(cases: Sequence[tuple[Tensor, str, str]], edited: Tensor) -> dict[str, float]:
    """Means over the cases of the ``digit_attributes`` and ``shape_iou`` columns (None skipped)."""
    from framework.metrics import MetricInput
    from framework.registry import METRICS

    attrs, shape = METRICS.build("digit_attributes"), METRICS.build("shape_iou")
    sums: dict[str, list[float]] = {}
    for (image, source, target), edit in zip(cases, edited):
        batch = MetricInput(source_image=image, edited_images=edit[None], source_prompt=source,
                            target_prompts=[target])
        for metric in (attrs, shape):
            for key, value in metric.compute(batch)[0].items():
                if value is not None:
                    sums.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def prompt_following(backbone: Backbone, n: int = 50, seed: int = 0, guidance_scale: float = 3.0,
                     num_steps: int = 50) -> dict[str, float]:
    """Generate from the prompts of ``n`` held-out digits (their digit, random colourings) and
    read them back: the rates of digit, fg, bg and all three matching the prompt."""
    g = torch.Generator().manual_seed(seed)
    idx = D.split_indices("heldout")[:n]
    fg, bg = random_colourings_list(len(idx), g)
    digits = D.labels(idx).tolist()
    prompts = [D.prompt(d, f, b) for d, f, b in zip(digits, fg, bg)]
    imgs = generate(backbone, prompts, seed=seed, guidance_scale=guidance_scale, num_steps=num_steps)
    p = classifier(backbone.resolution).predict(imgs)
    ok = {
        "digit": p["digit"] == torch.tensor(digits),
        "fg": p["fg"] == torch.tensor([D.COLORS.index(c) for c in fg]),
        "bg": p["bg"] == torch.tensor([D.COLORS.index(c) for c in bg]),
    }
    ok["all"] = ok["digit"] & ok["fg"] & ok["bg"]
    return {k: float(v.float().mean()) for k, v in ok.items()}


def random_colourings_list(n: int, generator: torch.Generator) -> tuple[list[str], list[str]]:
    """n random (fg, bg) colour names with fg ≠ bg."""
    f, b = D.random_colourings(n, generator)
    return [D.COLORS[int(i)] for i in f], [D.COLORS[int(i)] for i in b]
