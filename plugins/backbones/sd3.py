"""Stable Diffusion 3 through diffusers' model classes (no pipeline): a rectified flow.

Loads ``transformer`` (an ``SD3Transformer2DModel``), ``vae``, ``text_encoder`` (CLIP-L) and
``text_encoder_2`` (CLIP-G), both with their text projection, their ``tokenizer``/``tokenizer_2``,
the optional ``text_encoder_3``/``tokenizer_3`` (T5) and the ``scheduler`` config (a
``FlowMatchEulerDiscreteScheduler``, shift 3.0) from a hub id or a local diffusers folder: the
``stabilityai/stable-diffusion-3-medium-diffusers`` layout.

The noise process is flow matching (:class:`framework.process.FlowMatchProcess` through
:class:`framework.backbone.FlowMatchBackbone`): x_t = (1−t)·x0 + t·ε, the transformer predicts
the velocity ε − x0 from the timestep 1000·t, and the step times are the scheduler's sigmas.
What follows diffusers' ``StableDiffusion3Pipeline``:

- the conditioning is an :class:`SD3Conditioning`: ``embeds`` (K, 77 + L3, D), both CLIP
  encoders' penultimate hidden states concatenated, zero-padded to the T5 width and followed by
  T5's hidden states (``max_sequence_length`` tokens; zeros where the folder has no T5, or
  ``use_t5`` is false), and ``pooled`` (K, P1 + P2), both CLIP encoders' projected pooled
  outputs;
- the unconditional branch of classifier-free guidance is the encoding of "" (the pipeline's
  negative prompt when none is given);
- latents are the VAE posterior's mode, (z − ``shift_factor``)·``scaling_factor``, and decoding
  inverts that.

The transformer has no cross-attention maps in the UNet's form, so the editors that control
them (prompt_to_prompt, plug_and_play, zero_shot) refuse this backbone.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from framework.backbone import (
    FlowMatchBackbone,
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
from plugins.backbones.stable_diffusion import text_prompt_rules

#: the sub-folders an SD3 folder is loaded from (T5, ``text_encoder_3``, is optional)
SD3_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass(frozen=True)
class SD3Conditioning(Conditioning):
    """SD3's prompt conditioning, one row per prompt.

    ``embeds`` (K, L, D): the joint text embedding (the transformer's ``encoder_hidden_states``);
    ``pooled`` (K, P): both CLIP encoders' projected pooled outputs (``pooled_projections``).
    Both come from the text (``learnable``: what null-text inversion may optimise)."""

    pooled: Tensor
    learnable: ClassVar[tuple[str, ...]] = ("embeds", "pooled")


@dataclass
class SD3Options:
    """Options of the ``sd3`` backbone."""

    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"  # hub id or local diffusers folder
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # the VAE's dtype; None: as dtype
    device: str = "auto"
    revision: str | None = None
    local_files_only: bool = False
    truncate_prompts: bool = False  # False: a prompt too long for CLIP is an error; True: warn and cut
    use_t5: bool = True  # load text_encoder_3 where the folder has one (False: zeros in its place)
    max_sequence_length: int = 256  # T5 tokens (the pipeline's default)


def listed_components(model: str, **kw: Any) -> dict[str, Any] | None:
    """``model_index.json`` of a local folder or a cached hub id (never the network), or None."""
    index = Path(model).expanduser() / "model_index.json"
    try:
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
        else:
            from huggingface_hub import hf_hub_download

            data = json.loads(Path(hf_hub_download(model, "model_index.json", **{**kw, "local_files_only": True}))
                              .read_text(encoding="utf-8"))
    except Exception:  # not there: decided by the folder itself
        return None
    return data if isinstance(data, dict) else None


def has_t5(model: str, **kw: Any) -> bool:
    """Whether ``model`` has a T5 text encoder: listed in ``model_index.json`` (not as null),
    or, for a local folder without a listing, a non-empty ``text_encoder_3/``."""
    data = listed_components(model, **kw)
    if data is not None and "text_encoder_3" in data:
        entry = data["text_encoder_3"]
        return isinstance(entry, list) and None not in entry
    folder = Path(model).expanduser() / "text_encoder_3"
    return folder.is_dir() and any(folder.iterdir())


def check_clip_lengths(tokenizer: Any, prompts: Sequence[str], limit: int, truncate: bool) -> None:
    """Refuse (or, with ``truncate``, warn about) prompts longer than CLIP's ``limit`` tokens."""
    full = tokenizer(list(prompts), truncation=False, verbose=False).input_ids
    for prompt, ids in zip(prompts, full):
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1 : limit - 1])
            msg = (
                f"prompt {short_prompt(prompt)!r} has {len(ids)} tokens but the CLIP text encoders take {limit} "
                "(start and end included)"
            )
            if not truncate:
                raise InputError(
                    msg + f"; shorten it, or set backbone.truncate_prompts=true to cut it after ...{kept[-30:]!r}"
                )
            warnings.warn(msg + f"; truncated after ...{kept[-30:]!r}", stacklevel=3)


@BACKBONES.register("sd3")
class SD3Backbone(FlowMatchBackbone):
    """Stable Diffusion 3 in diffusers' layout (see the module docstring)."""

    Options = SD3Options

    def __init__(self, options: SD3Options | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        self.options = options = options or SD3Options()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        self.vae_dtype = resolve_dtype(options.vae_dtype or options.dtype)
        if isinstance(options.max_sequence_length, bool) or not isinstance(options.max_sequence_length, int) or (
            options.max_sequence_length < 1
        ):
            raise InputError(f"sd3 max_sequence_length must be an integer >= 1, got {options.max_sequence_length!r}")
        kw, unreachable = prepare_loading(
            options.model, SD3_COMPONENTS, "Stable Diffusion 3", options.revision, options.local_files_only
        )
        t5 = bool(options.use_t5) and has_t5(options.model, **kw)
        with weights_not_found(options.model, "Stable Diffusion 3", unreachable):
            tokenizers = [CLIPTokenizer.from_pretrained(options.model, subfolder=s, **kw)
                          for s in ("tokenizer", "tokenizer_2")]
            encoders = [
                CLIPTextModelWithProjection.from_pretrained(options.model, subfolder=s, dtype=self.dtype, **kw)
                for s in ("text_encoder", "text_encoder_2")
            ]
            transformer = SD3Transformer2DModel.from_pretrained(
                options.model, subfolder="transformer", torch_dtype=self.dtype, **kw
            )
            vae = AutoencoderKL.from_pretrained(options.model, subfolder="vae", torch_dtype=self.vae_dtype, **kw)
            sched_cfg = FlowMatchEulerDiscreteScheduler.load_config(options.model, subfolder="scheduler", **kw)
            t5_parts = None
            if t5:
                from transformers import T5EncoderModel, T5TokenizerFast

                t5_parts = (
                    T5TokenizerFast.from_pretrained(options.model, subfolder="tokenizer_3", **kw),
                    T5EncoderModel.from_pretrained(options.model, subfolder="text_encoder_3", dtype=self.dtype, **kw),
                )
        if sched_cfg.get("_class_name") not in (None, "FlowMatchEulerDiscreteScheduler"):
            raise InputError(
                f"{options.model!r} is not a flow-matching model: its scheduler is {sched_cfg.get('_class_name')!r}, "
                "sd3 takes a FlowMatchEulerDiscreteScheduler"
            )
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
        self.attach(tokenizers, encoders, transformer, vae, scheduler, t5_parts)

    def attach(
        self,
        tokenizers: Sequence[Any],
        text_encoders: Sequence[Any],
        transformer: Any,
        vae: Any,
        scheduler: Any,
        t5: tuple[Any, Any] | None = None,
    ) -> None:
        """Take the model parts (already in their dtypes): freeze them, move them to the device,
        read the sizes from their configs and check that they belong together."""
        self.tokenizer, self.tokenizer_2 = tokenizers
        self.text_encoder, self.text_encoder_2 = text_encoders
        self.tokenizer_3, self.text_encoder_3 = t5 if t5 is not None else (None, None)
        self.transformer, self.vae = transformer, vae
        for module in (self.text_encoder, self.text_encoder_2, self.text_encoder_3, self.transformer, self.vae):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
                module.to(self.device)
        self.set_scheduler(scheduler)
        cfg = self.transformer.config
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch_size = int(cfg.patch_size)
        self.resolution = int(cfg.sample_size) * self.vae_scale
        self.size_multiple = self.vae_scale * self.patch_size
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(self.vae.config.get("shift_factor") or 0.0)
        self.max_tokens = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        self.max_tokens = min(self.max_tokens, int(self.text_encoder.config.max_position_embeddings))
        self.joint_dim = int(cfg.joint_attention_dim)
        clip_dim = int(self.text_encoder.config.hidden_size) + int(self.text_encoder_2.config.hidden_size)
        pooled = int(self.text_encoder.config.projection_dim) + int(self.text_encoder_2.config.projection_dim)
        if pooled != int(cfg.pooled_projection_dim):
            raise InputError(
                f"the transformer takes pooled embeddings of {cfg.pooled_projection_dim} values but the CLIP "
                f"encoders' projections give {pooled}: the text encoders and the transformer do not belong together"
            )
        if clip_dim > self.joint_dim:
            raise InputError(
                f"the CLIP encoders' features ({clip_dim}) are wider than the transformer's joint attention "
                f"({self.joint_dim})"
            )
        if self.text_encoder_3 is not None and int(self.text_encoder_3.config.d_model) != self.joint_dim:
            raise InputError(
                f"T5's features ({self.text_encoder_3.config.d_model}) differ from the transformer's joint attention "
                f"({self.joint_dim})"
            )

    # ----------------------------------------------------------------- prompts
    def prompt_rules(self) -> PromptRules:
        """CLIP's tokenizer and token limit (an open vocabulary)."""
        return PromptRules(self.tokenizer, self.max_tokens, None, bool(self.options.truncate_prompts))

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The CLIP tokenizer and text encoder config from a local folder or the local cache."""
        if not isinstance(options, SD3Options):
            return None
        check_model_folder(options.model, SD3_COMPONENTS, "Stable Diffusion 3")
        return text_prompt_rules(options.model, options.revision, truncate=bool(options.truncate_prompts))

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> SD3Conditioning:
        """(K,) prompts -> :class:`SD3Conditioning`, float32 on the device
        (``StableDiffusion3Pipeline.encode_prompt`` without CLIP skip)."""
        prompts = prompt_list(prompts)
        check_clip_lengths(self.tokenizer, prompts, self.max_tokens, bool(self.options.truncate_prompts))
        hidden, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, self.joint_dim - clip.shape[-1]))
        k, length = len(prompts), int(self.options.max_sequence_length)
        if self.text_encoder_3 is None:
            t5 = torch.zeros(k, length, self.joint_dim, device=self.device, dtype=clip.dtype)
        else:
            ids = self.tokenizer_3(
                prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            t5 = self.text_encoder_3(ids)[0].to(clip.dtype)
        return SD3Conditioning(embeds=torch.cat([clip, t5], dim=-2).float(), pooled=torch.cat(pooled, dim=-1).float())

    # ----------------------------------------------------------------- images
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (mode − shift_factor)·scaling_factor, float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(f"image size {w}x{h} is not a multiple of {self.size_multiple}, which this model needs")
        mode = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist.mode().float()
        x0 = (mode - self.shift_factor) * self.scaling_factor
        check_finite(x0, "the VAE's encoding of the image", self.vae_dtype, "backbone.vae_dtype")
        return x0

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Latents -> images in [-1, 1], float32 (NaN/inf raise ``PrecisionError``)."""
        check_finite(x0, "the latents to decode (the transformer's result)", self.dtype, "backbone.dtype")
        z = (x0 / self.scaling_factor + self.shift_factor).to(self.device, self.vae_dtype)
        out = self.vae.decode(z).sample.float()
        check_finite(out, "the VAE's decoded image", self.vae_dtype, "backbone.vae_dtype")
        return out.clamp(-1, 1)

    # ----------------------------------------------------------------- network
    def model_output(self, x_t: Tensor, t: float | Tensor, cond: Any) -> Tensor:
        """The velocity at timestep(s) 1000·t (a float, or (B,) float32), float32."""
        if not isinstance(cond, SD3Conditioning):
            raise InputError(
                f"Stable Diffusion 3 needs an SD3Conditioning (from its encode_prompt), got {type(cond).__name__}"
            )
        b = x_t.shape[0]
        if isinstance(t, Tensor) and t.dim() > 0:
            ts = t.to(self.device, torch.float32)
        else:
            ts = torch.full((b,), float(t), device=self.device, dtype=torch.float32)
        # Gradients follow the caller's grad mode.
        out = self.transformer(
            hidden_states=x_t.to(self.dtype),
            timestep=ts,
            encoder_hidden_states=cond.embeds.to(self.dtype),
            pooled_projections=cond.pooled.to(self.dtype),
            return_dict=False,
        )[0]
        return out.float()

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "model": self.options.model,
            "dtype": dtype_name(self.dtype),
            "vae_dtype": dtype_name(self.vae_dtype),
            "prediction_type": self.prediction_type,
            "shift": float(self.scheduler.config.get("shift", 1.0)),
            "t5": self.text_encoder_3 is not None,
            "resolution": self.resolution,
        }

