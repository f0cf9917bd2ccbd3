"""Cost of each edit: wall time and network evaluations of the inversion and of the edit.

Columns per edit (row of results.csv):
- ``inversion_seconds``, ``inversion_nfe``: the whole inversion the edit started from. One
  inversion is shared by every target, sweep point and method with the same inverter setting
  and steps (computed down to the smallest skip among them), so its full cost is repeated on
  each of those rows: a setting with a larger skip shows more than it would need alone. The
  runner's ``inversion_group`` column tells which rows share one inversion, and
  ``editfriendly compare`` counts each inversion once.
- ``edit_seconds``, ``edit_nfe``: the editor call that produced this edit. All K targets of an
  item are edited as one batch, so by default each row gets the cost of that batched call (what
  a user waits for one edit, batching being nearly free on a GPU); with ``per_target: true``
  the call's cost is divided by K instead (the amortized share).
An NFE is one batched forward pass of the network (both CFG branches in one pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from framework.metrics import Metric, MetricInput
from framework.registry import METRICS


@dataclass
class TimeOptions:
    """Options of the ``time`` metric."""

    per_target: bool = False  # divide the batched edit's cost by the number of targets


@METRICS.register("time")
class TimeMetric(Metric):
    """Seconds and network evaluations of the inversion and the edit behind each row."""

    Options = TimeOptions
    columns = ("inversion_seconds", "edit_seconds", "inversion_nfe", "edit_nfe")
    ranges = dict.fromkeys(columns, (0.0, None))

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        k = int(batch.edited_images.shape[0])
        t = batch.timing
        share = k if self.options.per_target else 1
        edit_seconds = t.get("edit_seconds")
        edit_nfe = t.get("edit_nfe")
        row = {
            "inversion_seconds": _num(t.get("inversion_seconds")),
            "edit_seconds": None if edit_seconds is None else float(edit_seconds) / share,
            "inversion_nfe": _num(t.get("inversion_nfe")),
            "edit_nfe": None if edit_nfe is None else float(edit_nfe) / share,
        }
        return [dict(row) for _ in range(k)]


def _num(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
