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
    assert "<thead><tr><th>method</th><th>x|y</th></tr></thead>" in page and "<td>1 ± 2</td>" in page
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
