"""The digits benchmark's table by edit kind, from a run's ``results.csv`` (markdown to stdout).

One row per method setting; for foreground-colour edits, background-colour
edits and digit edits: the rate at which the changed attribute was reached, the shape IoU
(colour edits) and the rate at which the other attributes were kept. ``n`` counts the edits.

    python scripts/digits_table.py runs/digits_bench/results.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework import digits as D


def kind(source: str, target: str) -> str:
    """fg, bg or digit: which attribute the target prompt changes."""
    s, t = D.parse_prompt(source), D.parse_prompt(target)
    changed = [name for name, a, b in zip(("digit", "fg", "bg"), s, t) if a != b]
    return changed[0] if len(changed) == 1 else "+".join(changed)


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "–"


def pct(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.0f} %" if values else "–"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results.csv of a digits_bench run")
    args = p.parse_args(argv)
    rows = [r for r in csv.DictReader(open(args.results)) if r["status"] == "ok"]
    groups: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    order: list[tuple[str, str]] = []
    for r in rows:
        setting = f"skip {r['skip']}" + (
            f", guidance {r['editor.guidance_scale']}" if r.get("editor.guidance_scale") else ""
        )
        key = (r["method"], setting)
        if key not in order:
            order.append(key)
        k = kind(r["source_prompt"], r["target_prompt"])
        for col in ("color_reached", "shape_iou", "attr_reached", "attr_kept"):
            if r.get(col) not in (None, ""):
                groups[key][k][col].append(float(r[col]))
    print("| method | setting | fg: colour reached | fg: shape IoU | fg: kept | bg: colour reached | bg: shape IoU "
          "| bg: kept | digit: reached | digit: colours kept | n per kind |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        g = groups[key]
        n = max((len(v["attr_reached"]) for v in g.values()), default=0)
        print(
            f"| {key[0]} | {key[1]} | {pct(g['fg']['color_reached'])} | {mean(g['fg']['shape_iou'])} "
            f"| {pct(g['fg']['attr_kept'])} | {pct(g['bg']['color_reached'])} | {mean(g['bg']['shape_iou'])} "
            f"| {pct(g['bg']['attr_kept'])} | {pct(g['digit']['attr_reached'])} | {pct(g['digit']['attr_kept'])} "
            f"| {n} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
