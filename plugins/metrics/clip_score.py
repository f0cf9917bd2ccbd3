"""``clip_score``: CLIP similarity between each edit and its target prompt; higher = prompt followed.

Reported as PIE-Bench (and torchmetrics' ``CLIPScore``) do: ``max(100 · cos(E_img, E_txt), 0)``
with the projected, L2-normalised CLIP image and text embeddings; default model
``openai/clip-vit-large-patch14`` (PIE-Bench's). Images are quantised to 8-bit RGB (as they are
stored) and preprocessed by the model's own ``CLIPProcessor`` (resize, center crop, normalise);
prompts longer than the text encoder's context are truncated.

``clip_score_edited`` (with a mask) is PIE-Bench's "edited" CLIP similarity: the edit multiplied
by the edit mask (everything outside the edited region black) against the target prompt.

``model`` takes a hub id or a local folder holding a ``CLIPModel`` and its processor (both saved
with ``save_pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framework.images import tensor_to_pil
from framework.metrics import MetricInput
from framework.registry import METRICS
from plugins.metrics.common import NetworkMetric, chunks, edit_mask, load_hf, to_unit


@dataclass
class CLIPScoreOptions:
    """Options of the ``clip_score`` metric."""

    model: str = "openai/clip-vit-large-patch14"  # hub id or local folder (model + processor)
    edited_region: bool = True  # also fill clip_score_edited (needs a mask; None without one)
    batch_size: int = 16
    local_files_only: bool = False
    on_missing: str = "error"  # error | skip


@METRICS.register("clip_score")
class CLIPScoreMetric(NetworkMetric):
    """CLIP score 100·max(cos, 0) of each edit with its target prompt (whole image, edited region)."""

    Options = CLIPScoreOptions
    ranges = {"clip_score": (0.0, 100.0), "clip_score_edited": (0.0, 100.0)}

    def __init__(self, options: CLIPScoreOptions | None = None) -> None:
        super().__init__(options)
        self.columns = ("clip_score", "clip_score_edited") if self.options.edited_region else ("clip_score",)
        self.model = None
        self.processor = None

    def load(self, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPProcessor

        o, name = self.options, self.registered_name
        kw = {"metric": name, "option": "model", "local_files_only": o.local_files_only}
        self.processor = load_hf(CLIPProcessor.from_pretrained, o.model, what="a CLIP processor", **kw)
        model = load_hf(CLIPModel.from_pretrained, o.model, what="a CLIP model", **kw)
        self.model = model.to(device).eval().requires_grad_(False)

    def embed_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit-norm image embeddings."""
        pixels = self.processor(images=tensor_to_pil(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.model.dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        feats = out if isinstance(out, Tensor) else out.pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def embed_texts(self, prompts: list[str]) -> Tensor:
        """B prompts -> (B, D) unit-norm text embeddings (truncated to the model's context)."""
        max_len = int(self.model.config.text_config.max_position_embeddings)
        tok = self.processor.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        feats = out if isinstance(out, Tensor) else out.pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def clip_scores(self, images: Tensor, prompts: list[str]) -> Tensor:
        """100·max(cos, 0) for each (image, prompt) pair: (B, 3, H, W), B prompts -> (B,)."""
        out = []
        for s in chunks(images.shape[0], self.options.batch_size):
            img = self.embed_images(images[s])
            txt = self.embed_texts(prompts[s])
            out.append((100.0 * (img * txt).sum(-1)).clamp(min=0).cpu())
        return torch.cat(out)

    def score(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """K edits with their K target prompts -> K rows."""
        edits = batch.edited_images.detach().float().cpu()
        prompts = list(batch.target_prompts)
        rows: list[dict[str, float | None]] = [{"clip_score": float(v)} for v in self.clip_scores(edits, prompts)]
        if self.options.edited_region:
            m = edit_mask(batch.mask, tuple(edits.shape[-2:]))
            if m is None or m.sum() == 0:
                for r in rows:
                    r["clip_score_edited"] = None
            else:
                region = to_unit(edits) * m.cpu() * 2 - 1
                for r, v in zip(rows, self.clip_scores(region, prompts)):
                    r["clip_score_edited"] = float(v)
        return rows
