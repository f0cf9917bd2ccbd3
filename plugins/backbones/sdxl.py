"""Stable Diffusion XL through diffusers' model classes (no pipeline, no watermark).

Loads ``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``, ``tokenizer_2``
and the ``scheduler`` config (the ``stabilityai/stable-diffusion-xl-base-1.0`` layout) from a
hub id or a local diffusers folder. Timesteps and the noise process are Stable Diffusion's: a
DDIM scheduler built from the model's scheduler config with "leading" spacing.

What differs from Stable Diffusion 1.x follows diffusers' ``StableDiffusionXLPipeline``:

- the prompt conditioning is an :class:`SDXLConditioning`: ``embeds`` (K, 77, D1 + D2), the
  penultimate hidden states of both text encoders concatenated, and ``pooled`` (K, P), the
  second encoder's projected pooled output (``encode_prompt``);
- the unconditional branch of classifier-free guidance (:meth:`SDXLBackbone.null_condition`)
  is all zeros when the folder's ``model_index.json`` says ``force_zeros_for_empty_prompt``
  (true when it does not say: the pipeline's default), as the pipeline's negative
  conditioning without a negative prompt; else the encoding of "";
- the added time ids (``_get_add_time_ids``: original size, crop corner, target size) describe
  the image, not the prompt, so they are not part of the conditioning: ``model_output`` makes
  them from the latent it is given, ``(H, W, 0, 0, H, W)`` with H×W the latent's size times
  the VAE's factor. The original size and the target size are the size of the image being
  edited (the pipeline's defaults for an image of that size) and the crop corner is (0, 0);
  every row of a batch has the same size, so every row gets the same ids, and they can never
  disagree with the image;
- the VAE runs in float32 when ``dtype`` is float16 and its config says ``force_upcast`` (the
  SDXL VAE overflows in float16), unless ``vae_dtype`` says otherwise.

Prompts are checked with both tokenizers (:class:`SDXLPromptRules`); the two share CLIP's BPE
vocabulary and differ only in their padding token, so a word has the same token positions in
both, and the cross-attention maps (over the concatenated features) index those positions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from framework.backbone import (
    Backbone,
    PromptRules,
    check_model_folder,
    prepare_loading,
    prompt_list,
    resolve_device,
    resolve_dtype,
    weights_not_found,
    word_positions,
)
from framework.conditioning import Conditioning
from framework.errors import InputError
from framework.registry import BACKBONES
from plugins.backbones.stable_diffusion import StableDiffusionBackbone, check_prompt_lengths

#: the sub-folders an SDXL folder is loaded from
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass(frozen=True)
class SDXLConditioning(Conditioning):
    """SDXL's prompt conditioning, one row per prompt.

    ``embeds`` (K, L, D1 + D2): both text encoders' penultimate hidden states, concatenated
    (the UNet's ``encoder_hidden_states``); ``pooled`` (K, P): the second encoder's projected
    pooled output (the UNet's ``text_embeds``). Both come from the text and are what
    null-text inversion optimises (``learnable``)."""

    pooled: Tensor
    learnable: ClassVar[tuple[str, ...]] = ("embeds", "pooled")


@dataclass
class SDXLOptions:
    """Options of the ``sdxl`` backbone."""

    model: str = "stabilityai/stable-diffusion-xl-base-1.0"  # hub id or local diffusers folder
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    # the VAE's dtype; None: as dtype, but float32 where dtype is float16 and the VAE's config
    # says force_upcast (SDXL's VAE overflows in float16)
    vae_dtype: str | None = None
    device: str = "auto"
    revision: str | None = None
    local_files_only: bool = False
    truncate_prompts: bool = False  # False: a too-long prompt is an error; True: warn and cut


@dataclass
class SDXLPromptRules(PromptRules):
    """:class:`PromptRules` over both of SDXL's tokenizers: a prompt's token count is the larger
    of the two (they agree for CLIP's shared vocabulary)."""

    tokenizer_2: Any = None

    def token_count(self, prompt: str) -> int:
        if prompt not in self._counts:
            counts = [
                len(tok(prompt, truncation=False, verbose=False).input_ids)
                for tok in (self.tokenizer, self.tokenizer_2)
                if tok is not None
            ]
            self._counts[prompt] = max(counts)
        return self._counts[prompt]


def vae_upcast(dtype: torch.dtype, vae_dtype: str | None, vae_config: Any) -> torch.dtype:
    """The VAE's dtype: ``vae_dtype`` where given; else float32 where ``dtype`` is float16 and
    the VAE's config says ``force_upcast`` (the pipeline's rule); else ``dtype``."""
    if vae_dtype is not None:
        return resolve_dtype(vae_dtype)
    if dtype == torch.float16 and bool(dict(vae_config).get("force_upcast", False)):
        return torch.float32
    return dtype


def force_zeros_for_empty_prompt(model: str, **kw: Any) -> bool:
    """``model_index.json``'s ``force_zeros_for_empty_prompt`` (True where it does not say, as
    ``StableDiffusionXLPipeline`` defaults)."""
    index = Path(model).expanduser() / "model_index.json"
    try:
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
        else:
            from huggingface_hub import hf_hub_download

            data = json.loads(Path(hf_hub_download(model, "model_index.json", **kw)).read_text(encoding="utf-8"))
    except Exception:  # not readable or not reachable (any transport error): the pipeline's default
        return True
    return bool(data.get("force_zeros_for_empty_prompt", True)) if isinstance(data, dict) else True


@BACKBONES.register("sdxl")
class SDXLBackbone(StableDiffusionBackbone):
    """A latent text-to-image diffusion model in diffusers' SDXL layout (see the module docstring)."""

    Options = SDXLOptions  # type: ignore[assignment]

    def __init__(self, options: SDXLOptions | None = None) -> None:
        Backbone.__init__(self)
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.options = options = options or SDXLOptions()  # type: ignore[assignment]
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        kw, unreachable = prepare_loading(
            options.model, SDXL_COMPONENTS, "Stable Diffusion XL", options.revision, options.local_files_only
        )
        with weights_not_found(options.model, "Stable Diffusion XL", unreachable):
            tokenizer = CLIPTokenizer.from_pretrained(options.model, subfolder="tokenizer", **kw)
            tokenizer_2 = CLIPTokenizer.from_pretrained(options.model, subfolder="tokenizer_2", **kw)
            text_encoder = CLIPTextModel.from_pretrained(
                options.model, subfolder="text_encoder", dtype=self.dtype, **kw
            )
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                options.model, subfolder="text_encoder_2", dtype=self.dtype, **kw
            )
            unet = UNet2DConditionModel.from_pretrained(
                options.model, subfolder="unet", torch_dtype=self.dtype, **kw
            )
            vae_config = AutoencoderKL.load_config(options.model, subfolder="vae", **kw)
            self.vae_dtype = vae_upcast(self.dtype, options.vae_dtype, vae_config)
            vae = AutoencoderKL.from_pretrained(options.model, subfolder="vae", torch_dtype=self.vae_dtype, **kw)
            sched_cfg = DDIMScheduler.load_config(options.model, subfolder="scheduler", **kw)
        self.attach_xl(
            (tokenizer, tokenizer_2),
            (text_encoder, text_encoder_2),
            unet,
            vae,
            DDIMScheduler.from_config(sched_cfg, timestep_spacing="leading"),
            force_zeros_for_empty_prompt(options.model, **kw),
        )

    def attach_xl(
        self,
        tokenizers: tuple[Any, Any],
        text_encoders: tuple[Any, Any],
        unet: Any,
        vae: Any,
        scheduler: Any,
        force_zeros: bool,
    ) -> None:
        """Take the model parts (already in their dtypes; see :meth:`attach`) and check that the
        UNet's added embedding takes the pooled embedding and six time ids."""
        self.tokenizer_2, self.text_encoder_2 = tokenizers[1], text_encoders[1]
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        self.text_encoder_2.to(self.device)
        self.attach(tokenizers[0], text_encoders[0], unet, vae, scheduler)
        self.max_tokens = min(
            int(self.text_encoder.config.max_position_embeddings),
            int(self.text_encoder_2.config.max_position_embeddings),
        )
        self.force_zeros = bool(force_zeros)
        self.pooled_dim = int(self.text_encoder_2.config.projection_dim)
        self.embed_dim = int(self.text_encoder.config.hidden_size) + int(self.text_encoder_2.config.hidden_size)
        add = getattr(self.unet, "add_embedding", None)
        time_dim = self.unet.config.get("addition_time_embed_dim")
        if self.unet.config.get("addition_embed_type") != "text_time" or add is None or time_dim is None:
            raise InputError("an SDXL UNet needs addition_embed_type='text_time' (pooled text and time ids)")
        expected = int(add.linear_1.in_features)
        passed = int(time_dim) * 6 + self.pooled_dim
        if expected != passed:
            raise InputError(
                f"the UNet's added embedding takes {expected} values but the pooled text embedding "
                f"({self.pooled_dim}) and six time ids of {time_dim} give {passed}: text_encoder_2 and "
                "unet do not belong together"
            )
        if int(self.unet.config.cross_attention_dim) != self.embed_dim:
            raise InputError(
                f"the UNet's cross-attention takes {self.unet.config.cross_attention_dim} features but the "
                f"two text encoders give {self.embed_dim}"
            )

    # ----------------------------------------------------------------- prompts
    def prompt_rules(self) -> PromptRules:
        """Both CLIP tokenizers and the shorter text encoder's token limit (an open vocabulary)."""
        return SDXLPromptRules(
            self.tokenizer, self.max_tokens, None, bool(self.options.truncate_prompts), tokenizer_2=self.tokenizer_2
        )

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """Both tokenizers and the text encoders' configs from a local folder or the local cache
        (never the network); None when they are not there (the model load says why)."""
        if not isinstance(options, SDXLOptions):
            return None
        check_model_folder(options.model, SDXL_COMPONENTS, "Stable Diffusion XL")
        return sdxl_prompt_rules(options.model, options.revision, truncate=bool(options.truncate_prompts))

    def token_positions(self, prompt: str, word: str) -> list[int]:
        """Token positions of ``word`` in ``prompt`` (start token = 0), the same in both
        tokenizers (checked: the cross-attention maps index one token axis for both)."""
        first = word_positions(self.tokenizer, prompt, word)
        if word_positions(self.tokenizer_2, prompt, word) != first:
            raise InputError(
                f"the two tokenizers of this model place {word!r} of {prompt!r} at different token positions"
            )
        return first

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> SDXLConditioning:
        """(K,) prompts -> :class:`SDXLConditioning` (embeds (K, L, D1 + D2), pooled (K, P)),
        float32 on the device (``StableDiffusionXLPipeline.encode_prompt`` without CLIP skip)."""
        prompts = prompt_list(prompts)
        truncate = bool(self.options.truncate_prompts)
        check_prompt_lengths(self.tokenizer, prompts, self.max_tokens, truncate)
        if not truncate:  # (a cut prompt is reported once, above)
            check_prompt_lengths(self.tokenizer_2, prompts, self.max_tokens, truncate)
        hidden = []
        pooled = None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the second encoder's (projected) pooled output: (K, P)
        assert pooled is not None and pooled.dim() == 2
        return SDXLConditioning(embeds=torch.cat(hidden, dim=-1).float(), pooled=pooled.float())

    def null_condition(self) -> SDXLConditioning:
        """Zeros where the model says ``force_zeros_for_empty_prompt`` (what the pipeline uses for
        guidance without a negative prompt), else the encoding of ""."""
        if not self.force_zeros:
            return self.encode_prompt([""])
        return SDXLConditioning(
            embeds=torch.zeros(1, self.max_tokens, self.embed_dim, device=self.device),
            pooled=torch.zeros(1, self.pooled_dim, device=self.device),
        )

    # ----------------------------------------------------------------- network
    def add_time_ids(self, height: int, width: int) -> Tensor:
        """(1, 6) float32 added time ids of an image of ``height``×``width`` pixels:
        original size, crop corner (0, 0), target size (``_get_add_time_ids``)."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=self.device)

    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Any) -> Tensor:
        if not isinstance(cond, SDXLConditioning):
            raise InputError(
                f"Stable Diffusion XL needs an SDXLConditioning (from its encode_prompt), got {type(cond).__name__}"
            )
        b, _, h, w = x_t.shape
        time_ids = self.add_time_ids(h * self.vae_scale, w * self.vae_scale).expand(b, 6)
        added = {"text_embeds": cond.pooled.to(self.dtype), "time_ids": time_ids.to(self.dtype)}
        # Gradients follow the caller's grad mode (Zero-Shot guidance needs them).
        out = self.unet(
            x_t.to(self.dtype), t, encoder_hidden_states=cond.embeds.to(self.dtype), added_cond_kwargs=added,
            return_dict=False,
        )[0]
        return out.float()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"class": type(self).__name__, "force_zeros_for_empty_prompt": self.force_zeros})
        return d


def sdxl_prompt_rules(model: str, revision: str | None = None, truncate: bool = False) -> PromptRules | None:
    """:class:`SDXLPromptRules` from ``model``'s tokenizers and text encoder configs (a local
    folder, or a hub id in the local cache), or None when they are not there."""
    from transformers import CLIPTextConfig, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    kw: dict[str, Any] = {"revision": revision, "local_files_only": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a model that is not there is reported by its load
    try:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw)
        limits = [
            int(CLIPTextConfig.from_pretrained(model, subfolder=sub, **kw).max_position_embeddings)
            for sub in ("text_encoder", "text_encoder_2")
        ]
    except (OSError, ValueError):
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    return SDXLPromptRules(tokenizer, min(limits), None, truncate, tokenizer_2=tokenizer_2)

