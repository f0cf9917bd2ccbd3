"""Dataset plugins (yaml_list, pie_bench, folder), the experiment plan and the results store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framework.errors import ConfigError
from framework.registry import DATASETS


def _png(path: Path, size: tuple[int, int] = (16, 16), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 50, 200)).save(path)
    return path


# ----------------------------------------------------------------------------- PIE-Bench


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A few random rectangles and single pixels, as a (H, W) {0,1} array."""
    m = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y0 : y0 + rng.integers(1, h // 3), x0 : x0 + rng.integers(1, w // 3)] = 1
    m[rng.integers(0, h, 5), rng.integers(0, w, 5)] = 1
    return m


def _rle_by_hand(m: np.ndarray) -> list[int]:
    """Independent encoder: walk the row-major pixels and emit (start, length) of each run of 1s."""
    flat = m.reshape(-1).tolist()
    out, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            out += [i, j - i]
            i = j
        else:
            i += 1
    return out


def test_pie_bench_parses_and_decodes_masks(tmp_path: Path) -> None:
    from plugins.datasets.pie_bench import decode_rle, encode_rle

    rng = np.random.default_rng(0)
    root = tmp_path / "PIE-Bench"
    masks = {}
    mapping = {}
    for k, (key, size) in enumerate(
        [("000000000000", (512, 512)), ("111000000001", (40, 24)), ("222000000002", (512, 512))]
    ):
        w, h = size
        rel = f"{k}_type/{key}.jpg"
        _png(root / "annotation_images" / rel, size)
        m = _random_mask(rng, h, w)
        masks[key] = m
        mapping[key] = {
            "image_path": rel,
            "original_prompt": "a [cat] sitting on  a mat",
            "editing_prompt": "a [dog] sitting on  a mat",
            "editing_instruction": "make the cat a dog",
            "editing_type_id": str(k),
            "blended_word": "cat dog",
            "mask": _rle_by_hand(m),
        }
    # a run that overflows the end of the image is clipped, as in PIE-Bench's decoder
    mapping["222000000002"]["mask"] += [512 * 512 - 3, 10]
    masks["222000000002"] = masks["222000000002"].copy()
    masks["222000000002"].reshape(-1)[-3:] = 1
    (root / "mapping_file.json").write_text(json.dumps(mapping))

    ds = DATASETS.build({"name": "pie_bench", "path": str(root / "mapping_file.json")})
    items = ds.items()
    assert [i.id for i in items] == list(mapping)
    first = items[0]
    assert first.source_prompt == "a cat sitting on a mat"
    assert first.target_prompts == ["a dog sitting on a mat"]
    assert first.extras["blended_word"] == "cat dog" and first.extras["editing_type_id"] == 0
    assert Path(first.image_path) == root / "annotation_images" / "0_type" / "000000000000.jpg"
    for item in items:
        got = item.mask()
        want = masks[item.id].copy()
        assert got.shape == want.shape  # image resolution (H, W), e.g. 24x40 for the 40x24 image
        inner = (slice(1, -1), slice(1, -1))
        np.testing.assert_array_equal(got[inner], want[inner])  # the annotated region exactly
        # PIE-Bench's decoder marks the 1-pixel border as edited
        assert got[0].all() and got[-1].all() and got[:, 0].all() and got[:, -1].all()

    no_border = DATASETS.build({"name": "pie_bench", "path": str(root / "mapping_file.json"), "border": False})
    for item in no_border.items():
        np.testing.assert_array_equal(item.mask(), masks[item.id])

    # decode is the inverse of encode on random masks; a hand-computed tiny case
    for _ in range(5):
        m = _random_mask(rng, 32, 48)
        np.testing.assert_array_equal(decode_rle(encode_rle(m), 32, 48, border=False), m)
    tiny = decode_rle([1, 2, 6, 1], 3, 3, border=False)
    np.testing.assert_array_equal(tiny, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])

    only = DATASETS.build({"name": "pie_bench", "path": str(root / "mapping_file.json"), "editing_types": [1]})
    assert [i.id for i in only.items()] == ["111000000001"]


def test_fit_mask_follows_the_image_policy() -> None:
    from framework.dataset import fit_mask

    m = np.zeros((40, 80), np.uint8)  # a wide image: the square center crop keeps columns 20..59
    m[:, 40:] = 1  # right half of the image
    out = fit_mask(m, (80, 40), (20, 20))
    assert out.shape == (1, 1, 20, 20)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert out[0, 0, :, :10].sum() == 0 and out[0, 0, :, 10:].mean() == 1.0


# ----------------------------------------------------------------------------- yaml list and folder


def test_yaml_list_ids_paths_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "list.yaml").write_text(
        "- init_img: imgs/a.png\n  source_prompt: a cat\n  target_prompts: [a dog, a cow]\n"
        "- init_img: imgs/missing.png\n  source_prompt: a cat\n  target_prompts: a lion\n  note: hi\n"
    )
    items = DATASETS.build({"name": "yaml_list", "path": str(tmp_path / "list.yaml")}).items()
    assert [i.id for i in items] == ["imgs/a", "imgs/missing"]
    assert items[0].image_path == str(tmp_path / "imgs" / "a.png")
    assert items[1].target_prompts == ["a lion"] and items[1].extras == {"note": "hi"}
    # ids do not depend on the order of the entries
    (tmp_path / "rev.yaml").write_text(
        "- init_img: imgs/missing.png\n  source_prompt: a cat\n  target_prompts: a lion\n"
        "- init_img: imgs/a.png\n  source_prompt: a cat\n  target_prompts: [a dog, a cow]\n"
    )
    rev = DATASETS.build({"name": "yaml_list", "path": str(tmp_path / "rev.yaml")}).items()
    assert sorted(i.id for i in rev) == sorted(i.id for i in items)

    (tmp_path / "bad.yaml").write_text("- init_img: a.png\n  source_prompt: x\n")
    with pytest.raises(ConfigError, match="target_prompts"):
        DATASETS.build({"name": "yaml_list", "path": str(tmp_path / "bad.yaml")}).items()
    (tmp_path / "dup.yaml").write_text(
        "- {init_img: a.png, source_prompt: x, target_prompts: y}\n"
        "- {init_img: a.png, source_prompt: x, target_prompts: z}\n"
    )
    with pytest.raises(ConfigError, match="twice"):
        DATASETS.build({"name": "yaml_list", "path": str(tmp_path / "dup.yaml")}).items()


@pytest.mark.parametrize("fmt", ["yaml", "jsonl", "csv"])
def test_folder_dataset_formats(tmp_path: Path, fmt: str) -> None:
    _png(tmp_path / "cat.png")
    _png(tmp_path / "sub" / "dog.jpg")
    _png(tmp_path / "uncaptioned.png")
    if fmt == "yaml":
        (tmp_path / "captions.yaml").write_text(
            "cat.png: {source: a cat, targets: [a dog, a cow]}\nsub/dog.jpg: {source: a dog, targets: a cat}\n"
        )
    elif fmt == "jsonl":
        (tmp_path / "captions.jsonl").write_text(
            json.dumps({"image": "cat.png", "source": "a cat", "targets": ["a dog", "a cow"]})
            + "\n"
            + json.dumps({"image": "sub/dog.jpg", "source": "a dog", "targets": "a cat"})
            + "\n"
        )
    else:
        (tmp_path / "captions.csv").write_text(
            "image,source,target\ncat.png,a cat,a dog\ncat.png,a cat,a cow\nsub/dog.jpg,a dog,a cat\n"
        )
    items = DATASETS.build({"name": "folder", "path": str(tmp_path)}).items()
    assert [(i.id, i.source_prompt, i.target_prompts) for i in items] == [
        ("cat", "a cat", ["a dog", "a cow"]),
        ("sub/dog", "a dog", ["a cat"]),
    ]
    assert items[1].image_path == str(tmp_path / "sub" / "dog.jpg")


def test_folder_without_captions_is_a_config_error(tmp_path: Path) -> None:
    _png(tmp_path / "cat.png")
    with pytest.raises(ConfigError, match="captions"):
        DATASETS.build({"name": "folder", "path": str(tmp_path)}).items()


# ----------------------------------------------------------------------------- seeds, plan, results


def test_item_seed_is_stable_and_distinct() -> None:
    from framework.dataset import item_seed

    assert item_seed(0, "a") == item_seed(0, "a")
    assert len({item_seed(0, "a"), item_seed(1, "a"), item_seed(0, "b"), item_seed(0, "a", 1)}) == 4
    assert 0 <= item_seed(123, "x/y") < 2**31


def test_plan_sweeps_and_shared_inversions() -> None:
    from framework.experiment.plan import expand_methods, inversion_groups, sweep_columns

    cfg = {
        "inverter": {"name": "ddpm_edit_friendly"},
        "editor": {"name": "text"},
        "methods": [
            {
                "name": "ef",
                "inverter": {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
                "editor": {"name": "text", "guidance_scale": 15},
                "num_steps": 100,
                "skip": 36,
                "sweep": {"skip": [24, 36], "editor.guidance_scale": [9, 15]},
            },
            {"name": "other", "num_steps": 100, "skip": 40, "seeds": 2},
            {"name": "eta", "num_steps": 100, "skip": 30, "sweep": {"inverter.eta": [0.5]}},
        ],
    }
    variants = expand_methods(cfg, {"seed": 0})
    assert [v.label for v in variants] == [
        "ef[skip=24,editor.guidance_scale=9]",
        "ef[skip=24,editor.guidance_scale=15]",
        "ef[skip=36,editor.guidance_scale=9]",
        "ef[skip=36,editor.guidance_scale=15]",
        "other",
        "eta[inverter.eta=0.5]",
    ]
    assert [v.skip for v in variants[:4]] == [24, 24, 36, 36]
    assert variants[0].editor["guidance_scale"] == 9
    assert len({v.setting for v in variants}) == len(variants)
    assert sweep_columns(variants) == ["skip", "editor.guidance_scale", "inverter.eta"]
    groups = inversion_groups(variants)
    # ef and other share the inverter config (3.5 is the default): one inversion per seed index
    shared = [g for g in groups if g.seed_index == 0 and g.inverter["eta"] == 1.0]
    assert len(shared) == 1 and shared[0].skip == 24 and len(shared[0].members) == 5
    assert [g.skip for g in groups if g.seed_index == 1] == [40]
    assert [g.skip for g in groups if g.inverter["eta"] == 0.5] == [30]
    with pytest.raises(ConfigError, match="cannot sweep"):
        expand_methods({**cfg, "methods": [{"name": "x", "sweep": {"foo": [1]}}]})
    with pytest.raises(ConfigError, match="unknown option"):
        expand_methods({**cfg, "methods": [{"name": "x", "sweep": {"editor.nope": [1]}}]})
    with pytest.raises(ConfigError, match="skip < num_steps"):
        expand_methods({**cfg, "methods": [{"name": "x", "num_steps": 10, "skip": 10}]})


def test_results_store_is_append_only_and_deduplicates(tmp_path: Path) -> None:
    from framework.experiment.results import PartWriter, done_keys, merge_rows, read_rows

    def row(item: str, k: int, status: str = "ok") -> dict:
        return {"item_id": item, "variant": "m", "setting": "s", "target_index": k, "seed_index": 0, "status": status}

    w = PartWriter(tmp_path, 0)
    w.write(row("a", 0))
    w.write(row("b", 0, "failed"))
    w.close()
    with open(tmp_path / "parts" / "rows-rank0.jsonl", "a") as fh:
        fh.write('{"item_id": "c", "variant"')  # a torn line from a killed run
    w = PartWriter(tmp_path, 0)  # appends after a newline
    w.write(row("b", 0))
    w.close()
    PartWriter(tmp_path, 1).write(row("a", 0))  # the same key again from another rank
    rows = read_rows(tmp_path)
    assert len(rows) == 4
    assert done_keys(tmp_path) == {("a", "m", "s", 0, 0), ("b", "m", "s", 0, 0)}
    merged = merge_rows(rows)
    assert [(r["item_id"], r["status"]) for r in merged] == [("a", "ok"), ("b", "ok")]
