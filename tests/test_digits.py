"""The coloured-digits data, its classifier, the digits dataset and the two digits metrics.

No model here: everything is checked on rendered images, where the answers are known exactly.
"""

from __future__ import annotations

import pytest
import torch

from framework import digits as D
from framework.errors import InputError
from framework.metrics import MetricInput


def test_render_formula_and_palette() -> None:
    a = D.intensities([1500], 16)  # (1, 1, 16, 16)
    img = D.render_indices([1500], ["red"], ["black"], 16)
    red = torch.tensor([220, 40, 40]) / 255
    black = torch.tensor([15, 15, 15]) / 255
    expected = a[0] * red[:, None, None] + (1 - a[0]) * black[:, None, None]
    torch.testing.assert_close((img[0] + 1) / 2, expected)
    # bilinear upsampling of value/16: the 8x8 original is recovered by 2x2 averaging only approximately,
    # but its range is kept
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert D.render_indices([0], ["white"], ["blue"], 32).shape == (1, 3, 32, 32)


def test_prompt_grammar_round_trip() -> None:
    assert D.prompt(7, "red", "black") == "a red seven on a black background"
    assert D.parse_prompt("a red seven on a black background") == (7, "red", "black")
    for bad in ("a red seven", "a purple seven on a black background", "a red eleven on a black background"):
        with pytest.raises(InputError, match="not a digits prompt"):
            D.parse_prompt(bad)
    assert len(D.WORDS) == 19


def test_splits_are_disjoint_and_cover_the_data() -> None:
    train, held = D.split_indices("train"), D.split_indices("heldout")
    assert train == list(range(1500)) and held == list(range(1500, 1797))
    with pytest.raises(InputError, match="train, heldout"):
        D.split_indices("val")


def test_random_colourings_never_repeat_a_colour() -> None:
    fg, bg = D.random_colourings(500, torch.Generator().manual_seed(0))
    assert bool((fg != bg).all())
    assert len(set(zip(fg.tolist(), bg.tolist()))) == 30  # all 30 ordered pairs occur


def test_colour_reading_is_exact_on_rendered_digits() -> None:
    from framework.digits_eval import read_colours

    g = torch.Generator().manual_seed(3)
    idx = D.split_indices("heldout")
    fg, bg = D.random_colourings(len(idx), g)
    pal = D.palette_tensor()
    imgs = D.render(D.intensities(idx, 16), pal[fg], pal[bg])
    rf, rb = read_colours(imgs)
    assert bool((rf == fg).all()) and bool((rb == bg).all())


def test_classifier_heldout_accuracy() -> None:
    from framework.digits_eval import classifier

    acc = classifier(16).heldout_accuracy()
    # measured: digit 0.946, fg 1.0, bg 1.0 (SVC on 8x8 intensity maps; the held-out writers are harder)
    assert acc["digit"] > 0.92
    assert acc["fg"] == 1.0 and acc["bg"] == 1.0


def test_dataset_items(tmp_path) -> None:
    from framework.images import load_image_tensor
    from framework.registry import DATASETS

    ds = DATASETS.build({"name": "digits", "per_digit": 1, "image_dir": str(tmp_path)})
    items = ds.items()
    assert len(items) == 10
    assert sorted(D.parse_prompt(it.source_prompt)[0] for it in items) == list(range(10))
    for it in items:
        assert it.extras["heldout_index"] >= 1500
        digit, fg, bg = D.parse_prompt(it.source_prompt)
        (d1, f1, b1), (d2, f2, b2), (d3, f3, b3) = (D.parse_prompt(t) for t in it.target_prompts)
        assert (d1, b1) == (digit, bg) and f1 not in (fg, bg)  # foreground edit
        assert (d2, f2) == (digit, fg) and b2 not in (fg, bg)  # background edit
        assert (f3, b3) == (fg, bg) and d3 != digit  # digit edit
        img = load_image_tensor(it.image_path, 16, 4)
        expected = D.render_indices([it.extras["heldout_index"]], [fg], [bg], 16)
        assert float((img - expected).abs().max()) <= 1 / 127.5 + 1e-6  # PNG quantisation only
    again = DATASETS.build({"name": "digits", "per_digit": 1, "image_dir": str(tmp_path)}).items()
    assert [i.target_prompts for i in again] == [i.target_prompts for i in items]


def _batch(source_img, edits, source, targets) -> MetricInput:
    return MetricInput(source_image=source_img, edited_images=edits, source_prompt=source, target_prompts=targets)


def test_metrics_on_perfect_and_failed_edits() -> None:
    from plugins.metrics.digit_attributes import DigitAttributesMetric
    from plugins.metrics.shape_iou import ShapeIoUMetric

    i = 1503
    digit = int(D.labels([i])[0])
    src = D.render_indices([i], ["red"], ["black"], 16)
    perfect_fg = D.render_indices([i], ["blue"], ["black"], 16)
    perfect_bg = D.render_indices([i], ["red"], ["yellow"], 16)
    unchanged = src
    other = D.render_indices([D.split_indices("heldout")[(D.labels(D.split_indices("heldout")) != digit).nonzero()[0]]],
                             ["blue"], ["black"], 16)
    source = D.prompt(digit, "red", "black")
    t_fg, t_bg = D.prompt(digit, "blue", "black"), D.prompt(digit, "red", "yellow")
    edits = torch.cat([perfect_fg, perfect_bg, unchanged, other])
    targets = [t_fg, t_bg, t_fg, t_fg]
    attrs = DigitAttributesMetric()
    got = attrs.compute(_batch(src, edits, source, targets))
    assert [r["attr_reached"] for r in got[:3]] == [1.0, 1.0, 0.0]
    assert [r["attr_kept"] for r in got[:3]] == [1.0, 1.0, 1.0]
    assert got[3]["fg_ok"] == 1.0 and got[3]["attr_kept"] == 0.0  # right colour, wrong digit
    shape = ShapeIoUMetric().compute(_batch(src, edits, source, targets))
    assert shape[0] == {"shape_iou": 1.0, "color_reached": 1.0}
    assert shape[1] == {"shape_iou": 1.0, "color_reached": 1.0}
    assert shape[2]["color_reached"] == 0.0 and shape[2]["shape_iou"] == 0.0  # nothing is blue
    assert shape[3]["shape_iou"] < 0.7  # another digit's shape
    digit_edit = shape_iou_for_digit_edit(src, source, digit)
    assert digit_edit == {"shape_iou": None, "color_reached": None}
    # a non-digits prompt leaves the columns empty instead of failing
    assert attrs.compute(_batch(src, src, "a cat", ["a dog"]))[0]["attr_reached"] is None


def shape_iou_for_digit_edit(src, source, digit):
    from plugins.metrics.shape_iou import ShapeIoUMetric

    target = D.prompt((digit + 1) % 10, "red", "black")
    return ShapeIoUMetric().compute(_batch(src, src, source, [target]))[0]
