"""``digit_attributes``: did a digits edit reach the target's changed attribute and keep the rest?

For images of the ``digits`` model (prompts ``a {fg} {digit} on a {bg} background``, see
:mod:`framework.digits`), the classifier of :mod:`framework.digits_eval` reads back each
edit's digit, foreground and background colour. The attributes whose words differ between the
source and the target prompt are the ones the edit should change; the others it should keep.

Columns (1.0 / 0.0 per edit; empty where a prompt is not a digits prompt):

- ``attr_reached``: every changed attribute is read as the target's;
- ``attr_kept``: every unchanged attribute is read as the source's (= the target's);
- ``attr_success``: both;
- ``digit_ok``, ``fg_ok``, ``bg_ok``: that attribute is read as the target prompt's.

The classifier is trained on the training split only (index < 1500); its held-out accuracy is
in the README (``DigitClassifier.heldout_accuracy``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from framework import digits as D
from framework.errors import InputError
from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from plugins.metrics.common import check_input

log = logging.getLogger(__name__)

ATTRIBUTES = ("digit", "fg", "bg")


def prompt_attributes(prompt: str) -> dict[str, int] | None:
    """{"digit", "fg", "bg"} (digit, palette indices) of a digits prompt, or None for another prompt."""
    try:
        digit, fg, bg = D.parse_prompt(prompt)
    except InputError:
        return None
    return {"digit": digit, "fg": D.COLORS.index(fg), "bg": D.COLORS.index(bg)}


@dataclass
class DigitAttributesOptions:
    """Options of the ``digit_attributes`` metric."""

    resolution: int = 16  # the resolution the classifier is trained at (images are resized to it)


@METRICS.register("digit_attributes")
class DigitAttributesMetric(Metric):
    """Attribute success of digits edits, read back by a classifier trained on the training split."""

    Options = DigitAttributesOptions
    columns = ("attr_reached", "attr_kept", "attr_success", "digit_ok", "fg_ok", "bg_ok")
    ranges = dict.fromkeys(columns, (0.0, 1.0))

    def setup(self, device: torch.device | str) -> None:
        super().setup(device)
        from framework.digits_eval import classifier

        self.classifier = classifier(self.options.resolution)

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        check_input(batch, self.registered_name)
        if not hasattr(self, "classifier"):
            self.setup(self.device)
        source = prompt_attributes(batch.source_prompt)
        read = self.classifier.predict(batch.edited_images.detach().float().cpu())
        rows: list[dict[str, float | None]] = []
        for k, target_prompt in enumerate(batch.target_prompts):
            target = prompt_attributes(target_prompt)
            if source is None or target is None:
                log.warning("digit_attributes: %r -> %r are not digits prompts; columns left empty",
                            batch.source_prompt, target_prompt)
                rows.append({c: None for c in self.columns})
                continue
            ok = {a: bool(int(read[a][k]) == target[a]) for a in ATTRIBUTES}
            changed = [a for a in ATTRIBUTES if target[a] != source[a]]
            kept = [a for a in ATTRIBUTES if target[a] == source[a]]
            reached = all(ok[a] for a in changed)
            keeps = all(ok[a] for a in kept)
            rows.append({
                "attr_reached": float(reached),
                "attr_kept": float(keeps),
                "attr_success": float(reached and keeps),
                "digit_ok": float(ok["digit"]),
                "fg_ok": float(ok["fg"]),
                "bg_ok": float(ok["bg"]),
            })
        return rows
