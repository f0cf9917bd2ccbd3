"""``sdxl_random``: Stable Diffusion XL base 1.0's architecture with random weights, built offline.

For timing and memory only: its edits and decodes are noise. The sizes are the published
configuration values of stabilityai/stable-diffusion-xl-base-1.0 (``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json``, ``text_encoder_2/config.json``,
``scheduler/scheduler_config.json``), written out below, so nothing is downloaded: a UNet of
2,567,463,684 parameters, a VAE of 83,653,863, a CLIP ViT-L/14 text encoder of 123,060,480 and
an OpenCLIP ViT-bigG/14 text encoder with projection of 694,659,840. The tokenizers are the
tiny model's small BPE vocabulary (the second padding with "!", as SDXL's): a tokenizer has no
weights and costs no time, and prompts are still padded to 77 tokens. The scheduler is SDXL's
(an Euler scheduler there; the values that define the schedule), as a DDIM scheduler with
"leading" spacing like every backbone here. ``force_zeros_for_empty_prompt`` is on, as in the
published pipeline.

Built in memory on the target device as ``sd14_random`` is (see its docstring): each part in
float32 under a fixed seed, cast to its dtype straight away. The VAE follows the ``sdxl``
backbone's rule: float32 where ``dtype`` is float16 (``force_upcast``), unless ``vae_dtype``
says otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from framework.backbone import Backbone, resolve_device, resolve_dtype
from framework.registry import BACKBONES
from plugins.backbones.sd14_random import SD14_SCHEDULER, SD14_TEXT, SD14_VAE, random_description, seeded_build
from plugins.backbones.sdxl import SDXLBackbone, SDXLOptions, vae_upcast
from plugins.backbones.tiny import build_tokenizer

#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (diffusers defaults omitted)
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
}
#: stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (SD's VAE layout, SDXL's scale)
SDXL_VAE: dict[str, Any] = {**SD14_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
#: text_encoder/config.json: CLIP ViT-L/14's text tower, as SD 1.4's
SDXL_TEXT: dict[str, Any] = dict(SD14_TEXT)
#: text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower with its projection
SDXL_TEXT_2: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 1280,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}
#: scheduler/scheduler_config.json: the values that define the schedule and the timesteps
SDXL_SCHEDULER: dict[str, Any] = dict(SD14_SCHEDULER)
#: the published parameter counts, checked by the tests
SDXL_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


@dataclass
class SDXLRandomOptions:
    """Options of the ``sdxl_random`` backbone."""

    seed: int = 0
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # None: as dtype (float32 where dtype is float16: force_upcast)
    device: str = "auto"
    truncate_prompts: bool = False


def build_sdxl_modules(
    tokenizers: tuple[Any, Any], vae_dtype: torch.dtype, dtype: torch.dtype
) -> tuple[Any, Any, Any, Any]:
    """(text_encoder, text_encoder_2, unet, vae) with SDXL's sizes, created in the current
    default device and random state, each cast to its dtype at once."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(values: dict[str, Any], tokenizer: Any) -> Any:
        return CLIPTextConfig(
            **values,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)
    vae = AutoencoderKL(**SDXL_VAE).to(vae_dtype)
    text_encoder = CLIPTextModel(text_config(SDXL_TEXT, tokenizers[0])).to(dtype)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(SDXL_TEXT_2, tokenizers[1])).to(dtype)
    return text_encoder, text_encoder_2, unet, vae


@BACKBONES.register("sdxl_random")
class SDXLRandomBackbone(SDXLBackbone):
    """SDXL base's networks with random weights (see the module docstring)."""

    Options = SDXLRandomOptions  # type: ignore[assignment]

    def __init__(self, options: SDXLRandomOptions | None = None) -> None:
        from diffusers import DDIMScheduler

        Backbone.__init__(self)
        self.random_options = opts = options or SDXLRandomOptions()
        self.options = SDXLOptions(  # type: ignore[assignment]
            model="sdxl_random (random weights)",
            dtype=opts.dtype,
            vae_dtype=opts.vae_dtype,
            device=opts.device,
            local_files_only=True,
            truncate_prompts=opts.truncate_prompts,
        )
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype)
        self.vae_dtype = vae_upcast(self.dtype, opts.vae_dtype, SDXL_VAE)
        start = time.perf_counter()
        tokenizers = (build_tokenizer(), build_tokenizer(pad_token="!"))
        with seeded_build(int(opts.seed), self.device):
            encoder, encoder_2, unet, vae = build_sdxl_modules(tokenizers, self.vae_dtype, self.dtype)
        scheduler = DDIMScheduler(**SDXL_SCHEDULER, timestep_spacing="leading")
        self.attach_xl(tokenizers, (encoder, encoder_2), unet, vae, scheduler, force_zeros=True)
        self.build_seconds = time.perf_counter() - start

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network: {"unet": ..., "vae": ..., "text_encoder": ..., "text_encoder_2": ...}."""
        return {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in SDXL_PARAMETERS}

    def describe(self) -> dict[str, Any]:
        return random_description(self, super().describe())
