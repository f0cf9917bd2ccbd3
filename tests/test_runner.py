"""The experiment runner (``editfriendly run``) on the tiny backbone, CPU.

1. a 5-item dataset with two methods writes all rows and images (and matches invert_and_edit);
2. a 2-process CPU DDP run (gloo) gives the same rows and images as the 1-process run;
3. a run killed after some items, then started again, ends with every row exactly once;
4. missing/corrupt images and a too-long prompt fail only their own rows, exit status 1;
5. an offline wandb run directory holds the results table;
(6. PIE-Bench mask decoding is in test_datasets.py; here the masks also reach the metrics.)

Runs use 3 inference steps so that the file stays fast; both 1-process runs that are compared
with the DDP run use one CPU thread, as the DDP processes do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from tests.helpers.runs import make_yaml_dataset, one_thread, photo_crops, read_csv, run_inprocess

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"inversion_seconds", "edit_seconds"}

METHODS = """
methods:
  - name: a
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: {name: text, guidance_scale: 15}
    num_steps: 3
    skip: 1
  - name: b
    inverter: {name: ddpm_edit_friendly, guidance_scale: 3.5}
    editor: text
    num_steps: 3
    skip: 2
    sweep: {editor.guidance_scale: [9]}
"""


# ----------------------------------------------------------------------------- helpers


def write_experiment(path: Path, data: str, output_dir: Path, body: str = METHODS, metrics: str = "[time]",
                     logger: str = "{name: none}", trainer: str = "{accelerator: cpu, devices: 1}") -> Path:
    path.write_text(
        f"backbone: {{name: tiny}}\ndata: {data}\n{body}\nmetrics: {metrics}\ntrainer: {trainer}\n"
        f"logger: {logger}\noutput_dir: {output_dir}\nseed: 0\n"
    )
    return path


def run_subprocess(config: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "framework.cli", "run", str(config), "--no-progress", *overrides],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600,
    )


def run_killed(config: Path, items: int) -> subprocess.CompletedProcess:
    """Run ``config`` in a subprocess that dies (status 17, no cleanup) after ``items`` written items."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "run_killed.py"), str(config), str(items)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600,
    )


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_images(run_a: Path, run_b: Path, rows: list[dict[str, str]]) -> None:
    for r in rows:
        for key in ("input_path", "output_path"):
            a = np.asarray(Image.open(run_a / r[key]))
            b = np.asarray(Image.open(run_b / r[key]))
            np.testing.assert_array_equal(a, b, err_msg=f"{r['item_id']} {r['variant']} {key}")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yaml_dataset(tmp_path_factory.mktemp("data5"))


@pytest.fixture(scope="module")
def run1(tiny, dataset5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference 1-process run of the two methods over 5 items."""
    out = tmp_path_factory.mktemp("run1") / "out"
    cfg = write_experiment(out.parent / "exp.yaml", f"{{name: yaml_list, path: {dataset5}}}", out, logger="{name: csv}")
    assert run_inprocess(cfg) == 0
    return out


# ----------------------------------------------------------------------------- 1


def test_run_writes_all_rows_and_images(run1: Path, dataset5: Path, tiny) -> None:
    from framework.dataset import item_seed
    from framework.edit import invert_and_edit
    from framework.images import load_image_tensor
    from framework.registry import EDITORS, INVERTERS

    rows = read_csv(run1 / "results.csv")
    n_targets = 1 + 2 + 1 + 2 + 1
    assert len(rows) == 2 * n_targets
    assert {r["variant"] for r in rows} == {"a", "b[editor.guidance_scale=9]"}
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    for col in ("item_id", "method", "target_prompt", "seed", "status", "error", "output_path", "input_path",
                "source_prompt", "editor.guidance_scale", "inversion_seconds", "edit_seconds", "inversion_nfe",
                "edit_nfe"):
        assert col in rows[0], col
    keys = [(r["item_id"], r["variant"], r["target_index"], r["seed_index"]) for r in rows]
    assert len(set(keys)) == len(keys)
    for r in rows:
        assert Image.open(run1 / r["output_path"]).size == (32, 32)
        assert Image.open(run1 / r["input_path"]).size == (32, 32)
        assert r["seed"] == str(item_seed(0, r["item_id"]))
        # one inversion (2 steps, the smaller skip of the two) shared by both methods: its cost
        # is on every row; the edits take N - skip steps
        assert float(r["inversion_nfe"]) == 2
        assert float(r["edit_nfe"]) == (2 if r["method"] == "a" else 1)
    summary = read_csv(run1 / "summary.csv")
    assert [s["variant"] for s in summary] == ["a", "b[editor.guidance_scale=9]"]
    assert all(s["ok"] == str(n_targets) and s["failed"] == "0" for s in summary)
    assert float(summary[1]["edit_nfe_mean"]) == 1.0 and float(summary[1]["edit_nfe_std"]) == 0.0
    assert (run1 / "config.yaml").exists()
    logged = read_csv(run1 / "csv_logs" / "version_0" / "metrics.csv")  # logger: {name: csv}
    assert float(logged[0]["a/edit_nfe_mean"]) == 2.0

    # method b edits from the inversion computed for a (skip 1): same as its own inversion
    row = next(r for r in rows if r["variant"].startswith("b") and r["item_id"] == "img1" and r["target_index"] == "1")
    image = load_image_tensor(dataset5.parent / "img1.png", tiny.resolution, tiny.size_multiple)
    with one_thread():
        res = invert_and_edit(
            tiny, INVERTERS.build({"name": "ddpm_edit_friendly"}), EDITORS.build({"name": "text", "guidance_scale": 9}),
            image, "a photo of a cat 1", ["a photo of a dog", "a painting of a cat"], num_steps=3, skip=2,
            seed=item_seed(0, "img1"),
        )
    from framework.images import tensor_to_pil

    want = np.asarray(tensor_to_pil(res.images[1:2])[0]).astype(int)
    got = np.asarray(Image.open(run1 / row["output_path"])).astype(int)
    assert np.abs(want - got).max() <= 1  # rounding of float32 sums between the two paths


# ----------------------------------------------------------------------------- 2


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(run1: Path, dataset5: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cfg = write_experiment(
        tmp_path / "exp.yaml", f"{{name: yaml_list, path: {dataset5}}}", out,
        trainer="{accelerator: cpu, devices: 2, strategy: ddp, num_nodes: 1}",
    )
    proc = run_subprocess(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    parts = sorted(p.name for p in (out / "parts").glob("*.jsonl"))
    assert parts == ["rows-rank0.jsonl", "rows-rank1.jsonl"]  # both ranks did work
    one, two = read_csv(run1 / "results.csv"), read_csv(out / "results.csv")
    assert without_timing(two) == without_timing(one)
    assert_same_images(run1, out, one)


# ----------------------------------------------------------------------------- 3


@pytest.mark.slow
def test_resume_after_a_kill_gives_every_row_once(run1: Path, dataset5: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    cfg = write_experiment(tmp_path / "exp.yaml", f"{{name: yaml_list, path: {dataset5}}}", out)
    killed = run_killed(cfg, 2)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert not (out / "results.csv").exists()  # died before the merge
    part = out / "parts" / "rows-rank0.jsonl"
    first = [json.loads(line) for line in part.read_text().splitlines()]
    assert {r["item_id"] for r in first} == {"img0", "img1"} and len(first) == 2 * 3
    # a torn half row, as a kill in the middle of a write leaves
    with open(part, "a") as fh:
        fh.write('{"item_id": "img2", "vari')
    assert run_inprocess(cfg) == 0
    rows = read_csv(out / "results.csv")
    keys = [(r["item_id"], r["variant"], r["target_index"], r["seed_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 14
    # the resumed run did only the missing rows: every row was written exactly once
    written = [json.loads(line) for line in part.read_text().splitlines() if line.endswith("}")]
    assert len(written) == 14
    assert without_timing(rows) == without_timing(read_csv(run1 / "results.csv"))
    assert_same_images(run1, out, rows)
    # a third run has nothing to do and writes nothing
    assert run_inprocess(cfg) == 0
    assert len([line for line in part.read_text().splitlines() if line.endswith("}")]) == 14


# ----------------------------------------------------------------------------- 4, 5 (and masks, samples)


@dataclass
class ProbeOptions:
    scale: float = 1.0


class ProbeMetric(Metric):
    """Reports what the runner handed over: mask, reconstruction, samples."""

    Options = ProbeOptions
    columns = ("mask_mean", "recon_mse", "num_samples", "probe_scale")
    needs_reconstruction = True
    needs_samples = True

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        k = batch.edited_images.shape[0]
        assert batch.source_image.shape == (1, 3, 32, 32) and batch.edited_images.shape == (k, 3, 32, 32)
        assert batch.timing["inversion_nfe"] > 0
        mask = None if batch.mask is None else float(batch.mask.mean())
        assert batch.reconstruction is not None and batch.reconstruction.shape == (1, 3, 32, 32)
        mse = float(((batch.reconstruction - batch.source_image) ** 2).mean())
        s = None if batch.samples is None else float(batch.samples.shape[1])
        if batch.samples is not None:
            assert batch.samples.shape == (k, 2, 3, 32, 32)
        return [{"mask_mean": mask, "recon_mse": mse, "num_samples": s, "probe_scale": self.options.scale}] * k


if "probe" not in METRICS:
    METRICS.register("probe")(ProbeMetric)


def make_pie_bench(root: Path) -> Path:
    """Two good items with masks, a missing image, a corrupt image and a too-long prompt."""
    from plugins.datasets.pie_bench import encode_rle

    images = root / "annotation_images"
    (images / "0_random").mkdir(parents=True)
    crops = photo_crops(3, size=64)
    mapping = {}
    for k, key in enumerate(["good0", "good1", "missing", "corrupt", "longprompt"]):
        rel = f"0_random/{key}.png"
        if key == "corrupt":
            (images / rel).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        elif key != "missing":
            Image.fromarray(crops[k % 3]).save(images / rel)
        m = np.zeros((64, 64), np.uint8)
        m[16:48, 16 + 16 * (k % 2) : 48] = 1
        source = "a [cat] " + ("very " * 90 if key == "longprompt" else "") + "on a mat"
        mapping[key] = {"image_path": rel, "original_prompt": source, "editing_prompt": "a [dog] on a mat",
                        "blended_word": "cat dog", "editing_type_id": "0", "mask": encode_rle(m)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root / "mapping_file.json"


@pytest.fixture(scope="module")
def failing_run(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    root = tmp_path_factory.mktemp("pie")
    mapping = make_pie_bench(root / "PIE-Bench")
    out = root / "out"
    body = (
        "methods:\n  - name: ef\n    inverter: ddpm_edit_friendly\n    editor: {name: text, guidance_scale: 15}\n"
        "    num_steps: 3\n    skip: 2\n    seeds: 2\n"
    )
    cfg = write_experiment(
        root / "exp.yaml", f"{{name: pie_bench, path: {mapping}, border: false}}", out, body=body,
        metrics="[time, {name: probe, scale: 2.5}]", logger="{name: wandb, mode: offline, project: editfriendly-test}",
    )
    os.environ["WANDB_DIR"] = str(root)  # wandb's own staging files stay in the test folder
    try:
        code = run_inprocess(cfg)
    finally:
        os.environ.pop("WANDB_DIR", None)
    return code, out


def test_failures_are_isolated_and_reported(failing_run: tuple[int, Path]) -> None:
    code, out = failing_run
    assert code == 1  # some rows failed
    rows = read_csv(out / "results.csv")
    by_item: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    assert sorted(by_item) == ["corrupt", "good0", "good1", "longprompt", "missing"]
    for key in ("good0", "good1"):
        assert [r["status"] for r in by_item[key]] == ["ok", "ok"]  # seeds 0 and 1
        assert len({r["seed"] for r in by_item[key]}) == 2
        assert all((out / r["output_path"]).is_file() for r in by_item[key])
    assert all(r["status"] == "failed" for k in ("missing", "corrupt", "longprompt") for r in by_item[k])
    assert "not found" in by_item["missing"][0]["error"]
    assert "corrupt" in by_item["corrupt"][0]["error"] or "not an image" in by_item["corrupt"][0]["error"]
    assert "tokens" in by_item["longprompt"][0]["error"]
    assert by_item["longprompt"][0]["input_path"]  # its image was fine and was saved
    # the masks (decoded, cropped and resized to 32x32), the reconstruction and the 2 samples reach the metrics
    good = by_item["good0"][0]
    assert float(good["mask_mean"]) == pytest.approx(32 * 32 / 64**2)
    assert float(by_item["good1"][0]["mask_mean"]) == pytest.approx(32 * 16 / 64**2)
    assert float(good["num_samples"]) == 2 and float(good["probe_scale"]) == 2.5
    assert float(good["recon_mse"]) >= 0
    assert good["data.blended_word"] == "cat dog"
    summary = read_csv(out / "summary.csv")
    assert summary[0]["ok"] == "4" and summary[0]["failed"] == "6"


def test_offline_wandb_run_holds_the_table(failing_run: tuple[int, Path]) -> None:
    _, out = failing_run
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    tables = list(runs[0].glob("files/media/table/results_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    cols = table["columns"]
    assert {"item_id", "variant", "status", "error", "mask_mean", "input", "output"} <= set(cols)
    assert len(table["data"]) == 10
    by_status = {}
    for row in table["data"]:
        by_status.setdefault(row[cols.index("status")], []).append(row)
    assert len(by_status["ok"]) == 4 and len(by_status["failed"]) == 6
    # wandb 0.31 writes table images as "Image" here and stages the files themselves as an
    # artifact (uploaded by `wandb sync`); the runner keeps that staging inside the run folder
    assert all(row[cols.index("output")] == "Image" for row in by_status["ok"])
    assert all(row[cols.index("output")] is None for row in by_status["failed"])
    staged = [p for p in (out / "wandb" / "data").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x89PNG"]
    assert len(staged) >= 4
    assert list(runs[0].glob("files/media/table/summary_*.table.json"))


def test_example_config_composes_verbatim() -> None:
    """configs/experiment/example.yaml composes, expands and lists its data."""
    from framework.config import compose
    from framework.dataset import build_dataset
    from framework.experiment.plan import expand_methods, inversion_groups, metric_configs
    from framework.experiment.run import find_experiment, resolve_data_path

    path = find_experiment("example")
    cfg = compose(experiment=path)
    assert cfg.backbone.name == "tiny" and cfg.logger.mode == "offline" and cfg.output_dir == "runs/example"
    variants = expand_methods(cfg)
    assert [(v.skip, v.editor["guidance_scale"]) for v in variants] == [(24, 9), (24, 15), (36, 9), (36, 15)]
    assert [g.skip for g in inversion_groups(variants)] == [24]  # one shared inversion per image
    assert metric_configs(cfg) == [{"name": "time"}]
    items = build_dataset(resolve_data_path(dict(cfg.data), path)).items()
    assert [i.id for i in items] == ["example/flower", "example/china_temple", "example/china_trees"]
    assert all(Path(i.image_path).is_file() for i in items)


def test_a_folder_named_like_an_experiment_is_not_taken_for_its_config(tmp_path, monkeypatch):
    """With DDP, every rank re-parses the command line after rank 0 made the output folder: a
    folder ``digits_bench/`` in the working directory must not shadow the named experiment."""
    from framework.config import config_dir
    from framework.errors import ConfigError
    from framework.experiment.run import find_experiment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "example").mkdir()
    assert find_experiment("example") == config_dir() / "experiment" / "example.yaml"
    (tmp_path / "mine.yaml").write_text("seed: 1\n")
    assert find_experiment("mine.yaml") == Path("mine.yaml")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="experiment config not found: nothing"):
        find_experiment("nothing")
