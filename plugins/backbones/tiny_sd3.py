"""A tiny random Stable Diffusion 3, built offline and deterministically from a seed.

The components follow diffusers' own SD3 pipeline tests, at the sizes of the ``tiny`` model: an
``SD3Transformer2DModel`` of two joint blocks (patch 2, 4 latent channels), a 2× VAE with
SD3's shift and scaling factors, two CLIP text encoders with projections (the tokenizer of
``tiny``), no T5 (zeros in its place, as the pipeline does without ``text_encoder_3``), and
SD3's ``FlowMatchEulerDiscreteScheduler`` (shift 3.0). It is saved into the model cache
(:func:`plugins.backbones.tiny.cached_model_folder`) and loaded back through
:class:`~plugins.backbones.sd3.SD3Backbone`, the code that loads real weights. Its edits are
noise, but every identity of the flow process holds on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framework.prompts import PromptRules
from framework.registry import BACKBONES
from plugins.backbones.sd3 import SD3Backbone, SD3Options
from plugins.backbones.stable_diffusion import text_prompt_rules
from plugins.backbones.tiny import (
    build_tokenizer,
    cached_model_folder,
    describe_tiny,
    no_progress_bars,
    save_text_encoder,
)

#: bump when the architecture below changes, so stale caches are not reused
TINY_SD3_VERSION = 1


@dataclass
class TinySD3Options:
    """Options of the ``tiny_sd3`` backbone."""

    seed: int = 0
    resolution: int = 32  # image side in pixels (latents are half of it)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    device: str = "auto"
    cache_dir: str | None = None  # default: $EDITFRIENDLY_CACHE or ~/.cache/editfriendly
    truncate_prompts: bool = False
    max_sequence_length: int = 256  # the zeros standing for T5's tokens (the pipeline's default)


def build_tiny_sd3(folder: Path, seed: int, resolution: int) -> None:
    """Write a random tiny SD3 in diffusers' folder layout to ``folder``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    if resolution % 4:
        raise ValueError(f"tiny_sd3 resolution must be a multiple of 4, got {resolution}")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=resolution // 2,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=96,  # wider than the two CLIP widths (64): padded, as SD3's 2048 -> 4096
            caption_projection_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
            pos_embed_max_size=32,
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
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5305,
        )
        encoders = []
        for _ in range(2):
            encoders.append(
                CLIPTextModelWithProjection(
                    CLIPTextConfig(
                        vocab_size=len(tokenizer),
                        hidden_size=32,
                        intermediate_size=64,
                        projection_dim=32,
                        num_hidden_layers=2,
                        num_attention_heads=4,
                        max_position_embeddings=77,
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                )
            )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    for sub, encoder in zip(("text_encoder", "text_encoder_2"), encoders):
        save_text_encoder(encoder, folder / sub)
    for sub in ("tokenizer", "tokenizer_2"):
        tokenizer.save_pretrained(folder / sub)
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_editfriendly_tiny": True,
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))


def tiny_sd3_path(options: TinySD3Options) -> Path:
    """The cached folder of the tiny SD3 for ``options``, built and checked on first use."""
    return cached_model_folder(
        "tiny_sd3",
        [TINY_SD3_VERSION, options.seed, options.resolution],
        lambda tmp: build_tiny_sd3(tmp, options.seed, options.resolution),
        options.cache_dir,
        check=lambda folder: SD3Backbone(SD3Options(model=str(folder), device="cpu", local_files_only=True)),
    )


@BACKBONES.register("tiny_sd3")
class TinySD3Backbone(SD3Backbone):
    """The tiny random SD3 (see the module docstring)."""

    Options = TinySD3Options  # type: ignore[assignment]

    def __init__(self, options: TinySD3Options | None = None) -> None:
        options = options or TinySD3Options()
        self.tiny_options = options
        with no_progress_bars():
            folder = tiny_sd3_path(options)
            super().__init__(
                SD3Options(
                    model=str(folder),
                    dtype=options.dtype,
                    device=options.device,
                    local_files_only=True,
                    truncate_prompts=options.truncate_prompts,
                    max_sequence_length=options.max_sequence_length,
                )
            )

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizer of the cached tiny SD3 (built first if it is not there)."""
        if not isinstance(options, TinySD3Options):
            return None
        return text_prompt_rules(str(tiny_sd3_path(options)), None, truncate=bool(options.truncate_prompts))

    def describe(self) -> dict:
        return describe_tiny(self, super().describe())
