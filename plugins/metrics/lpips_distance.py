"""``lpips``: LPIPS (Zhang et al. 2018) between the input and each edit; lower = structure kept.

The network is the standard LPIPS of the ``lpips`` package (v0.1): an ImageNet AlexNet (the
default, as in the paper's Figure 10), VGG16 or SqueezeNet trunk, with the package's calibrated
linear layers (shipped inside the package). The trunk's ImageNet weights are torchvision's:

- ``weights: PATH`` — a local file, either torchvision's trunk checkpoint
  (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``; only its
  ``features.*`` entries are used) or a complete LPIPS ``state_dict`` (keys ``net.*``, ``lin*``);
- otherwise torchvision's cache (``$TORCH_HOME/hub/checkpoints``), downloading once when online.

With a mask, ``lpips_bg`` is PIE-Bench's background LPIPS: both images are multiplied by the
background mask in [0, 1] space (the edited region becomes black) before LPIPS.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.errors import ConfigError, WeightsNotFoundError
from framework.metrics import MetricInput
from framework.registry import METRICS
from plugins.metrics.common import NetworkMetric, background_mask, chunks, offline, reachable, to_unit

#: torchvision weight enums of the LPIPS trunks
TRUNKS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def _trunk_state(net: str, metric: str, local_files_only: bool) -> dict[str, Tensor]:
    """torchvision's ImageNet state_dict of the trunk, from the torch hub cache or a download."""
    import torchvision.models as tvm

    weights = getattr(tvm, TRUNKS[net]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        return torch.load(cached, map_location="cpu", weights_only=True)
    hint = (
        f"Give the trunk checkpoint (or a full LPIPS state_dict) as option 'weights', e.g. "
        f"metrics: [{{name: {metric}, weights: /path/to/{Path(weights.url).name}}}], put it in {cached.parent}, "
        "or set on_missing: skip to leave its columns empty."
    )
    if local_files_only or offline() or not reachable(weights.url):
        raise WeightsNotFoundError(
            f"metric {metric!r}: the ImageNet {net} trunk of LPIPS is not cached at {cached} and "
            f"cannot be downloaded (downloads are off or {weights.url} is unreachable). {hint}"
        )
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # any download failure means "no weights"
        raise WeightsNotFoundError(
            f"metric {metric!r}: could not download the ImageNet {net} trunk of LPIPS from "
            f"{weights.url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. {hint}"
        ) from None


def _load_trunk(model: Any, state: dict[str, Tensor], source: str, metric: str) -> None:
    """Copy torchvision ``features.<i>.*`` entries into the LPIPS trunk's slices."""
    loaded = 0
    for name, piece in model.net.named_children():
        if not name.startswith("slice"):
            continue
        for idx, layer in piece.named_children():
            params = layer.state_dict()
            if not params:
                continue
            prefix = f"features.{idx}."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if set(sub) != set(params):
                raise WeightsNotFoundError(
                    f"metric {metric!r}: {source} is not a torchvision {model.pnet_type} checkpoint "
                    f"(no entries {prefix}{{{', '.join(params)}}}) nor a full LPIPS state_dict"
                )
            layer.load_state_dict(sub)
            loaded += 1
    if not loaded:  # pragma: no cover - every trunk has parameters
        raise WeightsNotFoundError(f"metric {metric!r}: nothing loaded from {source}")


def load_lpips(net: str, weights: str | None, metric: str, local_files_only: bool = False) -> torch.nn.Module:
    """An LPIPS v0.1 network (eval mode, no grad) with its trunk and linear weights loaded.

    ``weights`` is a trunk checkpoint or a full LPIPS state_dict (see the module docstring).
    """
    import lpips

    if net not in TRUNKS:
        raise ConfigError(f"option net of metric {metric!r} must be one of {', '.join(TRUNKS)}, got {net!r}")
    # Find the weights first (fail fast), then build the network.
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"metric {metric!r}: weights file {str(path)!r} (option 'weights') does not exist; give "
                f"torchvision's {net} checkpoint or a full LPIPS state_dict saved with torch.save"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsNotFoundError(f"metric {metric!r}: could not read weights file {path}: {exc}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsNotFoundError(f"metric {metric!r}: {path} holds no state_dict")
        source = str(path)
    else:
        state = _trunk_state(net, metric, local_files_only)
        source = f"torchvision's {net}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`
        # pnet_rand: the trunk starts random and is loaded below; the linear layers are loaded
        # by the package from its own files.
        model = lpips.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)
    if any(k.startswith("net.") for k in state):  # a complete LPIPS state_dict
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("scaling_layer.")]
        if missing or unexpected:
            raise WeightsNotFoundError(
                f"metric {metric!r}: {source} does not match LPIPS({net}): missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}"
            )
    else:
        _load_trunk(model, state, source, metric)
    model.eval().requires_grad_(False)
    return model


def lpips_distance(model: torch.nn.Module, a: Tensor, b: Tensor, batch_size: int = 16) -> Tensor:
    """LPIPS between rows of ``a`` and ``b`` ((B, 3, H, W) in [-1, 1], broadcast on B) -> (B,)."""
    device = next(model.parameters()).device
    n = max(a.shape[0], b.shape[0])
    a = a.expand(n, *a.shape[1:])
    b = b.expand(n, *b.shape[1:])
    out = []
    for s in chunks(n, batch_size):
        d = model(a[s].to(device, torch.float32), b[s].to(device, torch.float32))
        out.append(d.reshape(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class LPIPSOptions:
    """Options of the ``lpips`` metric."""

    net: str = "alex"  # alex | vgg | squeeze
    weights: str | None = None  # local trunk checkpoint or full LPIPS state_dict
    background: bool = True  # also fill lpips_bg (needs a mask; None without one)
    batch_size: int = 16
    local_files_only: bool = False  # never download the trunk
    on_missing: str = "error"  # error | skip


@METRICS.register("lpips")
class LPIPSMetric(NetworkMetric):
    """LPIPS between the input and each edit (lower = structure preserved); lpips_bg on the background."""

    Options = LPIPSOptions
    ranges = {"lpips": (0.0, None), "lpips_bg": (0.0, None)}

    def __init__(self, options: LPIPSOptions | None = None) -> None:
        super().__init__(options)
        self.columns = ("lpips", "lpips_bg") if self.options.background else ("lpips",)
        self.model: torch.nn.Module | None = None

    def load(self, device: torch.device) -> None:
        o = self.options
        self.model = load_lpips(o.net, o.weights, self.registered_name, o.local_files_only).to(device)

    def score(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """(1, 3, H, W) source vs (K, 3, H, W) edits -> K rows."""
        src, edits = batch.source_image, batch.edited_images
        k = edits.shape[0]
        whole = lpips_distance(self.model, src, edits, self.options.batch_size)
        rows: list[dict[str, float | None]] = [{"lpips": float(v)} for v in whole]
        if self.options.background:
            bg = background_mask(batch.mask, tuple(src.shape[-2:]))
            if bg is None:
                for r in rows:
                    r["lpips_bg"] = None
            else:
                bg = bg.to(src.device)
                a = to_unit(src) * bg * 2 - 1
                b = to_unit(edits) * bg * 2 - 1
                vals = lpips_distance(self.model, a, b, self.options.batch_size)
                for r, v in zip(rows, vals):
                    r["lpips_bg"] = float(v)
        assert len(rows) == k
        return rows
