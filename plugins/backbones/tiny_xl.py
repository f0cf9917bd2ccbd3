"""A tiny random Stable Diffusion XL, built offline and deterministically from a seed.

SDXL's layout at toy size, after diffusers' own SDXL test components: a UNet with SDXL's block
structure (an attention-free outermost level, then two levels with cross-attention, the second
with two transformer layers per block; ``addition_embed_type="text_time"``: the pooled text
embedding and six time ids enter the time embedding), a 2× VAE with SDXL's scaling factor and
``force_upcast``, a ``CLIPTextModel`` and a ``CLIPTextModelWithProjection`` of different widths
(32 + 48 = 80 cross-attention features, a 24-wide pooled embedding), and two BPE tokenizers
over the tiny model's small vocabulary (the second pads with "!", as SDXL's does). The noise
schedule is SDXL's (Stable Diffusion's). ``model_index.json`` names every component, so
diffusers' ``StableDiffusionXLPipeline.from_pretrained`` loads the folder too.

Saved into the model cache (``cached_model_folder``: built once under a file lock, with a
manifest) and loaded back through :class:`~plugins.backbones.sdxl.SDXLBackbone`, the code that
loads real weights. It serves the tests: its edits are noise, but every identity holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framework.backbone import dtype_name
from framework.prompts import PromptRules
from framework.registry import BACKBONES
from plugins.backbones.sdxl import SDXLBackbone, SDXLOptions, sdxl_prompt_rules
from plugins.backbones.tiny import (
    build_tokenizer,
    cached_model_folder,
    describe_tiny,
    no_progress_bars,
    save_text_encoder,
)

#: bump when the architecture below changes, so stale caches are not reused
TINY_XL_VERSION = 1


@dataclass
class TinyXLOptions:
    """Options of the ``tiny_xl`` backbone."""

    seed: int = 0
    resolution: int = 32  # image side in pixels (latents are half of it); a multiple of 8
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # None: as dtype (float32 where dtype is float16: force_upcast)
    device: str = "auto"
    cache_dir: str | None = None  # default: $EDITFRIENDLY_CACHE or ~/.cache/editfriendly
    truncate_prompts: bool = False


def build_tiny_xl_model(folder: Path, seed: int, resolution: int) -> None:
    """Write a random tiny SDXL in diffusers' folder layout to ``folder``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if resolution % 8:
        raise ValueError(f"tiny_xl resolution must be a multiple of 8, got {resolution}")
    tokenizer = build_tokenizer()
    tokenizer_2 = build_tokenizer(pad_token="!")

    def text_config(hidden: int, projection: int, pad: int) -> Any:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=projection,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=80,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 24,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=resolution,
            scaling_factor=0.13025,
            force_upcast=True,
        )
        text_encoder = CLIPTextModel(text_config(32, 32, tokenizer.pad_token_id))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(48, 24, tokenizer_2.pad_token_id))
    # SDXL base's schedule (Stable Diffusion's), as a DDIM scheduler
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    save_text_encoder(text_encoder, folder / "text_encoder")
    save_text_encoder(text_encoder_2, folder / "text_encoder_2")
    tokenizer.save_pretrained(folder / "tokenizer")
    tokenizer_2.save_pretrained(folder / "tokenizer_2")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_editfriendly_tiny": True,
        "force_zeros_for_empty_prompt": True,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))


def check_tiny_xl_model(folder: Path) -> None:
    """Load every component of a tiny SDXL folder (raises when one is missing or unreadable)."""
    with no_progress_bars():
        SDXLBackbone(SDXLOptions(model=str(folder), device="cpu", local_files_only=True))


def tiny_xl_model_path(options: TinyXLOptions) -> Path:
    """The cached folder of the tiny SDXL for ``options``, built and checked on first use."""
    return cached_model_folder(
        "tiny_xl",
        [TINY_XL_VERSION, options.seed, options.resolution],
        lambda tmp: build_tiny_xl_model(tmp, options.seed, options.resolution),
        options.cache_dir,
        check=check_tiny_xl_model,
    )


@BACKBONES.register("tiny_xl")
class TinyXLBackbone(SDXLBackbone):
    """The tiny random SDXL (see the module docstring)."""

    Options = TinyXLOptions  # type: ignore[assignment]

    def __init__(self, options: TinyXLOptions | None = None) -> None:
        options = options or TinyXLOptions()
        self.tiny_options = options
        with no_progress_bars():
            folder = tiny_xl_model_path(options)
            super().__init__(
                SDXLOptions(
                    model=str(folder),
                    dtype=options.dtype,
                    vae_dtype=options.vae_dtype,
                    device=options.device,
                    local_files_only=True,
                    truncate_prompts=options.truncate_prompts,
                )
            )

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizers of the cached tiny SDXL (built into the cache first if need be)."""
        if not isinstance(options, TinyXLOptions):
            return None
        return sdxl_prompt_rules(str(tiny_xl_model_path(options)), None, truncate=bool(options.truncate_prompts))

    def describe(self) -> dict:
        d = describe_tiny(self, super().describe())
        d["dtype"], d["vae_dtype"] = dtype_name(self.dtype), dtype_name(self.vae_dtype)  # as resolved
        return d
