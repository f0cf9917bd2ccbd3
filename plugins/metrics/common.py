"""Helpers shared by the metric plugins: input checks, masks, batching, weight loading.

Conventions of every metric here:

- Images arrive in [-1, 1] (``MetricInput``); pixel measures (PSNR, SSIM, MSE) work on
  [0, 1] images (``data_range = 1``), as PIE-Bench does.
- ``MetricInput.mask`` is (1, 1, H, W) with 1 marking the *edited* region. The background
  variants (``*_bg`` columns) follow PIE-Bench's background preservation: both images are
  multiplied by the background mask (1 - mask) in [0, 1] space, so the edited region is black
  in both and anything drawn inside it cannot change the score.
- Metrics with networks load them once in ``setup(device)``. Missing weights raise
  :class:`~framework.errors.WeightsNotFoundError` naming the metric and the option that takes a
  local path; with ``on_missing: skip`` a warning is logged and the columns are left empty
  (``None``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from framework.errors import ConfigError, InputError, WeightsNotFoundError
from framework.metrics import Metric, MetricInput

log = logging.getLogger(__name__)

ON_MISSING = ("error", "skip")


def check_on_missing(value: str, metric: str) -> str:
    """Validate the ``on_missing`` option (``error`` or ``skip``)."""
    if value not in ON_MISSING:
        raise ConfigError(
            f"option on_missing of metric {metric!r} must be one of {', '.join(ON_MISSING)}, got {value!r}"
        )
    return value


def offline() -> bool:
    """True when the environment asks for no downloads (HF_HUB_OFFLINE / EDITFRIENDLY_OFFLINE)."""
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "EDITFRIENDLY_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of hub repo ``repo_id`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # an invalid id is simply not cached
        return False


def check_input(batch: MetricInput, metric: str) -> None:
    """Check shapes: source (1, 3, H, W), edits (K, 3, H, W), K target prompts."""
    src, edits = batch.source_image, batch.edited_images
    if src.ndim != 4 or src.shape[0] != 1 or src.shape[1] != 3:
        raise InputError(f"metric {metric!r}: source_image must be (1, 3, H, W), got {tuple(src.shape)}")
    if edits.ndim != 4 or edits.shape[1] != 3:
        raise InputError(f"metric {metric!r}: edited_images must be (K, 3, H, W), got {tuple(edits.shape)}")
    if edits.shape[-2:] != src.shape[-2:]:
        raise InputError(
            f"metric {metric!r}: edits {tuple(edits.shape[-2:])} and source {tuple(src.shape[-2:])} "
            "must have the same height and width"
        )
    if batch.target_prompts and len(batch.target_prompts) != edits.shape[0]:
        raise InputError(
            f"metric {metric!r}: {edits.shape[0]} edits but {len(batch.target_prompts)} target prompts"
        )


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] float32 (clamped)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def edit_mask(mask: Tensor | None, size: tuple[int, int]) -> Tensor | None:
    """The edited-region mask as float (1, 1, H, W) in {0, 1} at ``size`` (nearest resize), or None.

    Accepts (H, W), (1, H, W) or (1, 1, H, W); any value > 0.5 counts as edited.
    """
    if mask is None:
        return None
    m = mask.detach().float()
    while m.ndim < 4:
        m = m.unsqueeze(0)
    if m.ndim != 4 or m.shape[0] != 1:
        raise InputError(f"mask must be (1, 1, H, W), (1, H, W) or (H, W), got {tuple(mask.shape)}")
    if m.shape[1] != 1:
        m = m.amax(dim=1, keepdim=True)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    return (m > 0.5).float()


def background_mask(mask: Tensor | None, size: tuple[int, int]) -> Tensor | None:
    """1 - edit mask: float (1, 1, H, W), 1 on the background (the region that should not change)."""
    m = edit_mask(mask, size)
    return None if m is None else 1.0 - m


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering range(n) in pieces of at most ``size``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def empty_rows(columns: tuple[str, ...], k: int) -> list[dict[str, float | None]]:
    """K rows with every column None."""
    return [dict.fromkeys(columns) for _ in range(k)]


def load_hf(
    loader: Callable[..., Any],
    name_or_path: str,
    *,
    metric: str,
    option: str,
    what: str,
    local_files_only: bool = False,
    **kwargs: Any,
) -> Any:
    """``loader(name_or_path, ...)`` (a transformers ``from_pretrained``), as a clear weights error."""
    text = str(name_or_path)
    # hub ids are "name" or "org/name"; anything else that names no existing folder is a bad path
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local and not Path(text).expanduser().exists():
        raise WeightsNotFoundError(
            f"metric {metric!r}: the folder {text!r} (option {option!r}) does not exist; give a folder "
            f"holding {what} saved with save_pretrained, or a hub id such as the default"
        )
    local_only = local_files_only or offline()
    if not local_only and not looks_local and not Path(text).exists():
        # A hub id: fail fast (instead of minutes of retries) when the hub cannot be reached.
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if not reachable(endpoint):
            if not hub_cached(text):
                raise WeightsNotFoundError(
                    f"metric {metric!r}: {what} {text!r} is not in the local Hugging Face cache and "
                    f"{endpoint} cannot be reached. Give a local folder (saved with save_pretrained) "
                    f"as option {option!r}, e.g. metrics: [{{name: {metric}, {option}: /path/to/folder}}], "
                    "or set on_missing: skip to leave its columns empty."
                )
            local_only = True
    try:
        return loader(name_or_path, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFoundError(
            f"metric {metric!r} could not load {what} from {name_or_path!r}: {first}\n"
            f"Give a local folder (saved with save_pretrained) as option {option!r}, e.g. "
            f"metrics: [{{name: {metric}, {option}: /path/to/folder}}], let the hub download the "
            f"weights once (needs network), or set on_missing: skip to leave its columns empty."
        ) from None


class NetworkMetric(Metric):
    """A metric with networks: loads them in ``setup`` and honours ``on_missing``.

    Subclasses implement ``load(device)`` (raise WeightsNotFoundError when weights are absent)
    and ``score(batch) -> list[dict]``. ``compute`` sets itself up on first use if needed.
    """

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        check_on_missing(self.options.on_missing, self.registered_name)
        self.ready = False
        self.available = False

    def setup(self, device: torch.device | str) -> None:
        super().setup(device)
        try:
            self.load(self.device)
            self.available = True
        except WeightsNotFoundError as exc:
            if self.options.on_missing != "skip":
                raise
            log.warning("%s; on_missing: skip, so its columns %s stay empty", exc, ", ".join(self.columns))
            self.available = False
        self.ready = True

    def load(self, device: torch.device) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, batch: MetricInput) -> list[dict[str, float | None]]:  # pragma: no cover
        raise NotImplementedError

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        if not self.ready:
            self.setup(self.device)
        check_input(batch, self.registered_name)
        if not self.available:
            return empty_rows(self.columns, batch.edited_images.shape[0])
        with torch.no_grad():
            return self.score(batch)
