"""Unconditional pixel-space DDPMs through diffusers' ``UNet2DModel`` (e.g. google/ddpm-ema-church-256).

The model is loaded from a hub id or a local diffusers folder: the network from the ``unet``
subfolder (or the folder itself, the older single-folder layout) and the noise schedule from
the ``scheduler`` subfolder (or the folder itself). As for Stable Diffusion, timesteps come
from a ``DDIMScheduler`` built from the model's scheduler config with "leading" spacing and
the model's ``steps_offset``; epsilon, v and sample predictions are converted to epsilon by
:meth:`Backbone.to_epsilon`. x0 is the image itself: ``encode_image`` and ``decode`` are the
identity on [-1, 1] pixels (a 1-channel model sees the RGB mean and is decoded to gray RGB).
By default the step grid follows Stable Diffusion's convention (``steps_offset=1``,
``set_alpha_to_one=False``) so that the last step keeps some noise and edit-friendly inversion
is exact; both are options. As DDPM's sampler for pixel models, the predicted x0 is clamped
to the image range where the model's scheduler config says ``clip_sample`` (google/ddpm-* do):
``to_epsilon`` returns the noise consistent with the clamped x0, so every method sees it.
The model is unconditional: prompts are accepted and ignored (``encode_prompt`` gives None).

``tiny_pixel`` is a small random model built offline from a seed, saved with
``save_pretrained`` into the cache of :mod:`plugins.backbones.tiny` and loaded back through
this same code; it serves the tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.backbone import Backbone, resolve_device, resolve_dtype
from framework.conditioning import Conditioning
from framework.errors import InputError, WeightsNotFoundError
from framework.registry import BACKBONES
from plugins.backbones.tiny import cached_model_folder

#: bump when the tiny pixel architecture below changes
TINY_PIXEL_VERSION = 1


@dataclass
class PixelDDPMOptions:
    """Options of the ``pixel_ddpm`` backbone."""

    model: str = "google/ddpm-ema-church-256"  # hub id or local diffusers folder
    dtype: str = "float32"  # float32 | float16 | bfloat16 (network only)
    device: str = "auto"
    revision: str | None = None
    local_files_only: bool = False
    # Stable Diffusion's convention, which makes edit-friendly inversion exact: step 1 is at
    # timestep 1 (steps_offset=1) and ends at ᾱ of timestep 0 (set_alpha_to_one=False), so that
    # σ_1 > 0. The google/ddpm-* configs have steps_offset=0 and, read by a DDIM scheduler,
    # ᾱ_prev = 1: step 1 then is deterministic (x0 = the model's prediction, not exact).
    # steps_offset=None keeps the model's value.
    steps_offset: int | None = 1
    set_alpha_to_one: bool = False
    # Clamp the predicted x0 to [-range, range] and use the noise consistent with it, as DDPM's
    # sampler does for pixel models; None: the model's scheduler config (clip_sample).
    clip_sample: bool | None = None


def _load_from(model: str, loader: Any, subfolder: str, kw: dict[str, Any], **extra: Any) -> Any:
    """``loader(model, subfolder=...)``, falling back to the folder root (old single-folder layout)."""
    try:
        return loader(model, subfolder=subfolder, **kw, **extra)
    except (OSError, ValueError) as first:
        try:
            return loader(model, **kw, **extra)
        except (OSError, ValueError):
            raise first from None


@BACKBONES.register("pixel_ddpm")
class PixelDDPMBackbone(Backbone):
    """An unconditional pixel-space diffusion model (UNet2DModel + its DDPM/DDIM schedule)."""

    Options = PixelDDPMOptions
    conditional = False
    #: x0 is the image itself (editors apply image-space inputs directly)
    pixel_space = True

    def __init__(self, options: PixelDDPMOptions | None = None) -> None:
        super().__init__()
        from diffusers import DDIMScheduler, UNet2DModel

        self.options = options = options or PixelDDPMOptions()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        kw: dict[str, Any] = {"revision": options.revision, "local_files_only": options.local_files_only}
        try:
            self.unet = _load_from(options.model, UNet2DModel.from_pretrained, "unet", kw, torch_dtype=self.dtype)
            sched_cfg = _load_from(options.model, DDIMScheduler.load_config, "scheduler", kw)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"could not load a pixel-space diffusion model (UNet2DModel + scheduler) from "
                f"{options.model!r}: {str(exc).splitlines()[0]}\n"
                "Give a local diffusers folder (backbone.model=PATH, e.g. one written by "
                "scripts/train_pixel_ddpm.py), let the hub download it once (network access), or use "
                "--backbone tiny_pixel for a run that needs no download."
            ) from None
        if getattr(self.unet.config, "num_class_embeds", None):
            raise InputError(
                f"{options.model!r} is class-conditional (num_class_embeds="
                f"{self.unet.config.num_class_embeds}); pixel_ddpm takes unconditional models only"
            )
        self.unet.requires_grad_(False)
        self.unet.eval()
        self.unet.to(self.device)
        self.configure_pixels(sched_cfg, options, "pixel_ddpm")

    def configure_pixels(self, sched_cfg: Any, options: Any, kind: str) -> None:
        """The DDIM schedule ("leading" spacing, the options' ``set_alpha_to_one``/``steps_offset``),
        x0 clipping and the image geometry of a pixel-space model whose ``unet`` is loaded."""
        from diffusers import DDIMScheduler

        self.set_scheduler(
            DDIMScheduler.from_config(
                sched_cfg, timestep_spacing="leading", set_alpha_to_one=options.set_alpha_to_one,
                **({} if options.steps_offset is None else {"steps_offset": options.steps_offset}),
            )
        )
        cfg = self.scheduler.config
        self.clip_sample = bool(cfg.get("clip_sample", False) if options.clip_sample is None else options.clip_sample)
        self.clip_sample_range = float(cfg.get("clip_sample_range", 1.0))
        self.channels = int(self.unet.config.in_channels)
        if self.channels not in (1, 3):
            raise InputError(f"{kind} needs a 1- or 3-channel image model, got in_channels={self.channels}")
        size = self.unet.config.sample_size
        self.resolution = int(size if isinstance(size, int) else size[0])
        self.size_multiple = 2 ** (len(self.unet.config.down_block_types) - 1)

    # ----------------------------------------------------------------- images (identity)
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> x0 = the pixels (B, C, H, W), C the model's channels."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(
                f"image size {w}x{h} is not a multiple of {self.size_multiple}, which this model needs"
            )
        x = images.to(self.device, torch.float32)
        return x.mean(1, keepdim=True) if self.channels == 1 else x.clone()

    def decode(self, x0: Tensor) -> Tensor:
        """x0 (B, C, H, W) -> images (B, 3, H, W) in [-1, 1] (clamped), float32."""
        x = x0.float().clamp(-1, 1)
        return x.expand(-1, 3, -1, -1).clone() if x.shape[1] == 1 else x

    def encode_prompt(self, prompts: Sequence[str]) -> None:
        """Unconditional: prompts are ignored."""
        return

    # ----------------------------------------------------------------- network
    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Conditioning | None) -> Tensor:
        return self.unet(x_t.to(self.dtype), t, return_dict=False)[0].float()

    def to_epsilon(self, out: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """ε from the network output; with ``clip_sample`` the ε whose x̂0 is clamped to the
        image range: ε' = (x_t − sqrt(ᾱ_t)·clamp(x̂0)) / sqrt(1−ᾱ_t)."""
        eps = super().to_epsilon(out, x_t, t)
        if not self.clip_sample:
            return eps
        process = self.process
        x0 = process.x0_from_epsilon(x_t.float(), eps, t)
        r = self.clip_sample_range
        return process.epsilon_from_x0(x_t.float(), x0.clamp(-r, r), t)

    def resolved_options(self) -> dict[str, Any]:
        """``clip_sample`` as the scheduler config set it, where the options left it to the model."""
        return {"clip_sample": self.clip_sample} if getattr(self.options, "clip_sample", False) is None else {}

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "clip_sample": self.clip_sample,
            "model": self.options.model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "prediction_type": self.prediction_type,
            "resolution": self.resolution,
        }


# --------------------------------------------------------------------- the tiny offline model
@dataclass
class TinyPixelOptions:
    """Options of the ``tiny_pixel`` backbone."""

    seed: int = 0
    resolution: int = 16  # image side in pixels
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample
    dtype: str = "float32"
    device: str = "auto"
    cache_dir: str | None = None  # default: $EDITFRIENDLY_CACHE or ~/.cache/editfriendly


def build_pixel_unet(resolution: int, channels: int = 3, width: int = 32):
    """A small two-level UNet2DModel (one attention block at the coarse level)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


def ddpm_scheduler(prediction_type: str = "epsilon"):
    """The DDPM paper's schedule: 1000 steps, β linear from 1e-4 to 0.02 (as google/ddpm-*)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=True,
        prediction_type=prediction_type,
    )


def save_pixel_model(folder: Path, unet: Any, scheduler: Any, **extra: Any) -> None:
    """Write ``unet/``, ``scheduler/`` and ``model_index.json`` (a DDPMPipeline layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", type(scheduler).__name__],
        **extra,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))


def build_tiny_pixel_model(folder: Path, seed: int, resolution: int, prediction_type: str) -> None:
    """Write a random tiny pixel DDPM (16/32 px RGB) to ``folder``."""
    if resolution % 2:
        raise ValueError(f"tiny_pixel resolution must be even, got {resolution}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_pixel_unet(resolution)
    save_pixel_model(folder, unet, ddpm_scheduler(prediction_type), _editfriendly_tiny=True)


def tiny_pixel_path(options: TinyPixelOptions) -> Path:
    """The cached folder of the tiny pixel model for ``options``, built and checked on first use."""
    if options.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise InputError(
            "tiny_pixel prediction_type must be epsilon, v_prediction or sample, "
            f"got {options.prediction_type!r}"
        )
    return cached_model_folder(
        "tiny-pixel",
        [TINY_PIXEL_VERSION, options.seed, options.resolution, options.prediction_type],
        lambda tmp: build_tiny_pixel_model(tmp, options.seed, options.resolution, options.prediction_type),
        options.cache_dir,
        check=lambda tmp: PixelDDPMBackbone(PixelDDPMOptions(model=str(tmp), device="cpu", local_files_only=True)),
    )


@BACKBONES.register("tiny_pixel")
class TinyPixelBackbone(PixelDDPMBackbone):
    """A tiny random unconditional pixel DDPM, built offline (tests and smoke runs)."""

    Options = TinyPixelOptions  # type: ignore[assignment]

    def __init__(self, options: TinyPixelOptions | None = None) -> None:
        options = options or TinyPixelOptions()
        self.tiny_options = options
        folder = tiny_pixel_path(options)
        super().__init__(
            PixelDDPMOptions(model=str(folder), dtype=options.dtype, device=options.device, local_files_only=True)
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(asdict(self.tiny_options))
        d["class"] = type(self).__name__
        return d
