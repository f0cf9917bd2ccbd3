"""Stable Diffusion 1.x/2.x through diffusers' model classes (no pipeline, no safety checker).

Loads ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and the ``scheduler`` config from a
hub id or a local diffusers folder. Timesteps follow the paper's code: a DDIM scheduler built
from the model's scheduler config with "leading" spacing and the model's ``steps_offset``.

Precision: ``dtype`` (float32 | float16 | bfloat16) is the UNet's and the text encoder's, and
the VAE's unless ``vae_dtype`` says otherwise (``vae_dtype=float32`` decodes in full precision,
the usual cure for float16 VAEs that overflow). Whatever the networks run in, their inputs and
outputs cross this class as float32: the schedule, the noise maps and the arithmetic of eq. 3
and eq. 5 stay float32. NaN/inf latents or decodes, and all-black decodes from a half-precision
VAE, raise :class:`~framework.backbone.PrecisionError` naming the option to change, rather than
writing black images; an all-black decode from a float32 VAE only warns.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from framework.backbone import (
    Backbone,
    PrecisionError,
    PromptRules,
    check_finite,
    check_model_folder,
    dtype_name,
    prepare_loading,
    prompt_list,
    resolve_device,
    resolve_dtype,
    short_prompt,
    weights_not_found,
)
from framework.conditioning import Conditioning
from framework.errors import InputError
from framework.registry import BACKBONES

log = logging.getLogger(__name__)

#: the sub-folders a Stable Diffusion folder is loaded from
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class StableDiffusionOptions:
    """Options of the ``stable_diffusion`` backbone."""

    model: str = "CompVis/stable-diffusion-v1-4"  # hub id or local diffusers folder
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # the VAE's dtype; None: as dtype (float32: full-precision decoding)
    device: str = "auto"
    revision: str | None = None
    local_files_only: bool = False
    truncate_prompts: bool = False  # False: a too-long prompt is an error; True: warn and cut


@BACKBONES.register("stable_diffusion")
class StableDiffusionBackbone(Backbone):
    """A latent text-to-image diffusion model in diffusers' Stable Diffusion layout."""

    Options = StableDiffusionOptions

    def __init__(self, options: StableDiffusionOptions | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.options = options = options or StableDiffusionOptions()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        self.vae_dtype = resolve_dtype(options.vae_dtype or options.dtype)
        kw, unreachable = prepare_loading(
            options.model, SD_COMPONENTS, "Stable Diffusion", options.revision, options.local_files_only
        )
        with weights_not_found(options.model, "Stable Diffusion", unreachable):
            tokenizer = CLIPTokenizer.from_pretrained(options.model, subfolder="tokenizer", **kw)
            text_encoder = CLIPTextModel.from_pretrained(
                options.model, subfolder="text_encoder", dtype=self.dtype, **kw
            )
            unet = UNet2DConditionModel.from_pretrained(
                options.model, subfolder="unet", torch_dtype=self.dtype, **kw
            )
            vae = AutoencoderKL.from_pretrained(options.model, subfolder="vae", torch_dtype=self.vae_dtype, **kw)
            sched_cfg = DDIMScheduler.load_config(options.model, subfolder="scheduler", **kw)
        self.attach(
            tokenizer, text_encoder, unet, vae, DDIMScheduler.from_config(sched_cfg, timestep_spacing="leading")
        )

    def attach(self, tokenizer: Any, text_encoder: Any, unet: Any, vae: Any, scheduler: Any) -> None:
        """Take the model parts (already in ``self.dtype``/``self.vae_dtype``): freeze them, move
        them to ``self.device`` and read the sizes the methods need from their configs.
        ``scheduler`` is a DDIM scheduler with "leading" spacing."""
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
            module.to(self.device)
        self.set_scheduler(scheduler)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = int(self.unet.config.sample_size) * self.vae_scale
        self.size_multiple = self.vae_scale * 2 ** (len(self.unet.config.down_block_types) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.max_tokens = int(self.text_encoder.config.max_position_embeddings)

    # ----------------------------------------------------------------- prompts
    def prompt_rules(self) -> PromptRules:
        """CLIP's tokenizer and the text encoder's token limit (an open vocabulary)."""
        return PromptRules(self.tokenizer, self.max_tokens, None, bool(self.options.truncate_prompts))

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizer and the text encoder's config from a local folder or the local cache
        (never the network); None when they are not there (the model load says why). A folder
        that does not exist or lacks a part is refused here already."""
        if not isinstance(options, StableDiffusionOptions):
            return None
        check_model_folder(options.model, SD_COMPONENTS, "Stable Diffusion")
        return text_prompt_rules(options.model, options.revision, truncate=bool(options.truncate_prompts))

    # ----------------------------------------------------------------- images
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (B, 4, H/f, W/f), the posterior's mode × scale."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(
                f"image size {w}x{h} is not a multiple of {self.size_multiple}, which this model needs"
            )
        posterior = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        x0 = posterior.mode().float() * self.scaling_factor
        check_finite(x0, "the VAE's encoding of the image", self.vae_dtype, "backbone.vae_dtype")
        return x0

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, h·f, w·f) in [-1, 1], float32.

        Raises :class:`PrecisionError` on NaN/inf latents (the UNet overflowed in ``dtype``), on
        NaN/inf decodes, and on all-black decodes from a half-precision VAE (a float16 VAE that
        overflows usually gives those); an all-black decode from a float32 VAE only warns."""
        check_finite(x0, "the latents to decode (the UNet's result)", self.dtype, "backbone.dtype")
        out = self.vae.decode((x0 / self.scaling_factor).to(self.device, self.vae_dtype)).sample.float()
        check_finite(out, "the VAE's decoded image", self.vae_dtype, "backbone.vae_dtype")
        black = (out.flatten(1).amax(1) <= -1 + 1 / 255).nonzero().flatten().tolist()
        if black:
            msg = f"decoded image(s) {black} are all black (every pixel at the minimum)"
            if self.vae_dtype != torch.float32:
                raise PrecisionError(
                    f"{msg} with backbone.vae_dtype={dtype_name(self.vae_dtype)}, the mark of a "
                    "half-precision VAE overflowing; set backbone.vae_dtype=float32"
                )
            warnings.warn(msg, stacklevel=2)
        return out.clamp(-1, 1)

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """(K,) prompts -> their conditioning: ``embeds``, the CLIP text embeddings (K, L, D),
        float32 on the device."""
        prompts = prompt_list(prompts)
        limit = self.max_tokens
        check_prompt_lengths(self.tokenizer, prompts, limit, bool(self.options.truncate_prompts))
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return Conditioning(self.text_encoder(ids)[0].float())

    # ----------------------------------------------------------------- network
    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Conditioning | None) -> Tensor:
        if cond is None:
            raise InputError("Stable Diffusion needs a prompt conditioning")
        # Gradients follow the caller's grad mode (Zero-Shot guidance needs them).
        hidden = cond.embeds.to(self.dtype)
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=hidden, return_dict=False)[0]
        return out.float()

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "model": self.options.model,
            "dtype": dtype_name(self.dtype),
            "vae_dtype": dtype_name(self.vae_dtype),
            "prediction_type": self.prediction_type,
            "resolution": self.resolution,
        }


def check_prompt_lengths(tokenizer: Any, prompts: Sequence[str], limit: int, truncate: bool) -> None:
    """Refuse a prompt longer than ``limit`` tokens (start and end included) with an
    :class:`InputError`, or, with ``truncate``, warn that it is cut."""
    full = tokenizer(list(prompts), truncation=False, verbose=False).input_ids
    for prompt, ids in zip(prompts, full):
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1 : limit - 1])
            msg = (
                f"prompt {short_prompt(prompt)!r} has {len(ids)} tokens but the text encoder takes {limit} "
                f"(start and end included)"
            )
            if not truncate:
                raise InputError(
                    msg + "; shorten it, or set backbone.truncate_prompts=true to cut it after "
                    f"...{kept[-30:]!r}"
                )
            warnings.warn(msg + f"; truncated after ...{kept[-30:]!r}", stacklevel=3)


def text_prompt_rules(
    model: str, revision: str | None = None, known_words: frozenset[str] | None = None, truncate: bool = False
) -> PromptRules | None:
    """:class:`PromptRules` from ``model``'s ``tokenizer/`` and ``text_encoder/config.json``
    (a local folder, or a hub id in the local cache), or None when they are not there."""
    from transformers import CLIPTextConfig, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    kw: dict[str, Any] = {"revision": revision, "local_files_only": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a model that is not there is reported by its load
    try:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        config = CLIPTextConfig.from_pretrained(model, subfolder="text_encoder", **kw)
    except (OSError, ValueError):
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    return PromptRules(tokenizer, int(config.max_position_embeddings), known_words, truncate)
