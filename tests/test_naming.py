"""framework.naming.slug: the file and folder names already on disk in users' runs must not change."""

from __future__ import annotations

import pytest

from framework.naming import slug


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        # prompt style: edited images of edit/run/demo (lower case, '-' runs, 40 characters)
        ("a photo of a cat", {}, "a-photo-of-a-cat"),
        ("  A Yellow, flower!  ", {}, "a-yellow-flower"),
        ("paper_flower..x", {}, "paper-flower-x"),
        ("a cat " * 10, {}, "a-cat-a-cat-a-cat-a-cat-a-cat-a-cat-a-ca"),
        ("a cat sitting on the very long mat", {"limit": 30}, "a-cat-sitting-on-the-very-long"),
        ("abcd efgh", {"limit": 5}, "abcd"),  # no '-' left at the cut
        ("!!!", {}, "empty"),
        ("", {}, "empty"),
        # path style: variant folders and item ids (case and ._=- kept, no '..', no limit)
        ("ef_text", {"style": "path"}, "ef_text"),
        ("ef_text__skip-24_editor.guidance_scale-9", {"style": "path"}, "ef_text__skip-24_editor.guidance_scale-9"),
        ("Flower Photo (1)", {"style": "path"}, "Flower-Photo-1"),
        ("..hidden", {"style": "path"}, "hidden"),
        ("a..b", {"style": "path"}, "a.b"),
        ("x=1/y", {"style": "path"}, "x=1-y"),
        ("/../", {"style": "path"}, "x"),
        # report style: files of a comparison report (case and _.- kept, '_' runs, 80 characters)
        ("clip_score", {"style": "report"}, "clip_score"),
        ("run a/b", {"style": "report"}, "run_a_b"),
        ("Cat-1.png", {"style": "report"}, "Cat-1.png"),
        ("x" * 100, {"style": "report"}, "x" * 80),
        ("???", {"style": "report"}, "item"),
    ],
)
def test_slug_styles(text: str, kwargs: dict, expected: str) -> None:
    assert slug(text, **kwargs) == expected


def test_styles_differ_on_real_names() -> None:
    """Why one function keeps three styles: on a sweep folder name they give three names."""
    name = "ef_text__editor.guidance_scale-9"
    assert {slug(name), slug(name, style="path"), slug(name, style="report")} == {
        "ef-text-editor-guidance-scale-9",
        "ef_text__editor.guidance_scale-9",
    }
    assert slug("Cat", style="path") != slug("Cat")


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt, path, report"):
        slug("x", style="kebab")  # type: ignore[arg-type]
