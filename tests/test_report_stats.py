"""The report package's statistics, model and import costs.

``stats.summarize`` writes the experiment's summary.csv. It replaced the runner's own
hand-written statistics; that function is kept below as the test's reference
(``reference_summarize``): on a results table as the runner merges it (failed rows, sweeps, NaN,
None, ints, inf, a group without any ok row) both write byte-identical CSV files."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from framework.experiment.results import PartWriter, merge_rows, read_rows, write_csv
from framework.report import render, stats

METRICS = ["lpips", "clip_score", "edit_seconds", "edit_nfe", "psnr_bg"]
SWEEP = ["editor.guidance_scale", "skip"]


# The runner's summary statistics before they moved to framework.report.stats (plain Python
# sums in row order, std with ddof=1): the reference the pandas version must match byte for byte.
def reference_summarize(rows, sweep, metric_columns):
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["variant"], row["setting"]), []).append(row)
    out = []
    for (method, variant, setting), members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        first = members[0]
        entry = {
            "method": method, "variant": variant, "setting": setting,
            **{k: first.get(k) for k in sweep if k in first},
            "num_steps": first.get("num_steps"), "skip": first.get("skip"),
            "rows": len(members), "ok": len(ok), "failed": len(members) - len(ok),
        }
        for col in metric_columns:
            values = [float(r[col]) for r in ok if _is_number(r.get(col))]
            n = len(values)
            mean = sum(values) / n if n else None
            std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else (0.0 if n == 1 else None)
            entry[f"{col}_mean"], entry[f"{col}_std"], entry[f"{col}_n"] = mean, std, n
        out.append(entry)
    return out


def _is_number(value):
    if value is None or isinstance(value, bool) or value == "":
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def reference_summary_columns(sweep, metric_columns):
    cols = ["method", "variant", "setting"] + [k for k in sweep if k not in ("num_steps", "skip")]
    cols += ["num_steps", "skip", "rows", "ok", "failed"]
    for col in metric_columns:
        cols += [f"{col}_mean", f"{col}_std", f"{col}_n"]
    return cols


def results_rows(tmp_path: Path) -> list[dict]:
    """Rows as the runner has them after its merge: written to part files as JSON and read back.

    Methods × sweep points × 6 items × 2 targets × 2 seeds; about 10% failed rows (no metric
    values), NaN and None cells, psnr_bg only for some items (no mask otherwise), integer NFE
    counts, one inf, a text cell, a bool, a variant whose every row failed and one with a single row.
    """
    rng = random.Random(7)
    writer = PartWriter(tmp_path, rank=0)
    variants = [("ef", "ef", {"skip": 36})]
    for g in (3.5, 7.5, 15):
        variants.append(("p2p", f"p2p[editor.guidance_scale={g}]", {"editor.guidance_scale": g, "skip": 0}))
    variants += [("ddim", "ddim", {})]  # its sweep keys are absent from its rows
    for method, variant, sweep in variants:
        setting = ",".join(f"{k}={v}" for k, v in sweep.items())
        for item in range(6):
            for target in range(2):
                for seed in range(2):
                    row = {
                        "item_id": f"img{item}", "method": method, "variant": variant, "setting": setting,
                        "target_index": target, "seed_index": seed, "seed": seed, "num_steps": 100,
                        "skip": sweep.get("skip", 0), **sweep, "status": "ok", "error": "",
                    }  # fmt: skip
                    if method == "ddim" or rng.random() < 0.1:
                        row |= {"status": "failed", "error": "CUDA out of memory"}
                    else:
                        row |= {
                            "lpips": rng.random() * 0.5,
                            "clip_score": 0.2 + rng.random() * 0.15,
                            "edit_seconds": rng.lognormvariate(0.5, 0.8),
                            "edit_nfe": rng.choice([64, 128, 200]),
                            "psnr_bg": 20 + 10 * rng.random() if item % 3 == 0 else None,
                        }
                        if rng.random() < 0.1:
                            row["lpips"] = math.nan
                    writer.write(row)
    writer.write({"item_id": "img0", "method": "one", "variant": "one", "setting": "", "target_index": 0,
                  "seed_index": 0, "status": "ok", "lpips": 0.25, "clip_score": True, "edit_seconds": "1.5",
                  "edit_nfe": "n/a", "psnr_bg": math.inf})  # fmt: skip
    writer.write({"item_id": "img1", "method": "one", "variant": "one", "setting": "", "target_index": 0,
                  "seed_index": 0, "status": "ok", "lpips": 0.5, "clip_score": 0.3, "psnr_bg": 30.0})  # fmt: skip
    writer.close()
    rows = merge_rows(read_rows(tmp_path), {"ef": 0, "p2p": 1, "ddim": 2, "one": 3})
    rng.shuffle(rows)  # groups interleave in the table: order of first appearance counts
    return rows


def test_summarize_writes_the_runners_summary_csv_byte_for_byte(tmp_path: Path) -> None:
    rows = results_rows(tmp_path)
    assert stats.summary_columns(SWEEP, METRICS) == reference_summary_columns(SWEEP, METRICS)
    columns = reference_summary_columns(SWEEP, METRICS)
    old = write_csv(tmp_path / "old.csv", reference_summarize(rows, SWEEP, METRICS), columns).read_bytes()
    new_entries = stats.summarize(rows, SWEEP, METRICS)
    new = write_csv(tmp_path / "new.csv", new_entries, columns).read_bytes()
    assert new == old
    # the same Python values and types, not just the same text (repr: NaN equals NaN, 1 is not 1.0)
    def as_text(entries: list[dict]) -> list[dict[str, str]]:
        return [{k: repr(v) for k, v in e.items()} for e in entries]

    assert as_text(new_entries) == as_text(reference_summarize(rows, SWEEP, METRICS))
    by_variant = {e["variant"]: e for e in new_entries}
    assert by_variant["ddim"]["ok"] == 0 and by_variant["ddim"]["lpips_mean"] is None
    assert by_variant["one"]["psnr_bg_mean"] == math.inf and by_variant["one"]["clip_score_n"] == 1
    assert by_variant["one"]["edit_seconds_std"] == 0.0 and by_variant["one"]["edit_nfe_n"] == 0
    # the check has teeth: pandas' own mean (another summation order) misses the last bit somewhere
    frame = pd.DataFrame([r for r in rows if r["status"] == "ok"])
    pandas_mean = frame.groupby("variant", sort=False)["clip_score"].mean()
    assert any(pandas_mean[v] != by_variant[v]["clip_score_mean"] for v in pandas_mean.index if v != "one")


def test_group_statistics_are_students_t_intervals() -> None:
    rng = np.random.default_rng(0)
    samples = [rng.normal(3.0, 2.0, n) for n in (2, 3, 10, 40)]
    for x in samples:
        mean, half, n = stats.mean_ci(list(x))
        lo, hi = student_t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=np.std(x, ddof=1) / math.sqrt(len(x)))
        assert n == len(x) and mean == pytest.approx(np.mean(x), rel=1e-12)
        assert half == pytest.approx((hi - lo) / 2, rel=1e-12)
    # NaN, None and inf are left out; fewer than two values have no interval
    assert stats.mean_ci([1.0, None, math.inf, math.nan, 3.0])[::2] == (2.0, 2)
    assert stats.mean_ci([4.0]) == (4.0, None, 1) and stats.mean_ci([]) == (None, None, 0)
    # one call, many groups: the per-group moments of a grouped table
    values = pd.DataFrame({"v": np.concatenate(samples)})
    ids = np.repeat(np.arange(len(samples)), [len(x) for x in samples])
    m = stats.moments(values, ids, len(samples) + 1)
    assert m.n["v"].tolist() == [2, 3, 10, 40, 0]
    assert m.var["v"].iloc[:4].to_numpy() == pytest.approx([np.var(x, ddof=1) for x in samples], rel=1e-12)
    assert math.isnan(m.mean["v"].iloc[4])


def test_one_model_renders_to_markdown_and_html() -> None:
    doc = render.Section("Report").add(
        render.Text(["a <b> & ", render.Code("run|1")]),
        render.Section("Table").add(render.Table(["method", "x|y"], [["ef", "1 ± 2"]], key="t")),
        render.Section("Figures").add(render.Section("item").add(render.Image("grids/a.png", "item a", key="g"))),
        render.Bullets([["one"], [render.Code("two"), " “three”"]]),
    )
    md = render.to_markdown(doc)
    assert md.splitlines() == [
        "# Report", "", "a <b> & `run|1`", "", "## Table", "", "| method | x\\|y |", "|---|---|", "| ef | 1 ± 2 |",
        "", "## Figures", "", "### item", "", "![item a](grids/a.png)", "", "- one", "- `two` “three”",
    ]  # fmt: skip
    page = render.to_html(doc)
    assert "<title>Report</title>" in page and "<h1>Report</h1>" in page and "<h3>item</h3>" in page
    assert "<p>a &lt;b&gt; &amp; <code>run|1</code></p>" in page
    assert "<thead><tr><th class='k'>method</th><th>x|y</th></tr></thead>" in page and "<td>1 ± 2</td>" in page
    assert "<img src='grids/a.png' alt='item a'>" in page
    assert "<li><code>two</code> “three”</li>" in page
    assert [b.key for b in doc.walk() if isinstance(b, (render.Table, render.Image))] == ["t", "g"]


def test_the_cli_and_figures_load_no_heavy_module_and_no_pyplot() -> None:
    """Building the CLI's parser imports the report package without pandas/scipy/matplotlib;
    drawing a figure uses matplotlib's Figure, not pyplot (whose import would pick a backend)."""
    code = (
        "import sys\n"
        "from framework import cli\n"
        "import framework.report\n"
        "cli.build_parser()\n"
        "heavy = [m for m in ('pandas', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from pathlib import Path\n"
        "from framework.report import figures, stats, runs\n"
        "run = runs.Run(Path('.'), 'r', [], [])\n"
        "g = stats.Group(run, 'ef', (('skip', '3'),), label='ef (skip=3)',\n"
        "                stats={'a': (1.0, 0.1, 3), 'b': (2.0, None, 1)})\n"
        "fig = figures.scatter_figure([g], 'a', 'b')\n"
        "assert fig is not None and len(fig.axes) == 1\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------- the report's layout
def _group(run, method: str, params: dict, values: dict, rows: list | None = None) -> stats.Group:
    from framework.report.stats import Group

    g = Group(run, method, tuple(params.items()), rows=rows or [{"status": "ok"}] * 4)
    g.stats = {m: stats.mean_ci(v) for m, v in values.items()}
    text = ", ".join(f"{k}={v}" for k, v in params.items() if v != "")
    g.label = f"{method} ({text})" if text else method
    return g


def test_intervals_are_clipped_to_the_metrics_range() -> None:
    """Two 0/1 values have the interval 0.5 ± 6.35: a rate is shown within [0, 1]."""
    stat = stats.mean_ci([0.0, 1.0])
    assert stats.cell(stat) == "0.5 ± 6.353"
    assert stats.interval(stat, (0.0, 1.0)) == (0.0, 1.0)
    assert stats.cell(stat, (0.0, 1.0)) == "0.5 [0, 1]"
    assert stats.cell(stat, (0.0, None)) == "0.5 [0, 6.853]"
    inside = stats.mean_ci([0.4, 0.5, 0.6])
    assert stats.cell(inside, (0.0, 1.0)) == stats.cell(inside)  # an interval inside the range stays ±
    # where the ranges come from: what the metric plugins declare, and costs are >= 0
    from framework.report.runs import metric_ranges

    ranges = metric_ranges(["shape_iou", "edit_seconds", "my_nfe", "unknown"])
    assert ranges["shape_iou"] == (0.0, 1.0) and ranges["attr_success"] == (0.0, 1.0)
    assert ranges["edit_seconds"] == ranges["my_nfe"] == (0.0, None) and "unknown" not in ranges
    assert ranges["clip_score"] == (0.0, 100.0)


def test_table_shows_only_columns_that_tell_settings_apart() -> None:
    from framework.report.runs import Run

    run = Run(Path("r"), "r", [], [])
    params = ["num_steps", "skip", "editor.guidance_scale", "inverter.eta"]
    groups = [
        _group(run, "ef_text", {"num_steps": "100", "skip": "0", "editor.guidance_scale": "7.5", "inverter.eta": ""},
               {"iou": [0.1, 0.2], "ok": [1.0, 1.0]}),
        _group(run, "ef_text", {"num_steps": "100", "skip": "0", "editor.guidance_scale": "15", "inverter.eta": ""},
               {"iou": [0.3, 0.2], "ok": [1.0, 1.0]}),
        _group(run, "sdedit", {"num_steps": "100", "skip": "36", "editor.guidance_scale": "", "inverter.eta": ""},
               {"iou": [0.0, 1.0], "ok": [1.0, 1.0]}),
    ]  # fmt: skip
    full_header, _ = stats.comparison_table(groups, [run], params, ["iou", "ok"])
    assert len(full_header) == 9
    layout = stats.table_layout(groups, [run], params, ["iou", "ok"], {"iou": (0.0, 1.0)})
    assert layout.header == ["method", "skip", "iou"] and layout.key_columns == 2
    assert [row[:2] for row in layout.body] == [
        ["ef_text (editor.guidance_scale=7.5)", "0"], ["ef_text (editor.guidance_scale=15)", "0"], ["sdedit", "36"],
    ]  # fmt: skip
    assert layout.body[2][2] == "0.5 [0, 1]"
    assert layout.constant == [("num_steps", "100"), ("rows", "4"), ("failed", "0"), ("ok", "1 ± 0")]
    assert layout.folded == ["editor.guidance_scale"]  # inverter.eta: no value at all, left out
    # extra key columns go after the parameters; a single setting keeps every column
    extra = stats.table_layout(groups, [run], params, ["iou"], extra={"inversion": ["1", "1", "2 (not needed)"]})
    assert extra.header == ["method", "skip", "inversion", "iou"] and extra.key_columns == 3
    assert stats.table_layout(groups[:1], [run], params, ["iou"]).header == [
        "method", "num_steps", "skip", "editor.guidance_scale", "rows", "failed", "iou",
    ]  # fmt: skip


def test_shared_inversions_are_counted_once() -> None:
    """Two settings edited from one inversion per item; one setting that does not need its inversion."""
    from framework.report.runs import Run

    run = Run(Path("r"), "r", [], [])

    def rows(group: str, needed: str, nfe: float, items=("a", "b"), targets=2) -> list:
        return [{"item_id": i, "seed_index": "0", "status": "ok", "inversion_group": group, "inversion_needed": needed,
                 "inversion_nfe": str(nfe + k), "inversion_seconds": "1.5"} for k, i in enumerate(items)
                for _ in range(targets)]  # fmt: skip

    text = _group(run, "ef_text", {"skip": "0"}, {}, rows("g1", "True", 100))
    p2p = _group(run, "ef_p2p", {"skip": "12"}, {}, rows("g1", "True", 100))
    ddim = _group(run, "ddim", {"skip": "0"}, {}, rows("g2", "True", 50))
    sdedit = _group(run, "sdedit", {"skip": "36"}, {}, rows("g2", "False", 50))
    alone = _group(run, "sdedit", {"skip": "64"}, {}, rows("g3", "False", 36))
    found = stats.shared_inversions([text, p2p, ddim, sdedit, alone], ["inversion_nfe", "inversion_seconds"])
    assert [(inv.group, inv.number) for inv in found] == [("g1", 1), ("g2", 2), ("g3", 3)]
    first = found[0]
    assert [g.method for g in first.members] == ["ef_text", "ef_p2p"] and first.not_needed == []
    assert first.stats["inversion_nfe"][::2] == (100.5, 2)  # items a and b, each once (not 8 rows)
    assert [g.method for g in found[1].not_needed] == ["sdedit"] and len(found[2].not_needed) == 1
    assert stats.members_text(first.members) == "ef_text, ef_p2p"
    assert stats.members_text([text, text]) == "ef_text ×2"
    # beside a run before the inversion_group column: each of its settings counts as its own inversion
    old = Run(Path("o"), "o", [], [])
    both = stats.shared_inversions([text, _group(old, "m", {}, {}, [{"status": "ok", "inversion_nfe": "5"}] * 3)],
                                   ["inversion_nfe"])  # fmt: skip
    assert [(inv.group, inv.number, inv.stats["inversion_nfe"][::2]) for inv in both] == [
        ("g1", 1, (100.5, 2)), ("", 1, (5.0, 1)),
    ]  # fmt: skip
    # rows of runs before the inversion_group column alone: nothing to share
    assert stats.shared_inversions([_group(run, "m", {}, {}, [{"status": "ok", "inversion_nfe": "5"}])],
                                   ["inversion_nfe"]) == []  # fmt: skip


def test_wide_tables_are_split_with_their_key_columns_repeated() -> None:
    header = ["method", "skip"] + [f"metric_number_{k} ↑" for k in range(14)]
    body = [["ef_text (editor.guidance_scale=7.5)", "36"] + ["0.8333 ± 0.1234"] * 14 for _ in range(3)]
    parts = render.split_columns(header, body, key_columns=2)
    assert len(parts) > 1 and all(p[:2] == [0, 1] for p in parts)
    assert sorted(j for p in parts for j in p[2:]) == list(range(2, 16))  # every column once
    widths = render.column_widths(header, body, key_columns=2)
    assert all(sum(widths[j] for j in p) <= render.TABLE_WIDTH for p in parts)
    page = render.html_table(header, body, key_columns=2)
    assert page.count("<table>") == len(parts) and page.count("<th class='k'>method</th>") == len(parts)
    assert render.split_columns(header[:5], body, key_columns=2) == [[0, 1, 2, 3, 4]]  # a narrow one is whole


def test_scatter_labels_do_not_overlap_and_bars_stay_in_range() -> None:
    """Many settings of a rate in [0, 1] with n = 2 (intervals far past [0, 1]) and close points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from framework.report import figures
    from framework.report.runs import Run

    run = Run(Path("r"), "r", [], [])
    groups = []
    for method, shift in (("ef_text", 0.0), ("cycle", 0.01), ("sdedit", 0.02)):
        for skip in (0, 12, 24, 36):
            for scale in (7.5, 15):
                x = 0.5 + shift + 0.004 * skip / 12
                values = {"iou": [x - 0.3, x + 0.3], "hit": [0.0, 1.0 if scale == 15 else 0.5]}
                groups.append(_group(run, method, {"skip": str(skip), "editor.guidance_scale": str(scale)}, values))
    fig = figures.scatter_figure(groups, "iou", "hit", {"iou": (0.0, 1.0), "hit": (0.0, 1.0)})
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # places the labels' texts
    renderer = canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text()]
    assert len(texts) == len(groups)  # every setting of a method with several is labelled...
    assert texts[0].get_text() == "skip=0, guidance_scale=7.5"  # ...by what tells it apart
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text alone, not its line to the point
    overlaps = [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(zip(texts, boxes))
                for b, bb in zip(texts[i + 1:], boxes[i + 1:]) if ba.overlaps(bb)]  # fmt: skip
    assert overlaps == []
    for collection in ax.collections:  # the error bars
        for seg in collection.get_segments():
            assert seg.min() >= 0.0 and seg.max() <= 1.0


def test_grid_titles_name_what_tells_a_methods_settings_apart() -> None:
    from framework.report import figures
    from framework.report.runs import Run

    run = Run(Path("r"), "r", [], [])
    groups = [
        _group(run, "ef_text", {"num_steps": "100", "skip": "0", "editor.guidance_scale": "7.5"}, {}),
        _group(run, "ef_text", {"num_steps": "100", "skip": "36", "editor.guidance_scale": "7.5"}, {}),
        _group(run, "ddim", {"num_steps": "50", "skip": "0", "editor.guidance_scale": ""}, {}),
    ]
    titles = figures.short_titles(groups)
    assert [titles[id(g)] for g in groups] == ["ef_text (skip=0)", "ef_text (skip=36)", "ddim"]
