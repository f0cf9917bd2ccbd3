"""The digits benchmark's table by edit kind, from a run's ``results.csv`` (markdown to stdout).

One row per method setting; for foreground-colour edits, background-colour
edits and digit edits: the rate at which the changed attribute was reached, the shape IoU
(colour edits) and the rate at which the other attributes were kept. ``n`` counts the edits.

    python scripts/digits_table.py runs/digits_bench/results.csv
    python scripts/digits_table.py runs/digits_flow_bench/results.csv \
        --paired "ef_text[skip=36,editor.guidance_scale=7.5]" ddim_text   # paired statistics

``--paired A B`` (variants as the ``variant`` column names them; repeatable) compares two method
settings on the same edits (item, target prompt, seed): for ``shape_iou`` and ``color_reached``
over the colour edits, and for ``attr_success`` over every edit, the means of A and B, the mean
paired difference A − B with its standard error and 95 % t interval, how many differences are
positive / negative / zero, and the two-sided Wilcoxon signed-rank p-value (zeros dropped).
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


def paired(rows: list[dict], a: str, b: str) -> list[str]:
    """Markdown rows of the paired comparison of variants ``a`` and ``b`` (see the module docstring)."""
    import math

    from scipy import stats

    def by_edit(variant: str) -> dict[tuple[str, str, str], dict]:
        out = {(r["item_id"], r["target_prompt"], r["seed_index"]): r for r in rows if r["variant"] == variant}
        if not out:
            names = sorted({r["variant"] for r in rows})
            raise SystemExit(f"error: no rows of variant {variant!r}; accepted: {', '.join(names)}")
        return out

    ra, rb = by_edit(a), by_edit(b)
    keys = sorted(ra.keys() & rb.keys())
    lines = []
    for col in ("shape_iou", "color_reached", "attr_success"):
        pairs = [(float(ra[k][col]), float(rb[k][col])) for k in keys
                 if ra[k].get(col) not in (None, "") and rb[k].get(col) not in (None, "")]
        if len(pairs) < 2:
            continue
        d = [x - y for x, y in pairs]
        n = len(d)
        m = sum(d) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
        se = sd / math.sqrt(n)
        half = stats.t.ppf(0.975, n - 1) * se
        nonzero = [v for v in d if v != 0]
        p = stats.wilcoxon(nonzero).pvalue if len(nonzero) >= 2 else float("nan")
        lines.append(
            f"| {a} − {b} | {col} | {n} | {sum(x for x, _ in pairs) / n:.3f} | {sum(y for _, y in pairs) / n:.3f} "
            f"| {m:+.3f} ± {se:.3f} | [{m - half:+.3f}, {m + half:+.3f}] "
            f"| {sum(v > 0 for v in d)} / {sum(v < 0 for v in d)} / {sum(v == 0 for v in d)} | {p:.2g} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results.csv of a digits_bench run")
    p.add_argument("--paired", nargs=2, action="append", metavar=("A", "B"), default=[],
                   help="also print paired statistics of variant A against variant B (repeatable)")
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
    if args.paired:
        print()
        print("| A − B | metric | n | mean A | mean B | mean difference ± s.e. | 95 % interval | + / − / 0 "
              "| Wilcoxon p |")
        print("|---|---|---|---|---|---|---|---|---|")
        for a, b in args.paired:
            print("\n".join(paired(rows, a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
