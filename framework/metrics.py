"""The metric interface: each metric scores the K edits of one image (one row per edit).

A metric plugin loads its networks once per process in ``setup(device)`` and evaluates a
whole :class:`MetricInput` (all targets of one item and method) in one call. It returns one
dict per edit whose keys are its result columns (``results.csv`` gets one column per key).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class MetricInput:
    """Everything a metric may look at for the K edits of one item by one method."""

    source_image: Tensor  # (1, 3, H, W) in [-1, 1], the input as the model saw it
    edited_images: Tensor  # (K, 3, H, W) in [-1, 1]
    source_prompt: str
    target_prompts: list[str]
    mask: Tensor | None = None  # (1, 1, H, W) in {0, 1}: 1 marks the region to edit
    reconstruction: Tensor | None = None  # (1, 3, H, W): the source-prompt reconstruction
    timing: dict[str, float] = field(default_factory=dict)  # inversion/edit seconds and nfe
    samples: Tensor | None = None  # (K, S, 3, H, W): S edits per target with different seeds
    extras: dict[str, Any] = field(default_factory=dict)


class Metric(abc.ABC):
    """A scoring plugin. Subclasses define ``Options`` and ``columns``."""

    Options: type
    registered_name: str
    #: the result columns this metric fills (after ``setup``; may depend on options)
    columns: tuple[str, ...] = ()
    #: the values a column can take, as (low, high) with None for no bound (e.g. (0.0, 1.0) for
    #: a rate or an IoU); reports clip confidence intervals to it. Columns not named: unbounded.
    ranges: dict[str, tuple[float | None, float | None]] = {}
    #: the runner then also edits with the source prompt and fills ``MetricInput.reconstruction``
    needs_reconstruction: bool = False
    #: the runner then fills ``MetricInput.samples`` (methods with ``seeds: S``)
    needs_samples: bool = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self.device = torch.device("cpu")

    def setup(self, device: torch.device | str) -> None:
        """Load networks onto ``device`` (called once per process before the first batch)."""
        self.device = torch.device(device)

    @abc.abstractmethod
    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        """One dict per edit (K of them), keyed by this metric's columns."""
