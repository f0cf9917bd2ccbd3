"""The comparison report of a small real run of the ``digits`` model, looked at in headless
Chromium at a laptop's width (1400 px): nothing wider than the window, no column without a
value, intervals of rates within [0, 1], and each shared inversion counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework import cli
from tests.helpers.browser import chromium
from tests.helpers.runs import read_csv, run_inprocess

WIDTH = 1400

# digits_bench's kinds of methods at 10 steps on two items: ef_text sweeps a parameter that no
# other method has; ef_text and ef_p2p share one inversion (computed with skip 0: 10 network
# evaluations, where ef_p2p alone would need 9); sdedit shares ddim_text's and needs none.
CONFIG = """
backbone: digits
data: {name: digits, per_digit: 1, limit: 2, edits: [fg, bg]}
methods:
  - name: ef_text
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: {name: text, guidance_scale: 7.5}
    num_steps: 10
    skip: 3
    sweep: {skip: [0, 3], editor.guidance_scale: [7.5, 15]}
  - name: ef_p2p
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: {name: prompt_to_prompt, guidance_scale: 7.5, cross_replace_steps: 0.6, self_replace_steps: 0.2}
    num_steps: 10
    skip: 1
  - name: cycle_text
    inverter: {name: cycle_diffusion, guidance_scale: 3.5}
    editor: {name: text, guidance_scale: 7.5}
    num_steps: 10
    skip: 3
  - name: ddim_text
    inverter: {name: ddim, guidance_scale: 1.0}
    editor: {name: text, guidance_scale: 7.5}
    num_steps: 10
    skip: 0
  - name: sdedit
    inverter: {name: ddim, guidance_scale: 1.0}
    editor: {name: sdedit, guidance_scale: 7.5}
    num_steps: 10
    skip: 3
    sweep: {skip: [3, 6]}
metrics: [digit_attributes, shape_iou, time]
compare: {x: shape_iou, y: color_reached}
trainer: {accelerator: cpu, devices: 1, strategy: auto, num_nodes: 1}
logger: {name: csv}
seed: 0
"""

# per table: its width, its columns, the columns without any value
MEASURE = """() => ({
  scrollWidth: document.documentElement.scrollWidth,
  tables: [...document.querySelectorAll('table')].map(t => {
    const head = [...t.querySelectorAll('thead th')].map(th => th.textContent.trim());
    const rows = [...t.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent.trim()));
    return {width: t.getBoundingClientRect().right, head,
            empty: head.filter((h, i) => rows.every(r => r[i] === '' || r[i] === '—'))};
  }),
  images: [...document.querySelectorAll('img')].map(i => i.naturalWidth),
})"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits_report")
    config = root / "digits_small.yaml"
    config.write_text(CONFIG)
    assert run_inprocess(config, f"output_dir={root / 'run'}") == 0
    assert cli.main(["compare", str(root / "run"), "--out", str(root / "report"), "--no-wandb"]) == 0
    return root


@pytest.mark.slow
def test_rows_name_their_shared_inversion(report: Path) -> None:
    rows = read_csv(report / "run" / "results.csv")
    group = {r["method"]: r["inversion_group"] for r in rows}
    assert group["ef_text"] == group["ef_p2p"] != group["cycle_text"]
    assert group["ddim_text"] == group["sdedit"] != group["ef_text"]
    assert {r["inversion_needed"] for r in rows if r["method"] == "sdedit"} == {"False"}
    assert {r["inversion_needed"] for r in rows if r["method"] != "sdedit"} == {"True"}
    assert {r["inversion_nfe"] for r in rows if r["method"] == "ef_p2p"} == {"10.0"}  # the shared one, skip 0
    md = (report / "report" / "report.md").read_text()
    assert "| 1 | ef_text ×4, ef_p2p |  | 2 | " in md  # two items: two inversions, each counted once
    assert "| 3 | ddim_text, sdedit ×2 | sdedit ×2 | 2 | " in md
    assert "3 inversions per item and seed, 27 network evaluations counted once (87 when counted" in md
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert "inversion_nfe" not in header and "| inversion |" in header


@pytest.mark.slow
def test_report_fits_a_1400_px_window_in_chromium(report: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto((report / "report" / "report.html").as_uri())
        page.wait_for_load_state("load")
        seen = page.evaluate(MEASURE)
    assert seen["scrollWidth"] <= WIDTH
    assert seen["tables"] and all(t["width"] <= WIDTH for t in seen["tables"])
    assert [t["empty"] for t in seen["tables"]] == [[] for _ in seen["tables"]]
    assert seen["images"] and all(w > 0 for w in seen["images"])  # the scatter and the grids load
    heads = [h for t in seen["tables"] for h in t["head"]]
    # the parameter only ef_text has is beside the method, not a column blank for the others
    assert "editor.guidance_scale" not in heads
    page_text = (report / "report" / "report.html").read_text()
    assert "ef_text (editor.guidance_scale=7.5)" in page_text
    # rates with n = 2 have intervals past [0, 1]: they are clipped, never below 0 or above 1
    assert " [0, 1]" in page_text and "± 6.35" not in page_text
